"""Tests for :mod:`pyworker._admission`: the 429 decision, turns, and the accounting of every
admitted request however it ends."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pyworker._admission import Admission, Overloaded
from pyworker._load import LoadTracker, Outcome, OutcomeKind
from pyworker._records import RecordStatus


def admission(
    *,
    pending: tuple[float, ...] = (),
    capacity: float = 10.0,
    max_queue_time: float = 30.0,
    parallel: bool = True,
) -> Admission:
    """An admission at ``capacity`` with ``pending`` workloads already admitted (by default the
    limit and the turns are Admission's own: 30 s, parallel)."""
    tracker = LoadTracker(now=0.0)
    for workload in pending:
        tracker.open(workload, 0.0)
    return Admission(
        tracker=tracker,
        capacity=lambda: capacity,
        max_queue_time=max_queue_time,
        parallel=parallel,
    )


def test_a_wait_exactly_at_the_limit_is_admitted() -> None:
    # 20 units ahead and 10 of its own at 10 units/s: exactly the 3 s limit.
    admission(pending=(20.0,), max_queue_time=3.0).check(10.0)


def test_a_wait_over_the_limit_is_refused_with_the_excess_as_retry_after() -> None:
    with pytest.raises(Overloaded) as caught:
        admission(pending=(50.0,), max_queue_time=3.0).check(10.0)
    # It would wait 6 s; in 3 s the backlog is back under the limit, so that is when to retry.
    assert caught.value.expected_wait == pytest.approx(6.0)
    assert caught.value.retry_after == 3
    with pytest.raises(Overloaded) as caught:
        admission(pending=(20.0,), max_queue_time=3.0).check(10.5)
    assert caught.value.retry_after == 1  # never 0


def test_an_idle_worker_always_admits() -> None:
    # A single request bigger than the whole limit still runs: nothing else is waiting.
    admission(max_queue_time=3.0).check(1e6)


def test_no_limit_or_no_capacity_yet_admits() -> None:
    admission(pending=(1e6,), max_queue_time=0).check(1e6)
    admission(pending=(1e6,), capacity=0.0).check(1e6)


async def test_refusal_counts_rejected_workload_and_opens_nothing() -> None:
    gate = admission(pending=(50.0,), max_queue_time=3.0)
    with pytest.raises(Overloaded):
        async with gate.admit(10.0):
            raise AssertionError("not admitted")
    assert gate.tracker.totals(1.0).rejected == 10.0
    assert gate.tracker.in_flight == 1  # the one that was already there
    (record,) = gate.records.batch()
    assert record.status is RecordStatus.REJECTED


async def test_every_way_out_is_accounted() -> None:
    gate = admission()
    async with gate.admit(5.0) as ticket:
        ticket.end(Outcome.answered(200, actual=4.0))
    assert ticket.outcome is not None
    assert ticket.outcome.kind is OutcomeKind.COMPLETED
    with pytest.raises(ValueError, match="bug"):
        async with gate.admit(5.0) as failed:
            raise ValueError("bug")
    assert failed.outcome is not None
    assert failed.outcome.kind is OutcomeKind.FAILED
    with trio.move_on_after(0):
        async with gate.admit(5.0) as cancelled:
            await trio.sleep_forever()
    assert cancelled.outcome is not None
    assert cancelled.outcome.kind is OutcomeKind.CANCELLED
    assert gate.tracker.in_flight == 0
    assert gate.tracker.pending_workload == 0.0
    # Each is recorded for the router: relayed, failed by the worker, cancelled.
    statuses = [record.status for record in gate.records.batch()]
    assert statuses == [RecordStatus.SUCCESS, RecordStatus.ERROR, RecordStatus.CANCELLED]


async def test_requests_in_sessions_skip_the_queue_estimate_and_records() -> None:
    gate = admission(pending=(50.0,), max_queue_time=3.0)
    async with gate.admit(10.0, in_session=True) as ticket:
        ticket.end(Outcome.answered(200))
    assert gate.records.batch() == []
    assert gate.tracker.totals(1.0).received == 60.0


async def test_on_admit_runs_only_for_admitted_requests() -> None:
    calls: list[str] = []
    with pytest.raises(Overloaded):
        async with admission(pending=(50.0,), max_queue_time=3.0).admit(
            10.0, on_admit=lambda: calls.append("no")
        ):
            pass
    async with admission().admit(10.0, on_admit=lambda: calls.append("yes")):
        assert calls == ["yes"]


async def test_serial_requests_take_turns_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = admission(parallel=False)
    order: list[int] = []

    async def request(index: int) -> None:
        async with gate.admit(1.0) as ticket:
            order.append(index)
            await trio.sleep(1)
            ticket.end(Outcome.answered(200))

    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(request, index)
            await trio.sleep(0.01)  # arrive in this order
    assert order == [0, 1, 2, 3, 4]
    assert trio.current_time() == pytest.approx(5.0)  # one at a time: 5 x 1 s


async def test_wait_idle_returns_when_the_last_request_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = admission()
    await gate.wait_idle()  # idle at once
    async with trio.open_nursery() as nursery:

        async def request() -> None:
            async with gate.admit(1.0) as ticket:
                await trio.sleep(3)
                ticket.end(Outcome.answered(200))

        nursery.start_soon(request)
        await trio.sleep(0.1)
        await gate.wait_idle()
        assert trio.current_time() == pytest.approx(3.0)
