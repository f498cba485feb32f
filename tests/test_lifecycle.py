"""Tests for :mod:`pyworker._lifecycle` and its machine: the table and the machine against the
oracle (``lifecycle_oracle.py``, written by hand from the spec), then unit tests of Lifecycle.

The property test, random event sequences with :mod:`pyworker._load`, is in
``test_lifecycle_property.py``.
"""

from __future__ import annotations

import pytest
from lifecycle_oracle import (
    ALL_PAIRS,
    EXPECTED_NEXT,
    Key,
    default_error_msg,
    lifecycle_in,
    next_state,
    observable,
)

from pyworker._lifecycle import INITIAL, STATE_INFO, STATES, TRANSITIONS, State, Trigger
from pyworker._machine import Lifecycle, StateChange

S = State
T = Trigger


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
