"""The worker's lifecycle table: the whole truth about its states and transitions.

The table (:data:`STATES`, :data:`TRANSITIONS`) says which states exist, what each one does to
requests, what entering it changes, how often it reports, which services run in it, and which
trigger leads where under which guard. Everything else reads it: the runtime
:class:`~pyworker._machine.Lifecycle` (a sync ``transitions.Machine`` whose one callback applies
the table's effects), the service runner (:func:`pyworker._watch.run_in_states`), the report
schedule (:mod:`pyworker._report`), the diagram and guide generator (:mod:`pyworker._statecharts`)
and the property tests. Nothing here does I/O: Trio tasks do the work and fire triggers.
"""

from __future__ import annotations

import enum

import attrs


class State(enum.StrEnum):
    """The states of a worker."""

    LOADING = "loading"
    BENCHMARKING = "benchmarking"
    AWAITING_KEY = "awaiting_key"
    READY = "ready"
    STALLED = "stalled"
    ERRORED = "errored"
    DRAINING = "draining"
    STOPPED = "stopped"


class Trigger(enum.StrEnum):
    """The events that move a worker between states."""

    MODEL_LOADED = "model_loaded"
    MODEL_FAILED = "model_failed"
    LOAD_TIMED_OUT = "load_timed_out"
    MODEL_RESTARTED = "model_restarted"
    BENCHMARK_DONE = "benchmark_done"
    BENCHMARK_FAILED = "benchmark_failed"
    KEY_LOADED = "key_loaded"
    HEALTH_FAILED = "health_failed"
    STALLED = "stalled"
    PROGRESSED = "progressed"
    SHUTDOWN = "shutdown"
    DRAINED = "drained"


class Effect(enum.Enum):
    """What a transition changes besides the state (applied in the order listed in the table)."""

    START_LOAD_CLOCK = "the load is timed from now"
    FORGET_LOAD = "the error, the capacity and the load time are cleared"
    SET_CAPACITY = "the measured capacity (max_perf) is kept"
    FINISH_LOAD = "the load time since the load began is recorded (reports carry it)"
    SET_ERROR = "the failure's reason becomes error_msg, and the load time is cleared"
    NOTE_STALL = "the stall's reason becomes error_msg (the load time is kept: still loaded)"
    CLEAR_ERROR = "error_msg is cleared"


class Guard(enum.Enum):
    """A condition a transition row may require; rows without one are the fallback."""

    KEY_KNOWN = "the router's public key is known (or signatures are not checked)"


class Service(enum.Enum):
    """The worker's long-running tasks whose lives follow the state."""

    LOG_TAIL = "follows the model server's log for its ready and error lines"
    LOAD_TIMEOUT = "gives up on a load that has not logged its ready line within --load-timeout"
    BENCHMARK = "measures the model's capacity (or reads the cached figure)"
    HEALTH_CHECKS = "polls the model server's health route"
    WATCHDOG = "watches the requests sent to the model server for progress (see --stall-timeout)"
    STALL_PROBE = "sends the benchmark request until the model server answers one again"
    LOAD_PROBE = (
        "sends the benchmark request now and then (10 s, doubling to 5 min): an answer means "
        "the model is loaded, whatever its log says"
    )
    KEY_FETCH = "fetches the router's public key until it has one"
    REPORTS = "sends load reports to the autoscaler"
    RECORDS = "sends finished-request records to the autoscaler's /delete_requests/"
    SESSIONS = "ends sessions as they expire; stopped, it ends them all (on_close called)"
    LAG_PROBE = "samples the event loop's lag for /metrics"


@attrs.frozen(kw_only=True)
class ReportPolicy:
    """When load reports go out in a state (see :class:`pyworker._report.ReportSchedule`).

    Every state reports on the first tick after it is entered.
    """

    max_silence: float | None = 10.0
    """Seconds after which a report goes out even if nothing changed (None: never again)."""
    on_load_change: bool = False
    """Report on the next tick after a request arrives, ends or is refused."""
    on_in_flight_drop: bool = False
    """Report on the next tick after the number of requests in flight fell."""
    final: bool = False
    """The one last report: sent once, within a deadline, then reporting stops."""


@attrs.frozen(kw_only=True)
class StateInfo:
    """What a state means and how the worker behaves in it (read by code and by the docs)."""

    state: State
    meaning: str
    admits_requests: bool
    """Whether the proxy forwards new requests; otherwise it answers 503 with ``refusal``."""
    refusal: str = ""
    serves_admitted: bool = False
    """Whether a request admitted earlier still goes to the model server when its turn comes
    (one queued behind others for a one-at-a-time model, say); otherwise it is answered 503 with
    ``refusal`` then, and never reaches the model server."""
    on_enter: tuple[Effect, ...] = ()
    """Applied on every entry, before the transition's own effects."""
    reports: ReportPolicy = ReportPolicy()
    services: frozenset[Service] = frozenset()
    """The services that run while the worker is in this state."""
    cause: str = ""
    """What usually brings a worker here, for the troubleshooting guide."""
    remedy: str = ""
    """What an operator can do about it, for the troubleshooting guide."""


@attrs.frozen(kw_only=True)
class Transition:
    """One row of the transition table."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State
    why: str
    guard: Guard | None = None
    """Taken only when the guard holds; rows for the same trigger are tried in table order."""
    effects: tuple[Effect, ...] = ()
    """Applied after the destination's ``on_enter`` effects."""


_ALWAYS = frozenset({Service.REPORTS, Service.RECORDS, Service.LAG_PROBE})
_LIVE_SERVICES = _ALWAYS | {Service.LOG_TAIL, Service.KEY_FETCH}

STATES: tuple[StateInfo, ...] = (
    StateInfo(
        state=State.LOADING,
        meaning="The model server is starting or loading weights; its log has not said it is "
        "ready.",
        admits_requests=False,
        refusal="model is loading",
        on_enter=(Effect.FORGET_LOAD, Effect.START_LOAD_CLOCK),
        services=_LIVE_SERVICES | {Service.LOAD_TIMEOUT, Service.LOAD_PROBE},
        cause="start-up, or a new model server process (its log was replaced or truncated)",
        remedy="wait: downloads and weight loading take minutes. If it lasts, check that "
        "MODEL_LOG is the file the model server writes (the worker warns every 30 s while it "
        "is missing) and that the backend's ready line appears in it; --load-timeout ends a "
        "load that never finishes",
    ),
    StateInfo(
        state=State.BENCHMARKING,
        meaning="The model is loaded; the worker measures its capacity (or reads a cached result).",
        admits_requests=False,
        refusal="model is being benchmarked",
        on_enter=(Effect.FORGET_LOAD,),
        services=_LIVE_SERVICES | {Service.BENCHMARK},
        cause="the model server logged its ready line",
        remedy="wait (seconds to a minute; a cached result is instant). Benchmark requests "
        "that fail (see the worker's log) end in errored",
    ),
    StateInfo(
        state=State.AWAITING_KEY,
        meaning="The model is loaded and measured, but the router's public key is not known "
        "yet, so no signed request can be checked.",
        admits_requests=False,
        refusal="the router's public key is not known yet",
        services=_LIVE_SERVICES,
        cause="the autoscaler's /pubkey/ is unreachable or answers no valid key (see the "
        "worker's log for each attempt)",
        remedy="check REPORT_ADDR (the key comes from its /pubkey/) and the instance's "
        "network; or give the key with --pubkey-file",
    ),
    StateInfo(
        state=State.READY,
        meaning="The model serves requests and sessions; the worker forwards them and reports "
        "its load. Leaving it for anything but draining ends every open session (its "
        "requests get 410 from then on, so clients go elsewhere).",
        admits_requests=True,
        serves_admitted=True,
        reports=ReportPolicy(on_load_change=True),
        services=_LIVE_SERVICES | {Service.HEALTH_CHECKS, Service.WATCHDOG, Service.SESSIONS},
        cause="the benchmark finished and the router's key is known",
        remedy="nothing. Many 429s mean the queue is full (--max-queue-time): the "
        "autoscaler should add instances",
    ),
    StateInfo(
        state=State.STALLED,
        meaning="The model server took requests and stopped answering them: nothing arrived "
        "on any of them for longer than the stall limit, though its health route may still "
        "pass. Those requests were ended (504, or a cut stream) and their connections closed; "
        "the benchmark request is sent until one is answered.",
        admits_requests=False,
        refusal="model server stalled",
        on_enter=(Effect.NOTE_STALL,),
        services=_LIVE_SERVICES | {Service.STALL_PROBE},
        cause="a wedged engine (a hung GPU kernel, a deadlocked scheduler): no byte from the "
        "model server within max(--stall-timeout, k x the predicted time of the oldest "
        "request); error_msg gives the figures",
        remedy="look at the model server's own log and GPU (nvidia-smi) for a hung kernel; "
        "restart the model server if it does not recover by itself (the worker probes every "
        "5 s). A model whose answers are slow but steady needs a larger --stall-timeout",
    ),
    StateInfo(
        state=State.ERRORED,
        meaning="The model server failed (an error line in its log or a failing request, "
        "confirmed by a health check; a failed benchmark; failed health checks). A restart of "
        "the model server moves the worker on, and so does a probe request it answers.",
        admits_requests=False,
        refusal="model server is in error",
        on_enter=(Effect.SET_ERROR,),
        services=_LIVE_SERVICES | {Service.LOAD_PROBE},
        cause="error_msg says which: an error line of the model server, a failed benchmark, "
        "failed health checks, or a load that never logged its ready line",
        remedy="read the model server's log around the line error_msg names (the worker's log "
        "has the full line); fix the cause (model id, GPU memory, port) and restart the model "
        "server: a new log or ready line starts a new load",
    ),
    StateInfo(
        state=State.DRAINING,
        meaning="SIGTERM or Ctrl-C: no new requests (sessions included); requests in flight "
        "finish (up to the drain timeout), then open sessions end (their on_close called).",
        admits_requests=False,
        refusal="worker is shutting down",
        serves_admitted=True,
        reports=ReportPolicy(on_in_flight_drop=True),
        services=_ALWAYS | {Service.SESSIONS},
        cause="SIGTERM (the instance is stopping) or Ctrl-C",
        remedy="nothing: it stops by itself once requests finish (at most --drain-timeout)",
    ),
    StateInfo(
        state=State.STOPPED,
        meaning="Every request has finished or the drain deadline passed; services exit.",
        admits_requests=False,
        refusal="worker is stopped",
        reports=ReportPolicy(max_silence=None, final=True),
        services=_ALWAYS,
        cause="the drain ended",
        remedy="nothing: the process exits",
    ),
)

INITIAL = State.LOADING

_LIVE = (
    State.LOADING,
    State.BENCHMARKING,
    State.AWAITING_KEY,
    State.READY,
    State.STALLED,
    State.ERRORED,
)

TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        trigger=Trigger.MODEL_LOADED,
        sources=(State.LOADING,),
        dest=State.BENCHMARKING,
        why="the model server logged its ready line (or answered a probe request)",
    ),
    Transition(
        trigger=Trigger.MODEL_LOADED,
        sources=(State.AWAITING_KEY, State.READY, State.STALLED, State.ERRORED),
        dest=State.BENCHMARKING,
        why="a ready line again (or, errored, an answered probe): the model server restarted "
        "without a new log, or recovered, so this load is timed from then",
        effects=(Effect.START_LOAD_CLOCK,),
    ),
    Transition(
        trigger=Trigger.BENCHMARK_DONE,
        sources=(State.BENCHMARKING,),
        dest=State.READY,
        why="capacity measured or read from the cache, and the router's key is known",
        guard=Guard.KEY_KNOWN,
        effects=(Effect.SET_CAPACITY, Effect.FINISH_LOAD),
    ),
    Transition(
        trigger=Trigger.BENCHMARK_DONE,
        sources=(State.BENCHMARKING,),
        dest=State.AWAITING_KEY,
        why="capacity measured, but signed requests cannot be checked yet",
        effects=(Effect.SET_CAPACITY,),
    ),
    Transition(
        trigger=Trigger.KEY_LOADED,
        sources=(State.AWAITING_KEY,),
        dest=State.READY,
        why="the router's public key arrived",
        effects=(Effect.FINISH_LOAD,),
    ),
    Transition(
        trigger=Trigger.BENCHMARK_FAILED,
        sources=(State.BENCHMARKING,),
        dest=State.ERRORED,
        why="the benchmark requests failed",
    ),
    Transition(
        trigger=Trigger.MODEL_FAILED,
        sources=(
            State.LOADING,
            State.BENCHMARKING,
            State.AWAITING_KEY,
            State.READY,
            State.STALLED,
        ),
        dest=State.ERRORED,
        why="the model server logged an error line",
    ),
    Transition(
        trigger=Trigger.LOAD_TIMED_OUT,
        sources=(State.LOADING,),
        dest=State.ERRORED,
        why="no ready line within --load-timeout (a wrong MODEL_LOG path, a stuck download)",
    ),
    Transition(
        trigger=Trigger.HEALTH_FAILED,
        sources=(State.READY,),
        dest=State.ERRORED,
        why="the model server failed its health checks",
    ),
    Transition(
        trigger=Trigger.STALLED,
        sources=(State.READY,),
        dest=State.STALLED,
        why="requests were sent and nothing came back on any of them within the stall limit",
    ),
    Transition(
        trigger=Trigger.PROGRESSED,
        sources=(State.STALLED,),
        dest=State.READY,
        why="the probe request was answered: the model server works again",
        effects=(Effect.CLEAR_ERROR,),
    ),
    Transition(
        trigger=Trigger.MODEL_RESTARTED,
        sources=(
            State.BENCHMARKING,
            State.AWAITING_KEY,
            State.READY,
            State.STALLED,
            State.ERRORED,
        ),
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


def states_running(service: Service) -> frozenset[State]:
    """The states in which ``service`` runs."""
    return frozenset(info.state for info in STATES if service in info.services)
