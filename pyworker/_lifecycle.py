"""The worker's lifecycle: one declarative table, one synchronous machine.

The table below (:data:`STATES`, :data:`TRANSITIONS`) is the single source of truth. Three
consumers read it: the runtime :class:`Lifecycle` (a sync ``transitions.Machine``), the diagram
generator (:mod:`pyworker._statecharts`) and the property tests. Nothing here does I/O or awaits:
Trio tasks do the work and fire triggers; the machine decides what follows.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

import attrs
from transitions import EventData, Machine

# transitions logs every state change at INFO; our own log line says it better.
logging.getLogger("transitions").setLevel(logging.WARNING)


class State(enum.StrEnum):
    """The states of a worker."""

    LOADING = "loading"
    BENCHMARKING = "benchmarking"
    READY = "ready"
    ERRORED = "errored"
    DRAINING = "draining"
    STOPPED = "stopped"


class Trigger(enum.StrEnum):
    """The events that move a worker between states."""

    MODEL_LOADED = "model_loaded"
    MODEL_FAILED = "model_failed"
    MODEL_RESTARTED = "model_restarted"
    BENCHMARK_DONE = "benchmark_done"
    BENCHMARK_FAILED = "benchmark_failed"
    HEALTH_FAILED = "health_failed"
    SHUTDOWN = "shutdown"
    DRAINED = "drained"


@attrs.frozen(kw_only=True)
class StateInfo:
    """What a state means and how the worker behaves in it (read by code and by the docs)."""

    state: State
    meaning: str
    admits_requests: bool
    """Whether the proxy forwards new requests; otherwise it answers 503 with ``refusal``."""
    refusal: str = ""
    reports: str
    """What the load reports say while in this state (for the operator docs)."""


@attrs.frozen(kw_only=True)
class Transition:
    """One row of the transition table."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State
    why: str


STATES: tuple[StateInfo, ...] = (
    StateInfo(
        state=State.LOADING,
        meaning="The model server is starting or loading weights; its log has not said "
        "it is ready.",
        admits_requests=False,
        refusal="model is loading",
        reports="at least every 10 s, with loadtime 0 and the disk used by downloads",
    ),
    StateInfo(
        state=State.BENCHMARKING,
        meaning="The model is loaded; the worker measures its capacity (or reads a cached result).",
        admits_requests=False,
        refusal="model is being benchmarked",
        reports="at least every 10 s, with loadtime 0",
    ),
    StateInfo(
        state=State.READY,
        meaning="The model serves requests; the worker forwards them and reports its load.",
        admits_requests=True,
        reports="loadtime once (the first report after the benchmark), max_perf, and the load "
        "on the next 1 s tick after any change, at least every 10 s",
    ),
    StateInfo(
        state=State.ERRORED,
        meaning="The model server failed (error line in its log, failed benchmark, failed "
        "health checks). A restart of the model server moves the worker on.",
        admits_requests=False,
        refusal="model server is in error",
        reports="error_msg with the reason, at least every 10 s",
    ),
    StateInfo(
        state=State.DRAINING,
        meaning="SIGTERM or Ctrl-C: no new requests; requests in flight finish (up to the "
        "drain timeout).",
        admits_requests=False,
        refusal="worker is shutting down",
        reports="the in-flight count as it falls to zero",
    ),
    StateInfo(
        state=State.STOPPED,
        meaning="Every request has finished or the drain deadline passed; services exit.",
        admits_requests=False,
        refusal="worker is stopped",
        reports="nothing more",
    ),
)

INITIAL = State.LOADING

_LIVE = (State.LOADING, State.BENCHMARKING, State.READY, State.ERRORED)

TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        trigger=Trigger.MODEL_LOADED,
        sources=(State.LOADING, State.READY, State.ERRORED),
        dest=State.BENCHMARKING,
        why="the model server logged its ready line (again, after a restart)",
    ),
    Transition(
        trigger=Trigger.BENCHMARK_DONE,
        sources=(State.BENCHMARKING,),
        dest=State.READY,
        why="capacity measured or read from the cache",
    ),
    Transition(
        trigger=Trigger.BENCHMARK_FAILED,
        sources=(State.BENCHMARKING,),
        dest=State.ERRORED,
        why="the benchmark requests failed",
    ),
    Transition(
        trigger=Trigger.MODEL_FAILED,
        sources=(State.LOADING, State.BENCHMARKING, State.READY),
        dest=State.ERRORED,
        why="the model server logged an error line",
    ),
    Transition(
        trigger=Trigger.HEALTH_FAILED,
        sources=(State.READY,),
        dest=State.ERRORED,
        why="the model server failed its health checks",
    ),
    Transition(
        trigger=Trigger.MODEL_RESTARTED,
        sources=(State.BENCHMARKING, State.READY, State.ERRORED),
        dest=State.LOADING,
        why="the model log was replaced or truncated: a new model server process",
    ),
    Transition(
        trigger=Trigger.SHUTDOWN,
        sources=_LIVE,
        dest=State.DRAINING,
        why="SIGTERM or Ctrl-C",
    ),
    Transition(
        trigger=Trigger.DRAINED,
        sources=(State.DRAINING,),
        dest=State.STOPPED,
        why="no request in flight, or the drain deadline passed",
    ),
)

STATE_INFO: dict[State, StateInfo] = {info.state: info for info in STATES}


def machine_kwargs() -> dict[str, Any]:
    """The keyword arguments every ``transitions`` machine built from the table shares."""
    return {
        "states": [info.state.value for info in STATES],
        "transitions": [
            {
                "trigger": row.trigger.value,
                "source": [s.value for s in row.sources],
                "dest": row.dest.value,
            }
            for row in TRANSITIONS
        ],
        "initial": INITIAL.value,
        "auto_transitions": False,
        # An event that does not apply in the current state is dropped, not an error: a log
        # line saying "loaded" while draining, say, changes nothing. fire() reports it.
        "ignore_invalid_triggers": True,
    }


@attrs.frozen(kw_only=True)
class StateChange:
    """A record of one transition, handed to listeners."""

    trigger: Trigger
    source: State
    dest: State
    at: float
    reason: str


class Lifecycle:
    """The runtime lifecycle of one worker.

    Fire triggers with :meth:`fire`; read :attr:`state`, :attr:`error_msg`, :attr:`max_perf`.
    Every transition is synchronous and does no I/O; listeners (see :meth:`subscribe`) are how
    Trio tasks learn of changes.

    Args:
        started_at: the clock reading when the worker started (for ``loadtime``).
    """

    # Set by transitions.Machine; declared for readers and type checkers.
    state: str

    def __init__(self, *, started_at: float) -> None:
        self.error_msg = ""
        self.max_perf = 0.0
        self.load_started_at = started_at
        self.loads_completed = 0
        self._pending_loadtime: float | None = None
        self._listeners: list[Callable[[StateChange], None]] = []
        self._machine = Machine(
            model=self,
            send_event=True,
            after_state_change="_after_change",
            **machine_kwargs(),
        )
        self._machine.on_enter_loading("_enter_loading")
        self._machine.on_enter_ready("_enter_ready")
        self._machine.on_enter_errored("_enter_errored")
        self._machine.on_enter_benchmarking("_enter_benchmarking")

    # -- queries ---------------------------------------------------------------------------
    @property
    def current(self) -> State:
        """The current state."""
        return State(self.state)

    @property
    def info(self) -> StateInfo:
        """The behaviour of the current state."""
        return STATE_INFO[self.current]

    @property
    def admits_requests(self) -> bool:
        """Whether new requests may be forwarded now."""
        return self.info.admits_requests

    def refusal_reason(self) -> str:
        """Why requests are refused now (empty when they are admitted)."""
        info = self.info
        if info.state is State.ERRORED and self.error_msg:
            return f"{info.refusal}: {self.error_msg}"
        return info.refusal

    def take_loadtime(self) -> float:
        """The load time to report, once: non-zero only on the first call after a load."""
        value, self._pending_loadtime = self._pending_loadtime, None
        return value or 0.0

    # -- commands --------------------------------------------------------------------------
    def fire(
        self, trigger: Trigger, *, now: float, reason: str = "", max_perf: float = 0.0
    ) -> bool:
        """Fire ``trigger``. Returns whether it changed the state (False: not valid here)."""
        if not self.can_fire(trigger):
            # Not valid here (a repeated error line while errored, say): nothing to do, and
            # nothing for transitions to log as a warning.
            return False
        fire: Callable[..., bool] = getattr(self, "trigger")  # noqa: B009 (set by Machine)
        return bool(fire(trigger.value, now=now, reason=reason, max_perf=max_perf))

    def can_fire(self, trigger: Trigger) -> bool:
        """Whether ``trigger`` would change the state now."""
        return trigger.value in self._machine.get_triggers(self.state)

    def subscribe(self, listener: Callable[[StateChange], None]) -> None:
        """Call ``listener`` (synchronously) after every transition."""
        self._listeners.append(listener)

    # -- transition callbacks (sync, no I/O) ------------------------------------------------
    def _enter_loading(self, event: EventData) -> None:
        self.error_msg = ""
        self.max_perf = 0.0
        self._pending_loadtime = None
        self.load_started_at = event.kwargs["now"]

    def _enter_benchmarking(self, event: EventData) -> None:
        self.error_msg = ""
        # A new capacity is being measured: nothing of the previous load may be reported.
        self.max_perf = 0.0
        self._pending_loadtime = None
        if event.transition is not None and event.transition.source != State.LOADING.value:
            # The model server restarted without a new log file: its load began unseen, so
            # this load is timed from its ready line.
            self.load_started_at = event.kwargs["now"]

    def _enter_ready(self, event: EventData) -> None:
        self.max_perf = float(event.kwargs.get("max_perf") or 0.0)
        self.loads_completed += 1
        # Measured from the start of this load; never 0, so the autoscaler can tell it was sent.
        self._pending_loadtime = max(event.kwargs["now"] - self.load_started_at, 1e-3)

    def _enter_errored(self, event: EventData) -> None:
        self.error_msg = event.kwargs.get("reason") or event.event.name.replace("_", " ")
        self._pending_loadtime = None

    def _after_change(self, event: EventData) -> None:
        assert event.transition is not None
        change = StateChange(
            trigger=Trigger(event.event.name),
            source=State(str(event.transition.source)),
            dest=State(str(event.transition.dest)),
            at=event.kwargs["now"],
            reason=event.kwargs.get("reason", ""),
        )
        for listener in self._listeners:
            listener(change)
