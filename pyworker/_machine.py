"""The runtime lifecycle: a synchronous ``transitions`` machine built from the table in
:mod:`pyworker._lifecycle`, whose one callback applies the effects the table lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from transitions import EventData, Machine

from ._lifecycle import (
    INITIAL,
    STATE_INFO,
    STATES,
    TRANSITIONS,
    Effect,
    Guard,
    State,
    StateInfo,
    Trigger,
)


def machine_kwargs(guards: Mapping[Guard, Callable[[EventData], bool]]) -> dict[str, Any]:
    """The keyword arguments of the ``transitions`` machine built from the table.

    Args:
        guards: evaluates each guard the table uses (given the machine's event data).
    """
    return {
        "states": [info.state.value for info in STATES],
        "transitions": [
            {
                "trigger": row.trigger.value,
                "source": [s.value for s in row.sources],
                "dest": row.dest.value,
                "conditions": [] if row.guard is None else [guards[row.guard]],
            }
            for row in TRANSITIONS
        ],
        "initial": INITIAL.value,
        "auto_transitions": False,
        # An event that does not apply in the current state is dropped, not an error: a log
        # line saying "loaded" while draining, say, changes nothing. fire() reports it.
        "ignore_invalid_triggers": True,
        "send_event": True,
    }


@attrs.frozen(kw_only=True)
class StateChange:
    """A record of one transition, handed to listeners."""

    trigger: Trigger
    source: State
    dest: State
    at: float
    reason: str


class _MachineModel:
    """What ``transitions`` binds its state and trigger methods to; private to Lifecycle, so
    no string-named method or attribute of the library leaks into the typed API."""

    state: str


class Lifecycle:
    """The runtime lifecycle of one worker.

    Fire triggers with :meth:`fire`; read :attr:`current`, :attr:`error_msg`, :attr:`max_perf`.
    Every transition is synchronous and does no I/O: one callback applies the effects the table
    lists. Listeners (see :meth:`subscribe`) are how Trio tasks learn of changes.

    Args:
        started_at: the clock reading when the worker started (for ``loadtime``).
        key_known: tells whether the router's public key is known (:attr:`Guard.KEY_KNOWN`);
            None: always (signatures are not checked, or the key was given).
    """

    def __init__(self, *, started_at: float, key_known: Callable[[], bool] | None = None) -> None:
        self.error_msg = ""
        self.max_perf = 0.0
        self.load_started_at = started_at
        self.loads_completed = 0
        self._key_known = key_known
        self.loadtime = 0.0
        """Seconds the current load took to become ready (0 while not loaded)."""
        self._listeners: list[Callable[[StateChange], None]] = []
        self._rows = {(r.trigger, s, r.dest): r for r in TRANSITIONS for s in r.sources}
        self._model = _MachineModel()
        self._machine = Machine(
            model=self._model,
            after_state_change=self._after_change,
            **machine_kwargs({Guard.KEY_KNOWN: self._guard_key_known}),
        )

    # -- queries ---------------------------------------------------------------------------
    @property
    def current(self) -> State:
        """The current state."""
        return State(self._model.state)

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
        if info.state in (State.ERRORED, State.STALLED) and self.error_msg:
            return f"{info.refusal}: {self.error_msg}"
        return info.refusal

    # -- commands --------------------------------------------------------------------------
    def fire(
        self, trigger: Trigger, *, now: float, reason: str = "", max_perf: float = 0.0
    ) -> bool:
        """Fire ``trigger``. Returns whether it changed the state (False: not valid here)."""
        if not self.can_fire(trigger):
            # Not valid here (a repeated error line while errored, say): nothing to do, and
            # nothing for transitions to log as a warning.
            return False
        fire: Callable[..., bool] = getattr(self._model, "trigger")  # noqa: B009 (by Machine)
        return bool(fire(trigger.value, now=now, reason=reason, max_perf=max_perf))

    def can_fire(self, trigger: Trigger) -> bool:
        """Whether ``trigger`` has a row out of the current state (its guard may still say no)."""
        return trigger.value in self._machine.get_triggers(self._model.state)

    def subscribe(self, listener: Callable[[StateChange], None]) -> Callable[[], None]:
        """Call ``listener`` (synchronously) after every transition.

        Returns:
            A function that unsubscribes it.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- the machine's callbacks (sync, no I/O) ---------------------------------------------
    def _guard_key_known(self, event: EventData) -> bool:
        return self._key_known is None or self._key_known()

    def _after_change(self, event: EventData) -> None:
        assert event.transition is not None
        trigger = Trigger(event.event.name)
        source, dest = State(str(event.transition.source)), State(str(event.transition.dest))
        row = self._rows[trigger, source, dest]
        now: float = event.kwargs["now"]
        reason: str = event.kwargs.get("reason") or ""
        for effect in (*STATE_INFO[dest].on_enter, *row.effects):
            self._apply(effect, trigger, now, reason, event.kwargs.get("max_perf") or 0.0)
        change = StateChange(trigger=trigger, source=source, dest=dest, at=now, reason=reason)
        for listener in list(self._listeners):
            listener(change)

    def _apply(
        self, effect: Effect, trigger: Trigger, now: float, reason: str, max_perf: float
    ) -> None:
        if effect is Effect.START_LOAD_CLOCK:
            self.load_started_at = now
        elif effect is Effect.FORGET_LOAD:
            self.error_msg = ""
            self.max_perf = 0.0
            self.loadtime = 0.0
        elif effect is Effect.SET_CAPACITY:
            self.max_perf = float(max_perf)
        elif effect is Effect.FINISH_LOAD:
            self.loads_completed += 1
            # Never 0, so the autoscaler can tell it was sent.
            self.loadtime = max(now - self.load_started_at, 1e-3)
        elif effect is Effect.SET_ERROR:
            self.error_msg = reason or trigger.value.replace("_", " ")
            self.loadtime = 0.0
        elif effect is Effect.NOTE_STALL:
            self.error_msg = reason or trigger.value.replace("_", " ")
        elif effect is Effect.CLEAR_ERROR:
            self.error_msg = ""
