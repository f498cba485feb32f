"""Property test of :mod:`pyworker._lifecycle` with :mod:`pyworker._load`: random event
sequences, driven as the worker drives them, checked after every step against the oracle
(``lifecycle_oracle.py``, written by hand from the spec).
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from lifecycle_oracle import (
    EXPECTED_NEXT,
    Key,
    Oracle,
)

from pyworker._lifecycle import State, Trigger
from pyworker._load import CANCELLED, LoadTracker, Outcome, Ticket
from pyworker._machine import Lifecycle, StateChange

S = State
T = Trigger


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
