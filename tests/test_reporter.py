"""Tests for the delivery of load reports (:mod:`pyworker._reporter`): the schedule on a mock
clock, fail-over delivery, the figures of unaccepted reports, the final report, and one report
over a real socket."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, cast

import attrs
import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve
from report_wire import V2024, V2026, WIRE_FIELDS

from pyworker._autoscaler import Autoscaler
from pyworker._lifecycle import Trigger
from pyworker._load import LoadTracker, Outcome
from pyworker._machine import Lifecycle
from pyworker._report import ReportFormat
from pyworker._reporter import Reporter

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


# -- delivery with a mock clock and mock transport -----------------------------------------
@attrs.define
class Hosts:
    """Records what each fake address received and when; per-host behaviour is pluggable."""

    received: list[tuple[float, str, dict[str, Any]]] = attrs.Factory(list)
    attempts: list[tuple[float, str, dict[str, Any]]] = attrs.Factory(list)
    behaviour: dict[str, Handler] = attrs.Factory(dict)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/worker_status/"
        host = request.url.host
        body = json.loads(request.content)
        self.attempts.append((trio.current_time(), host, body))
        if host in self.behaviour:
            response = await self.behaviour[host](request)
        else:
            response = httpx.Response(200, json={})
        if response.status_code < 400:
            self.received.append((trio.current_time(), host, body))
        return response

    def times(self, host: str) -> list[float]:
        return [t for t, h, _ in self.received if h == host]

    def bodies(self, host: str) -> list[dict[str, Any]]:
        return [b for _, h, b in self.received if h == host]


@attrs.define
class Rig:
    hosts: Hosts
    lifecycle: Lifecycle
    tracker: LoadTracker
    http: httpx.AsyncClient

    def reporter(self, *hosts: str, fmt: ReportFormat = V2026, **overrides: Any) -> Reporter:
        kwargs: dict[str, Any] = {
            "autoscaler": Autoscaler(
                addresses=[f"http://{h}" for h in hosts or ("a",)],
                path="/worker_status/",
                http=self.http,
            ),
            "fmt": fmt,
            "container_id": 7,
            "url": "http://1.2.3.4:5000",
            "lifecycle": self.lifecycle,
            "tracker": self.tracker,
            "disk_path": None,
            "mtoken": "t",
            "version": "9.9",
        }
        return Reporter(**(kwargs | overrides))

    def fire(self, trigger: Trigger, **kwargs: Any) -> None:
        assert self.lifecycle.fire(trigger, now=trio.current_time(), **kwargs)


@pytest.fixture
async def rig(autojump_clock: trio.testing.MockClock) -> Any:
    # Tests that use this must also take ``autojump_clock`` themselves: pytest-trio hands
    # trio.run() only a clock passed directly to the test function.
    hosts = Hosts()
    async with httpx.AsyncClient(transport=httpx.MockTransport(hosts)) as http:
        now = trio.current_time()
        yield Rig(
            hosts=hosts,
            lifecycle=Lifecycle(started_at=now),
            tracker=LoadTracker(now=now),
            http=http,
        )


async def test_reports_every_10s_while_loading(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter().run)
        await trio.sleep(35)
        nursery.cancel_scope.cancel()
    assert rig.hosts.times("a") == [0, 10, 20, 30]
    assert {b["state"] for b in rig.hosts.bodies("a")} == {"loading"}


@pytest.mark.parametrize("fmt", [V2026, V2024])
async def test_reports_next_tick_after_a_change_when_ready(
    autojump_clock: trio.testing.MockClock, rig: Rig, fmt: ReportFormat
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter(fmt=fmt).run)
        await trio.sleep(2.5)
        rig.fire(Trigger.MODEL_LOADED)
        await trio.sleep(2)  # 4.5
        rig.fire(Trigger.BENCHMARK_DONE, max_perf=50.0)
        await trio.sleep(2.7)  # 7.2
        ticket = rig.tracker.open(10.0, trio.current_time(), idx=7001)
        await trio.sleep(2)  # 9.2
        rig.tracker.close(ticket, Outcome.answered(200), trio.current_time())
        await trio.sleep(21.3)  # 30.5
        nursery.cancel_scope.cancel()
    times = rig.hosts.times("a")
    bodies = rig.hosts.bodies("a")
    assert times == [0, 3, 5, 8, 10, 20, 30]
    assert [b["state"] for b in bodies[:3]] == ["loading", "benchmarking", "ready"]
    once = [0, 0, 4.5, 0, 0, 0, 0]
    every = [0, 0, 4.5, 4.5, 4.5, 4.5, 4.5]
    assert [b["loadtime"] for b in bodies] == (every if fmt is V2026 else once)
    assert bodies[2]["max_perf"] == 50.0
    assert (bodies[3]["num_requests_working"], bodies[3]["working_request_idxs"]) == (1, [7001])
    assert bodies[4]["num_requests_working"] == 0


async def test_fail_over_in_order_and_stay_with_the_one_that_works(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    rig.hosts.behaviour["first"] = down
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter("first", "second", "third").run)
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    # Not broadcast: only the second address gets the report, after three tries at the first;
    # the next report goes straight to the second.
    assert rig.hosts.times("second") == [1.5, 10.0]
    assert rig.hosts.times("third") == []
    assert [h for _, h, _ in rig.hosts.attempts] == ["first"] * 3 + ["second", "second"]


async def test_figures_of_unaccepted_reports_ride_in_the_next(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def down_until_20(request: httpx.Request) -> httpx.Response:
        if trio.current_time() < 20:
            return httpx.Response(503)
        return httpx.Response(200)

    rig.hosts.behaviour["a"] = down_until_20
    rig.fire(Trigger.MODEL_LOADED)
    rig.fire(Trigger.BENCHMARK_DONE, max_perf=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter(fmt=V2024).run)
        await trio.sleep(2.2)
        for at in range(3):
            rig.tracker.close(rig.tracker.open(5.0, at), Outcome.answered(200), at + 0.1)
            await trio.sleep(5)
        await trio.sleep(6)  # 23.2: the autoscaler is back since 20
        nursery.cancel_scope.cancel()
    body = rig.hosts.bodies("a")[0]
    # The first accepted report carries everything since the start: the load time of the
    # load, three requests, the work they did.
    assert body["loadtime"] > 0
    assert body["num_requests_recieved"] == 3
    assert body["new_load"] * 20 == pytest.approx(15, rel=0.2)


async def test_retries_are_bounded_and_logged_once(
    autojump_clock: trio.testing.MockClock, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async def error(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    rig.hosts.behaviour["a"] = error
    with caplog.at_level(logging.DEBUG, logger="pyworker.autoscaler"):
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.reporter().run)
            await trio.sleep(9)  # before the next report, due at 10
            nursery.cancel_scope.cancel()
    assert [t for t, _, _ in rig.hosts.attempts] == [0, 0.5, 1.5]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "HTTP 503" in warnings[0].getMessage()


async def test_client_error_is_not_retried(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def bad_request(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "nope"})

    rig.hosts.behaviour["a"] = bad_request
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter().run)
        await trio.sleep(9)  # before the next report, due at 10
        nursery.cancel_scope.cancel()
    assert [t for t, _, _ in rig.hosts.attempts] == [0]


async def test_drain_then_final_report(autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    rig.fire(Trigger.MODEL_LOADED)
    rig.fire(Trigger.BENCHMARK_DONE, max_perf=5.0)
    tickets = [rig.tracker.open(1.0, 0.0) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter().run)
        await trio.sleep(0.5)
        rig.fire(Trigger.SHUTDOWN)
        for ticket in tickets:
            await trio.sleep(2)
            rig.tracker.close(ticket, Outcome.answered(200), trio.current_time())
        await trio.sleep(0.2)
        rig.fire(Trigger.DRAINED)
    # run() returned by itself after the final report.
    assert trio.current_time() == pytest.approx(7)
    assert [(t, b["state"], b["num_requests_working"]) for t, _, b in rig.hosts.received] == [
        (0, "ready", 3),
        (1, "draining", 3),
        (3, "draining", 2),
        (5, "draining", 1),
        (7, "stopped", 0),  # drained at 6.7: the final report is the next tick's
    ]


async def test_final_report_supersedes_a_retrying_delivery_and_is_bounded(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError

    rig.hosts.behaviour["slow"] = hang
    reporter = rig.reporter("slow", "fast", final_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        await trio.sleep(0.5)  # the first report is stuck on the hanging address
        rig.fire(Trigger.SHUTDOWN)
        rig.fire(Trigger.DRAINED)
    # The stuck delivery was dropped a second after the transition; the final report went out
    # on the next tick and gave up on the hanging address within its 2 s.
    assert trio.current_time() == pytest.approx(4.0)
    assert [b["state"] for b in rig.hosts.bodies("fast")] == []
    assert [(t, h) for t, h, _ in rig.hosts.attempts] == [(0, "slow"), (2, "slow")]


async def test_disk_growth_is_reported_once(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    used = [10 * 2**30]

    def disk_usage(path: str) -> int:
        assert path == "/models"
        return used[0]

    # The disk is read in a worker thread, which the run loop sees as "all tasks blocked": with
    # a zero threshold the virtual clock would race past every sample. 10 ms of real idleness
    # is ample for the thread and keeps the test fast.
    autojump_clock.autojump_threshold = 0.01
    reporter = rig.reporter(disk_path="/models", disk_usage=disk_usage)
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        await trio.sleep(5.5)
        used[0] += 3 * 2**30
        await trio.sleep(10)
        used[0] -= 2**30  # freed space is not "negative usage"
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    bodies = rig.hosts.bodies("a")
    deltas = [b["additional_disk_usage"] for b in bodies]
    assert sum(deltas) == pytest.approx(3.0)
    assert all(d >= 0 for d in deltas)
    assert bodies[-1]["disk_usage"] == pytest.approx(12.0)


async def test_a_single_string_is_not_a_list_of_addresses(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    with pytest.raises(TypeError, match="sequence of URLs"):
        Autoscaler(addresses="http://a", path="/worker_status/", http=rig.http)


# -- one real socket ------------------------------------------------------------------------
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def test_real_autoscaler_receives_a_full_report() -> None:
    received: list[tuple[str, dict[str, Any]]] = []
    got_one = trio.Event()

    async def app(
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        received.append((scope["path"], json.loads(body)))
        got_one.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    stop = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            binds = await nursery.start(
                partial(serve, cast("Any", app), config, shutdown_trigger=stop.wait)
            )
            now = trio.current_time()
            lifecycle = Lifecycle(started_at=now)
            reporter = Reporter(
                autoscaler=Autoscaler(
                    addresses=[binds[0] + "/"], path="/worker_status/", http=http
                ),
                container_id=3,
                url="http://worker.example:1234",
                lifecycle=lifecycle,
                tracker=LoadTracker(now=now),
                disk_path="/",
                mtoken="m",
            )
            async with trio.open_nursery() as reporting:
                reporting.start_soon(reporter.run)
                await got_one.wait()
                lifecycle.fire(Trigger.SHUTDOWN, now=trio.current_time())
                lifecycle.fire(Trigger.DRAINED, now=trio.current_time())
            # The final report is out, before the server stops accepting connections.
            stop.set()
    path, body = received[0]
    assert path == "/worker_status/"
    assert set(body) == set(WIRE_FIELDS[V2026])
    for name, kind in WIRE_FIELDS[V2026].items():
        assert isinstance(body[name], kind), name
    assert body["id"] == 3
    assert body["state"] == "loading"
    assert [b["state"] for _, b in received][-1] == "stopped"
