"""The expected lifecycle, written by hand for the lifecycle tests, and ways to reach each state.

The oracle comes from the spec and the documented meaning of each state -- it is not read from
``TRANSITIONS`` -- so that a wrong row in the table, or a machine that disagrees with it, fails
the tests that check against it (``test_lifecycle.py``, ``test_lifecycle_property.py``).
"""

from __future__ import annotations

import itertools

import attrs

from pyworker._lifecycle import State, Trigger
from pyworker._machine import Lifecycle

S = State
T = Trigger


EXPECTED_NEXT: dict[tuple[State, Trigger], State] = {
    # Loading: the ready line starts the benchmark; an error line or SIGTERM ends the load.
    # (A replaced log while loading is just the same load: nothing to do.)
    (S.LOADING, T.MODEL_LOADED): S.BENCHMARKING,
    (S.LOADING, T.MODEL_FAILED): S.ERRORED,
    (S.LOADING, T.LOAD_TIMED_OUT): S.ERRORED,
    (S.LOADING, T.SHUTDOWN): S.DRAINING,
    # Benchmarking: the measurement ends it, well or badly; the model server may fail or restart.
    # (Done leads to ready, or to awaiting_key while the router's key is unknown: see next_state.)
    (S.BENCHMARKING, T.BENCHMARK_DONE): S.READY,
    (S.BENCHMARKING, T.BENCHMARK_FAILED): S.ERRORED,
    (S.BENCHMARKING, T.MODEL_FAILED): S.ERRORED,
    (S.BENCHMARKING, T.MODEL_RESTARTED): S.LOADING,
    (S.BENCHMARKING, T.SHUTDOWN): S.DRAINING,
    # Awaiting the key: the key makes it ready; the model server may still fail or restart.
    (S.AWAITING_KEY, T.KEY_LOADED): S.READY,
    (S.AWAITING_KEY, T.MODEL_LOADED): S.BENCHMARKING,
    (S.AWAITING_KEY, T.MODEL_FAILED): S.ERRORED,
    (S.AWAITING_KEY, T.MODEL_RESTARTED): S.LOADING,
    (S.AWAITING_KEY, T.SHUTDOWN): S.DRAINING,
    # Ready: a second ready line means an unseen restart (benchmark again); health is watched,
    # and so is progress on the requests sent.
    (S.READY, T.MODEL_LOADED): S.BENCHMARKING,
    (S.READY, T.MODEL_FAILED): S.ERRORED,
    (S.READY, T.HEALTH_FAILED): S.ERRORED,
    (S.READY, T.STALLED): S.STALLED,
    (S.READY, T.MODEL_RESTARTED): S.LOADING,
    (S.READY, T.SHUTDOWN): S.DRAINING,
    # Stalled: an answered probe returns to ready; the model server may still fail or restart
    # (a health failure is not looked for: the probe is the better test).
    (S.STALLED, T.PROGRESSED): S.READY,
    (S.STALLED, T.MODEL_LOADED): S.BENCHMARKING,
    (S.STALLED, T.MODEL_FAILED): S.ERRORED,
    (S.STALLED, T.MODEL_RESTARTED): S.LOADING,
    (S.STALLED, T.SHUTDOWN): S.DRAINING,
    # Errored: only a restart of the model server (seen either way) moves it on, or SIGTERM.
    (S.ERRORED, T.MODEL_LOADED): S.BENCHMARKING,
    (S.ERRORED, T.MODEL_RESTARTED): S.LOADING,
    (S.ERRORED, T.SHUTDOWN): S.DRAINING,
    # Draining ends when the requests in flight are done; stopped is final.
    (S.DRAINING, T.DRAINED): S.STOPPED,
}
"""(state, trigger) -> next state, for every pair that changes the state; all others are ignored."""


def next_state(state: State, trigger: Trigger, *, key_known: bool) -> State | None:
    """The oracle's next state, the router's key taken into account."""
    if (state, trigger) == (S.BENCHMARKING, T.BENCHMARK_DONE) and not key_known:
        return S.AWAITING_KEY
    return EXPECTED_NEXT.get((state, trigger))


ALL_PAIRS = list(itertools.product(State, Trigger))

PATH_TO: dict[State, tuple[Trigger, ...]] = {
    S.LOADING: (),
    S.BENCHMARKING: (T.MODEL_LOADED,),
    S.AWAITING_KEY: (T.MODEL_LOADED, T.BENCHMARK_DONE),
    S.READY: (T.MODEL_LOADED, T.BENCHMARK_DONE),
    S.STALLED: (T.MODEL_LOADED, T.BENCHMARK_DONE, T.STALLED),
    S.ERRORED: (T.MODEL_FAILED,),
    S.DRAINING: (T.SHUTDOWN,),
    S.STOPPED: (T.SHUTDOWN, T.DRAINED),
}
"""A shortest way to reach each state from the initial one."""


def default_error_msg(trigger: Trigger) -> str:
    """The error message when a failure carries no reason: the trigger's name, in words."""
    return trigger.value.replace("_", " ")


class Oracle:
    """The expected lifecycle, by hand: state, error message, capacity and pending loadtime."""

    def __init__(self, *, started_at: float) -> None:
        self.state = S.LOADING
        self.error_msg = ""
        self.max_perf = 0.0
        self.load_started_at = started_at
        self.loads_completed = 0
        self.loadtime = 0.0
        """Seconds the current load took to become ready (0 while not loaded)."""

    def fire(
        self,
        trigger: Trigger,
        *,
        now: float,
        reason: str = "",
        max_perf: float = 0.0,
        key_known: bool = True,
    ) -> bool:
        dest = next_state(self.state, trigger, key_known=key_known)
        if dest is None:
            return False
        source, self.state = self.state, dest
        if dest is S.LOADING:
            # A new model server process: everything about the old one is void.
            self.error_msg = ""
            self.max_perf = 0.0
            self.loadtime = 0.0
            self.load_started_at = now
        elif dest is S.BENCHMARKING:
            self.error_msg = ""
            self.max_perf = 0.0
            self.loadtime = 0.0
            if source is not S.LOADING:
                # Restart without a new log: the load is timed from its ready line.
                self.load_started_at = now
        elif dest is S.AWAITING_KEY:
            self.max_perf = max_perf
        elif dest is S.READY and source is S.STALLED:
            # Back from a stall: the same load, so nothing but the error changes.
            self.error_msg = ""
        elif dest is S.READY:
            self.loads_completed += 1
            if source is S.BENCHMARKING:
                self.max_perf = max_perf
            self.loadtime = max(now - self.load_started_at, 1e-3)
        elif dest is S.STALLED:
            # Still loaded (capacity and load time kept); the error names the stall.
            self.error_msg = reason or default_error_msg(trigger)
        elif dest is S.ERRORED:
            self.error_msg = reason or default_error_msg(trigger)
            self.loadtime = 0.0
        return True


@attrs.define
class Key:
    """Whether the router's key is known, as the worker's authenticator would say."""

    known: bool = True


def lifecycle_in(state: State, *, now: float = 0.0, key: Key | None = None) -> Lifecycle:
    """A lifecycle brought to ``state`` (``awaiting_key``: with the key unknown until then)."""
    key = Key(known=state is not S.AWAITING_KEY) if key is None else key
    lifecycle = Lifecycle(started_at=now, key_known=lambda: key.known)
    for trigger in PATH_TO[state]:
        assert lifecycle.fire(trigger, now=now, max_perf=10.0)
    assert lifecycle.current is state
    key.known = True
    return lifecycle


def observable(lifecycle: Lifecycle) -> tuple[object, ...]:
    """Everything a caller can see."""
    return (
        lifecycle.current,
        lifecycle.error_msg,
        lifecycle.max_perf,
        lifecycle.load_started_at,
        lifecycle.loads_completed,
        lifecycle.loadtime,
        lifecycle.admits_requests,
        lifecycle.refusal_reason(),
    )
