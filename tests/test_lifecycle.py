"""Tests for :mod:`pyworker._lifecycle` (with :mod:`pyworker._load` in the property test).

Everything is checked against an oracle written by hand in this file from the spec and the
documented meaning of each state -- not read from ``TRANSITIONS`` -- so that a wrong row in the
table, or a machine that disagrees with it, fails here.
"""

from __future__ import annotations

import itertools

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyworker._lifecycle import INITIAL, STATE_INFO, STATES, TRANSITIONS, State, Trigger
from pyworker._load import CANCELLED, LoadTracker, Outcome, Ticket
from pyworker._machine import Lifecycle, StateChange

S = State
T = Trigger

# -- the oracle ---------------------------------------------------------------------------------

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


# -- the table and the machine against the oracle -----------------------------------------------


def test_states_and_initial() -> None:
    assert INITIAL is S.LOADING
    assert [info.state for info in STATES] == list(State)
    assert set(STATE_INFO) == set(State)
    # Only a ready worker forwards requests; every other state names its 503 reason. Requests
    # admitted earlier still reach the model server only while ready or draining.
    for state, info in STATE_INFO.items():
        assert info.admits_requests == (state is S.READY)
        assert info.serves_admitted == (state in (S.READY, S.DRAINING))
        assert bool(info.refusal) != info.admits_requests
        assert info.meaning
        assert info.reports
        assert info.cause
        assert info.remedy  # the troubleshooting guide has a row for every state


def test_table_has_no_duplicate_rows() -> None:
    # Rows for one (state, trigger) differ by their guard, and only the last may have none:
    # an unguarded row before another would leave the later one unreachable.
    by_pair: dict[tuple[State, Trigger], list[object]] = {}
    for row in TRANSITIONS:
        for source in row.sources:
            by_pair.setdefault((source, row.trigger), []).append(row.guard)
    for guards in by_pair.values():
        assert len(set(guards)) == len(guards)
        assert None not in guards[:-1]
    for row in TRANSITIONS:
        assert row.dest not in row.sources, "no self-loops: they make terminal states leaky"
        assert row.why


@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS)
@pytest.mark.parametrize("key_known", [True, False])
def test_table_agrees_with_oracle(state: State, trigger: Trigger, key_known: bool) -> None:
    rows = [row for row in TRANSITIONS if row.trigger is trigger and state in row.sources]
    # The first row whose guard holds is taken (the only guard is the key's).
    taken = [row.dest for row in rows if row.guard is None or key_known][:1]
    expected = next_state(state, trigger, key_known=key_known)
    assert taken == ([] if expected is None else [expected])


@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS)
def test_machine_agrees_with_oracle(state: State, trigger: Trigger) -> None:
    lifecycle = lifecycle_in(state)
    twin = lifecycle_in(state)
    changes: list[StateChange] = []
    lifecycle.subscribe(changes.append)
    expected = EXPECTED_NEXT.get((state, trigger))

    assert lifecycle.can_fire(trigger) == (expected is not None)
    fired = lifecycle.fire(trigger, now=5.0, reason="boom", max_perf=3.0)

    if expected is None:
        assert fired is False
        assert observable(lifecycle) == observable(twin)
        assert changes == []
    else:
        assert fired is True
        assert lifecycle.current is expected
        assert changes == [
            StateChange(trigger=trigger, source=state, dest=expected, at=5.0, reason="boom")
        ]


# -- unit tests of Lifecycle --------------------------------------------------------------------


def test_initial_state() -> None:
    lifecycle = Lifecycle(started_at=12.0)
    assert lifecycle.current is S.LOADING
    assert lifecycle.info is STATE_INFO[S.LOADING]
    assert not lifecycle.admits_requests
    assert lifecycle.refusal_reason() == "model is loading"
    assert lifecycle.error_msg == ""
    assert lifecycle.max_perf == 0.0
    assert lifecycle.load_started_at == 12.0
    assert lifecycle.loads_completed == 0
    assert lifecycle.loadtime == 0.0


@pytest.mark.parametrize("state", list(State))
def test_refusal_reason_per_state(state: State) -> None:
    lifecycle = lifecycle_in(state)
    assert lifecycle.admits_requests == (state is S.READY)
    expected = {
        S.LOADING: "model is loading",
        S.BENCHMARKING: "model is being benchmarked",
        S.AWAITING_KEY: "the router's public key is not known yet",
        S.READY: "",
        S.STALLED: "model server stalled: stalled",
        S.ERRORED: "model server is in error: model failed",
        S.DRAINING: "worker is shutting down",
        S.STOPPED: "worker is stopped",
    }
    assert lifecycle.refusal_reason() == expected[state]


@pytest.mark.parametrize(
    ("path", "failure"),
    [
        ((), T.MODEL_FAILED),
        ((T.MODEL_LOADED,), T.MODEL_FAILED),
        ((T.MODEL_LOADED,), T.BENCHMARK_FAILED),
        ((T.MODEL_LOADED, T.BENCHMARK_DONE), T.MODEL_FAILED),
        ((T.MODEL_LOADED, T.BENCHMARK_DONE), T.HEALTH_FAILED),
    ],
)
def test_error_reason_kept_and_shown(path: tuple[Trigger, ...], failure: Trigger) -> None:
    lifecycle = Lifecycle(started_at=0.0)
    for trigger in path:
        assert lifecycle.fire(trigger, now=1.0)
    assert lifecycle.fire(failure, now=2.0, reason="Error: DownloadError")
    assert lifecycle.current is S.ERRORED
    assert lifecycle.error_msg == "Error: DownloadError"
    assert lifecycle.refusal_reason() == "model server is in error: Error: DownloadError"
    # Further failures while errored are ignored: the first reason is the one to fix.
    assert not lifecycle.fire(T.MODEL_FAILED, now=3.0, reason="later noise")
    assert lifecycle.error_msg == "Error: DownloadError"
    # A restart clears it.
    assert lifecycle.fire(T.MODEL_RESTARTED, now=4.0)
    assert lifecycle.error_msg == ""
    assert lifecycle.refusal_reason() == "model is loading"


@pytest.mark.parametrize("failure", [T.MODEL_FAILED, T.BENCHMARK_FAILED])
def test_error_without_reason_names_the_failure(failure: Trigger) -> None:
    lifecycle = lifecycle_in(S.BENCHMARKING)
    assert lifecycle.fire(failure, now=1.0)
    assert lifecycle.error_msg == default_error_msg(failure)
    assert lifecycle.error_msg


def test_restart_seen_as_model_loaded_clears_error() -> None:
    lifecycle = lifecycle_in(S.ERRORED)
    assert lifecycle.fire(T.MODEL_LOADED, now=1.0)
    assert lifecycle.current is S.BENCHMARKING
    assert lifecycle.error_msg == ""


def test_loadtime_per_load() -> None:
    lifecycle = Lifecycle(started_at=0.0)
    assert lifecycle.fire(T.MODEL_LOADED, now=40.0)
    assert lifecycle.loadtime == 0.0
    assert lifecycle.fire(T.BENCHMARK_DONE, now=45.0, max_perf=100.0)
    assert lifecycle.loadtime == 45.0  # from the worker's start, benchmark included
    assert lifecycle.loads_completed == 1

    # A reload after the log was replaced is timed from the replacement.
    assert lifecycle.fire(T.MODEL_RESTARTED, now=100.0)
    assert lifecycle.loadtime == 0.0
    assert lifecycle.fire(T.MODEL_LOADED, now=130.0)
    assert lifecycle.loadtime == 0.0
    assert lifecycle.fire(T.BENCHMARK_DONE, now=132.0, max_perf=100.0)
    assert lifecycle.loadtime == 32.0

    # A restart seen only as a second ready line is timed from that line.
    assert lifecycle.fire(T.MODEL_LOADED, now=200.0)
    assert lifecycle.fire(T.BENCHMARK_DONE, now=205.0, max_perf=100.0)
    assert lifecycle.loadtime == 5.0
    assert lifecycle.loads_completed == 3


def test_loadtime_counts_the_wait_for_the_key() -> None:
    key = Key(known=False)
    lifecycle = Lifecycle(started_at=0.0, key_known=lambda: key.known)
    assert lifecycle.fire(T.MODEL_LOADED, now=10.0)
    assert lifecycle.fire(T.BENCHMARK_DONE, now=12.0, max_perf=5.0)
    assert (lifecycle.current, lifecycle.loadtime, lifecycle.max_perf) == (S.AWAITING_KEY, 0.0, 5.0)
    key.known = True
    assert lifecycle.fire(T.KEY_LOADED, now=20.0)
    assert (lifecycle.current, lifecycle.loadtime) == (S.READY, 20.0)


def test_loadtime_is_never_zero_for_a_load() -> None:
    lifecycle = lifecycle_in(S.BENCHMARKING, now=7.0)
    assert lifecycle.fire(T.BENCHMARK_DONE, now=7.0)
    assert lifecycle.loadtime > 0.0


def test_stall_keeps_the_load_and_recovery_clears_the_error() -> None:
    lifecycle = lifecycle_in(S.BENCHMARKING)
    assert lifecycle.fire(T.BENCHMARK_DONE, now=3.0, max_perf=40.0)
    assert lifecycle.fire(T.STALLED, now=50.0, reason="no answer for 31 s")
    assert (lifecycle.current, lifecycle.error_msg) == (S.STALLED, "no answer for 31 s")
    assert lifecycle.refusal_reason() == "model server stalled: no answer for 31 s"
    assert (lifecycle.loadtime, lifecycle.max_perf, lifecycle.loads_completed) == (3.0, 40.0, 1)
    assert lifecycle.fire(T.PROGRESSED, now=60.0)
    assert (lifecycle.current, lifecycle.error_msg, lifecycle.refusal_reason()) == (S.READY, "", "")
    # The same load: the load time and the count of loads are unchanged.
    assert (lifecycle.loadtime, lifecycle.max_perf, lifecycle.loads_completed) == (3.0, 40.0, 1)


@pytest.mark.parametrize("leave", [T.MODEL_FAILED, T.HEALTH_FAILED, T.MODEL_RESTARTED])
def test_loadtime_is_cleared_when_the_load_is_lost(leave: Trigger) -> None:
    lifecycle = lifecycle_in(S.READY)
    assert lifecycle.fire(leave, now=1.0)
    assert lifecycle.loadtime == 0.0


def test_loadtime_survives_shutdown() -> None:
    lifecycle = lifecycle_in(S.BENCHMARKING)
    assert lifecycle.fire(T.BENCHMARK_DONE, now=3.0)
    assert lifecycle.fire(T.SHUTDOWN, now=3.5)
    assert lifecycle.loadtime == 3.0


def test_no_loadtime_while_benchmarking_after_restart() -> None:
    lifecycle = lifecycle_in(S.BENCHMARKING)
    assert lifecycle.fire(T.BENCHMARK_DONE, now=3.0)
    assert lifecycle.fire(T.MODEL_LOADED, now=3.5)  # restarted before the first report
    assert lifecycle.current is S.BENCHMARKING
    assert lifecycle.loadtime == 0.0


def test_max_perf_set_on_ready_and_cleared_on_reload() -> None:
    lifecycle = lifecycle_in(S.BENCHMARKING)
    assert lifecycle.max_perf == 0.0
    assert lifecycle.fire(T.BENCHMARK_DONE, now=1.0, max_perf=250.0)
    assert lifecycle.max_perf == 250.0
    assert lifecycle.fire(T.MODEL_RESTARTED, now=2.0)
    assert lifecycle.max_perf == 0.0
    assert lifecycle.fire(T.MODEL_LOADED, now=3.0)
    assert lifecycle.fire(T.BENCHMARK_DONE, now=4.0, max_perf=80.0)
    assert lifecycle.max_perf == 80.0


def test_listeners_get_state_changes() -> None:
    lifecycle = Lifecycle(started_at=0.0)
    first: list[StateChange] = []
    second: list[StateChange] = []
    lifecycle.subscribe(first.append)
    lifecycle.subscribe(second.append)
    assert lifecycle.fire(T.MODEL_LOADED, now=1.0)
    assert not lifecycle.fire(T.HEALTH_FAILED, now=1.5, reason="ignored")
    assert lifecycle.fire(T.BENCHMARK_FAILED, now=2.0, reason="timeout")
    assert lifecycle.fire(T.SHUTDOWN, now=3.0)
    assert lifecycle.fire(T.DRAINED, now=4.0)
    expected = [
        StateChange(
            trigger=T.MODEL_LOADED, source=S.LOADING, dest=S.BENCHMARKING, at=1.0, reason=""
        ),
        StateChange(
            trigger=T.BENCHMARK_FAILED,
            source=S.BENCHMARKING,
            dest=S.ERRORED,
            at=2.0,
            reason="timeout",
        ),
        StateChange(trigger=T.SHUTDOWN, source=S.ERRORED, dest=S.DRAINING, at=3.0, reason=""),
        StateChange(trigger=T.DRAINED, source=S.DRAINING, dest=S.STOPPED, at=4.0, reason=""),
    ]
    assert first == expected
    assert second == expected


def test_listener_sees_the_new_state() -> None:
    lifecycle = Lifecycle(started_at=0.0)
    seen: list[tuple[State, float]] = []
    lifecycle.subscribe(lambda change: seen.append((lifecycle.current, lifecycle.max_perf)))
    lifecycle.fire(T.MODEL_LOADED, now=1.0)
    lifecycle.fire(T.BENCHMARK_DONE, now=2.0, max_perf=9.0)
    assert seen == [(S.BENCHMARKING, 0.0), (S.READY, 9.0)]


def test_stopped_is_absorbing() -> None:
    lifecycle = lifecycle_in(S.STOPPED)
    before = observable(lifecycle)
    for trigger in Trigger:
        assert not lifecycle.can_fire(trigger)
        assert not lifecycle.fire(trigger, now=99.0, reason="late", max_perf=1.0)
    assert observable(lifecycle) == before
    assert lifecycle.refusal_reason() == "worker is stopped"


# -- property test: random event sequences against the oracle -----------------------------------

WORKLOADS = st.one_of(
    st.integers(min_value=1, max_value=4096).map(float),
    st.floats(min_value=0.001, max_value=10_000.0, allow_nan=False, allow_infinity=False),
)
REASONS = st.one_of(
    st.sampled_from(["", "Error: WebserverFailed", "Error: DownloadError", "CUDA out of memory"]),
    st.text(max_size=12),
)
DELAYS = st.one_of(
    st.sampled_from([0.0, 0.001, 0.5, 1.0, 10.0, 61.0]),
    st.floats(min_value=0.0, max_value=120.0, allow_nan=False),
)
PICKS = st.integers(min_value=0, max_value=1_000)
MAX_PERFS = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)
REL, ABS = 1e-9, 1e-6
"""Float tolerance for sums that the tracker and the oracle add up in different orders."""
CUR_PERF_WINDOW = 60.0


class LifecycleAndLoad(RuleBasedStateMachine):
    """Drives a Lifecycle and a LoadTracker as the worker does, checking both after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.key = Key(known=False)
        self.lifecycle = Lifecycle(started_at=self.now, key_known=lambda: self.key.known)
        self.tracker = LoadTracker(now=self.now)
        self.changes: list[StateChange] = []
        self.lifecycle.subscribe(self.changes.append)
        # The oracle's side.
        self.oracle = Oracle(started_at=self.now)
        self.expected_changes: list[StateChange] = []
        self.shut_down = False
        self.seen_stopped = False
        self.in_flight: dict[int, Ticket] = {}
        self.closed: list[Ticket] = []
        self.changed = False
        self.finished_log: list[tuple[float, float]] = []
        self.received = self.cancelled = self.rejected = 0.0
        self.accepted = 0
        self.last_totals = self.tracker.totals(self.now)

    # -- helpers ------------------------------------------------------------------------------
    def fire(self, trigger: Trigger, *, reason: str = "", max_perf: float = 0.0) -> None:
        source = self.oracle.state
        assert self.lifecycle.can_fire(trigger) == ((source, trigger) in EXPECTED_NEXT)
        expected = self.oracle.fire(
            trigger, now=self.now, reason=reason, max_perf=max_perf, key_known=self.key.known
        )
        fired = self.lifecycle.fire(trigger, now=self.now, reason=reason, max_perf=max_perf)
        assert fired == expected, (source, trigger)
        if expected:
            self.expected_changes.append(
                StateChange(
                    trigger=trigger,
                    source=source,
                    dest=self.oracle.state,
                    at=self.now,
                    reason=reason,
                )
            )
        if self.oracle.state is S.DRAINING:
            self.shut_down = True

    def pick(self, index: int) -> Ticket:
        return list(self.in_flight.values())[index % len(self.in_flight)]

    # -- model server and supervisor events ---------------------------------------------------
    @initialize(
        warm_up=st.booleans(), key_known=st.booleans(), load_time=DELAYS, max_perf=MAX_PERFS
    )
    def start(self, warm_up: bool, key_known: bool, load_time: float, max_perf: float) -> None:
        # Half the runs know the key from the start (a configured one), half fetch it later.
        self.key.known = key_known
        # Half the runs start from a served model, so that request handling gets most steps.
        if warm_up:
            self.key_arrives()
            self.now += load_time
            self.fire(T.MODEL_LOADED)
            self.fire(T.BENCHMARK_DONE, max_perf=max_perf)

    @rule(max_perf=MAX_PERFS)
    def model_comes_up(self, max_perf: float) -> None:
        self.fire(T.MODEL_LOADED)
        self.fire(T.BENCHMARK_DONE, max_perf=max_perf)

    # The model server's events are grouped into few rules, so that a served model lives long
    # enough between them for requests to come and go.
    @rule(line=st.sampled_from(["loaded", "error", "replaced", "too slow"]), reason=REASONS)
    def model_log_line(self, line: str, reason: str) -> None:
        if line == "loaded":
            self.fire(T.MODEL_LOADED)
        elif line == "error":
            self.fire(T.MODEL_FAILED, reason=reason)
        elif line == "too slow":  # the load timeout, not a log line, but as rare
            self.fire(T.LOAD_TIMED_OUT, reason=reason)
        else:  # the log file was replaced or truncated: a new model server process
            self.fire(T.MODEL_RESTARTED)

    @rule(ok=st.booleans(), max_perf=MAX_PERFS, reason=REASONS)
    def benchmark_ends(self, ok: bool, max_perf: float, reason: str) -> None:
        if ok:
            self.fire(T.BENCHMARK_DONE, max_perf=max_perf)
        else:
            self.fire(T.BENCHMARK_FAILED, reason=reason)

    @rule()
    def key_arrives(self) -> None:
        # The key fetcher sets the key, then tells the lifecycle (which only acts while
        # awaiting it); the key stays known from then on.
        self.key.known = True
        self.fire(T.KEY_LOADED)

    @rule(reason=REASONS)
    def health_check_fails(self, reason: str) -> None:
        self.fire(T.HEALTH_FAILED, reason=reason)

    @rule(reason=REASONS)
    def watchdog_sees_a_stall(self, reason: str) -> None:
        # The watchdog ends the requests it followed: cancelled, as far as the load goes.
        if self.lifecycle.can_fire(T.STALLED):
            for index in list(self.in_flight):
                self.cancel_request(index)
        self.fire(T.STALLED, reason=reason)

    @rule()
    def probe_answered(self) -> None:
        self.fire(T.PROGRESSED)

    @rule(roll=st.integers(min_value=0, max_value=3))
    def sigterm(self, roll: int) -> None:
        # Shutdown is absorbing; sending it on one roll in four leaves the runs room to explore.
        if roll == 0:
            self.fire(T.SHUTDOWN)

    @precondition(lambda self: not self.in_flight)
    @rule()
    def drained(self) -> None:
        self.fire(T.DRAINED)

    @precondition(lambda self: self.oracle.state is S.DRAINING and self.in_flight)
    @rule()
    def drain_deadline(self) -> None:
        # The final deadline: requests still in flight are cancelled, then the worker stops.
        for index in list(self.in_flight):
            self.cancel_request(index)
        self.fire(T.DRAINED)

    @rule(delay=DELAYS)
    def time_passes(self, delay: float) -> None:
        self.now += delay

    # -- requests -----------------------------------------------------------------------------
    @rule(workloads=st.lists(WORKLOADS, min_size=1, max_size=4))
    def requests_arrive(self, workloads: list[float]) -> None:
        for workload in workloads:
            admits = self.lifecycle.admits_requests
            assert admits == (self.oracle.state is S.READY)
            if not admits:
                assert self.lifecycle.refusal_reason()
                continue
            assert not self.shut_down
            ticket = self.tracker.open(workload, self.now)
            assert ticket.id not in self.in_flight
            self.in_flight[ticket.id] = ticket
            self.received += workload
            self.accepted += 1
            self.changed = True

    @precondition(lambda self: self.oracle.state is S.READY)
    @rule(workload=WORKLOADS)
    def request_refused_for_overload(self, workload: float) -> None:
        self.tracker.rejected(workload, self.now)
        self.rejected += workload
        self.changed = True

    @precondition(lambda self: self.in_flight)
    @rule(index=PICKS, actual=st.none() | WORKLOADS)
    def request_completes(self, index: int, actual: float | None) -> None:
        ticket = self.pick(index)
        self.tracker.close(ticket, Outcome.answered(200, actual), self.now)
        del self.in_flight[ticket.id]
        self.closed.append(ticket)
        self.finished_log.append((self.now, ticket.workload if actual is None else actual))
        self.changed = True

    @precondition(lambda self: self.in_flight)
    @rule(index=PICKS, status=st.sampled_from([400, 422, 500, 502, 504]), actual=WORKLOADS)
    def request_fails(self, index: int, status: int, actual: float) -> None:
        # The model server refused it, failed or never answered: no work was done, whatever
        # figure it reported, and nothing was cancelled.
        ticket = self.pick(index)
        if status in (502, 504):
            outcome = Outcome.failed(status, "model server unreachable")
        else:
            outcome = Outcome.answered(status, actual)
        self.tracker.close(ticket, outcome, self.now)
        del self.in_flight[ticket.id]
        self.closed.append(ticket)
        self.changed = True

    @precondition(lambda self: self.in_flight)
    @rule(index=PICKS)
    def request_cancelled(self, index: int) -> None:
        self.cancel_request(self.pick(index).id)

    def cancel_request(self, ticket_id: int) -> None:
        ticket = self.in_flight.pop(ticket_id)
        self.tracker.close(ticket, CANCELLED, self.now)
        self.closed.append(ticket)
        self.cancelled += ticket.workload
        self.changed = True

    @precondition(lambda self: self.closed)
    @rule(index=PICKS, outcome=st.sampled_from([Outcome.answered(200), CANCELLED]))
    def request_closed_twice(self, index: int, outcome: Outcome) -> None:
        # A late second close (e.g. a cancel racing the end of the answer) changes nothing.
        ticket = self.closed[index % len(self.closed)]
        changed_before, first = self.tracker.changed, ticket.outcome
        self.tracker.close(ticket, outcome, self.now)
        assert self.tracker.changed == changed_before
        assert ticket.outcome is first

    # -- the reporter -------------------------------------------------------------------------
    @rule()
    def report_tick(self) -> None:
        totals = self.tracker.totals(self.now)
        assert totals.at == self.now
        assert totals.received == pytest.approx(self.received, rel=REL, abs=ABS)
        assert totals.cancelled == pytest.approx(self.cancelled, rel=REL, abs=ABS)
        assert totals.rejected == pytest.approx(self.rejected, rel=REL, abs=ABS)
        assert totals.completed == pytest.approx(
            sum(w for _, w in self.finished_log), rel=REL, abs=ABS
        )
        assert totals.accepted == self.accepted
        # Totals only grow: every report's figures (differences) are never negative.
        for name in ("received", "cancelled", "rejected", "completed", "accepted"):
            assert getattr(totals, name) >= getattr(self.last_totals, name)
        self.last_totals = totals
        recent = sum(w for t, w in self.finished_log if t >= self.now - CUR_PERF_WINDOW)
        window = min(CUR_PERF_WINDOW, max(self.now, 1e-9))
        assert self.tracker.recent_completions(self.now) == pytest.approx(
            recent / window, rel=REL, abs=ABS
        )
        working = list(self.tracker.reported())
        assert [t.id for t in working] == list(self.in_flight)
        assert sum(t.workload for t in working) == pytest.approx(
            sum(t.workload for t in self.in_flight.values()), rel=REL, abs=ABS
        )

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def lifecycle_matches_oracle(self) -> None:
        lifecycle, oracle = self.lifecycle, self.oracle
        assert lifecycle.current is oracle.state
        assert lifecycle.admits_requests == (oracle.state is S.READY)
        assert lifecycle.loads_completed == oracle.loads_completed
        assert lifecycle.max_perf == oracle.max_perf
        assert lifecycle.error_msg == oracle.error_msg
        assert lifecycle.loadtime == pytest.approx(oracle.loadtime, rel=1e-12)
        if oracle.state in (S.LOADING, S.BENCHMARKING, S.AWAITING_KEY, S.ERRORED):
            assert lifecycle.loadtime == 0.0
        if oracle.state in (S.READY, S.STALLED):
            assert lifecycle.loadtime > 0.0
            assert lifecycle.max_perf > 0.0
        if oracle.state in (S.ERRORED, S.STALLED):
            assert lifecycle.error_msg
            assert lifecycle.refusal_reason().endswith(": " + lifecycle.error_msg)
        if oracle.state in (S.LOADING, S.BENCHMARKING, S.AWAITING_KEY, S.READY):
            assert lifecycle.error_msg == ""
        if oracle.state is S.AWAITING_KEY:
            assert not self.key.known
        assert (lifecycle.refusal_reason() == "") == lifecycle.admits_requests
        assert self.changes == self.expected_changes

    @invariant()
    def shutdown_is_final(self) -> None:
        if self.shut_down:
            assert not self.lifecycle.admits_requests
        if self.seen_stopped:
            assert self.lifecycle.current is S.STOPPED
            assert not any(self.lifecycle.can_fire(trigger) for trigger in Trigger)
        self.seen_stopped = self.lifecycle.current is S.STOPPED

    @invariant()
    def load_matches_oracle(self) -> None:
        assert self.tracker.in_flight == len(self.in_flight)
        if self.in_flight:
            expected = sum(ticket.workload for ticket in self.in_flight.values())
            assert self.tracker.pending_workload == pytest.approx(expected, rel=REL, abs=ABS)
        else:
            assert self.tracker.pending_workload == 0.0
        assert self.tracker.changed == self.changed


TestLifecycleAndLoad = LifecycleAndLoad.TestCase
TestLifecycleAndLoad.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


def test_totals_only_grow_and_count_each_event_once() -> None:
    tracker = LoadTracker(now=0.0)
    early = tracker.open(5.0, now=0.0)
    first = tracker.totals(1.0)
    tracker.close(early, CANCELLED, now=1.5)  # cancelled one interval after it arrived
    tracker.close(tracker.open(7.0, now=2.5), Outcome.answered(200), now=2.6)
    tracker.rejected(3.0, now=2.7)
    delta = tracker.totals(3.0) - first
    assert (delta.received, delta.cancelled, delta.completed, delta.rejected) == (7, 5, 7, 3)
    assert (delta.accepted, delta.at) == (1, 2.0)
