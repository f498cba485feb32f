"""Tests for the finished-request records (vast-2026.md §9): the bounded log, the body sent to
``/delete_requests/``, fail-over, and keeping records until an address accepts them."""

from __future__ import annotations

import json
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from pyworker._autoscaler import Autoscaler
from pyworker._lifecycle import Trigger
from pyworker._load import CANCELLED, Outcome
from pyworker._machine import Lifecycle
from pyworker._records import Record, RecordSender, RecordStatus, RequestLog


def record(idx: int, status: RecordStatus = RecordStatus.SUCCESS) -> Record:
    return Record(
        request_idx=idx,
        status=status,
        entered_queue_at=1000.0 + idx,
        work_started_at=1000.5 + idx,
        work_completed_at=1001.0 + idx,
    )


def test_statuses_of_outcomes() -> None:
    assert RecordStatus.of(Outcome.answered(200)) is RecordStatus.SUCCESS
    # The model server's own error, relayed: the request was served, as the router sees it.
    assert RecordStatus.of(Outcome.answered(500)) is RecordStatus.SUCCESS
    assert RecordStatus.of(Outcome.failed(502, "unreachable")) is RecordStatus.ERROR
    assert RecordStatus.of(CANCELLED) is RecordStatus.CANCELLED


@pytest.mark.parametrize(
    ("status", "success"),
    [
        (RecordStatus.SUCCESS, True),
        (RecordStatus.CANCELLED, True),
        (RecordStatus.ERROR, False),
        (RecordStatus.REJECTED, False),
    ],
)
def test_entry_on_the_wire(status: RecordStatus, success: bool) -> None:
    assert record(7, status).to_json() == {
        "request_idx": 7,
        "success": success,
        "status": status.value,
        "entered_queue_at": 1007.0,
        "work_started_at": 1007.5,
        "work_completed_at": 1008.0,
    }


def test_the_log_is_bounded_and_acknowledges_only_what_was_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RequestLog(limit=3)
    for idx in range(5):
        log.add(record(idx))
    assert [r.request_idx for r in log.batch()] == [2, 3, 4]
    assert log.dropped == 2
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1
    sent = log.batch(size=2)
    log.add(record(5))
    log.acknowledge(sent)
    assert [r.request_idx for r in log.batch()] == [4, 5]


class Router:
    """``/delete_requests/`` at two addresses; the first can be down."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.down: set[str] = set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/delete_requests/"
        if request.url.host in self.down:
            return httpx.Response(503)
        self.bodies.append((request.url.host, json.loads(request.content)))
        return httpx.Response(200, json={})


async def test_sender_batches_fails_over_and_keeps_records_until_accepted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = Router()
    router.down = {"first", "second"}
    log = RequestLog()
    lifecycle = Lifecycle(started_at=0.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(router)) as http:
        sender = RecordSender(
            log=log,
            autoscaler=Autoscaler(
                addresses=["http://first", "http://second"], path="/delete_requests/", http=http
            ),
            lifecycle=lifecycle,
            worker_id=4242,
            mtoken="tok",
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(sender.run)
            log.add(record(1))
            log.add(record(2, RecordStatus.REJECTED))
            await trio.sleep(10)
            assert router.bodies == []  # nobody took them: still kept
            assert len(log) == 2
            router.down = {"first"}
            await trio.sleep(10)
            log.add(record(3, RecordStatus.CANCELLED))
            lifecycle.fire(Trigger.SHUTDOWN, now=trio.current_time())
            lifecycle.fire(Trigger.DRAINED, now=trio.current_time())
        # run() returned by itself after the last delivery.
    assert len(log) == 0
    (host, first), (_, last) = router.bodies
    assert host == "second"
    assert first["worker_id"] == 4242
    assert first["mtoken"] == "tok"
    assert [(e["request_idx"], e["status"], e["success"]) for e in first["requests"]] == [
        (1, "Success", True),
        (2, "Rejected", False),
    ]
    assert [e["request_idx"] for e in last["requests"]] == [3]


async def test_delivery_health_tells_an_outage_and_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = Router()
    async with httpx.AsyncClient(transport=httpx.MockTransport(router)) as http:
        autoscaler = Autoscaler(
            addresses=["http://first", "http://second"], path="/delete_requests/", http=http
        )
        assert autoscaler.health().to_json() == {
            "addresses": 2,
            "ok": True,
            "failing_for": None,
            "last_error": "",
            "accepted": 0,
        }
        router.down = {"first", "second"}
        await trio.sleep(5)
        assert not await autoscaler.post({"n": 1})  # retried at both: takes a while
        await trio.sleep(10)
        assert not await autoscaler.post({"n": 2})
        health = autoscaler.health()
        assert not health.ok
        # From the start of the first failed POST, not from its end.
        assert health.failing_for == pytest.approx(trio.current_time() - 5)
        assert "http://first: " in health.last_error
        assert "http://second: " in health.last_error
        router.down = {"first"}
        assert await autoscaler.post({"n": 3})
        assert autoscaler.health() == attrs.evolve(
            health, ok=True, failing_for=None, last_error="", accepted=1
        )
