"""Tests for pyworker._reporter: report contents, the schedule, and delivery under failure."""

from __future__ import annotations

import importlib.metadata
import itertools
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

from pyworker._lifecycle import Lifecycle, State, Trigger
from pyworker._load import LoadSnapshot, LoadTracker, Outcome
from pyworker._report import Report, ReportSchedule, build_report
from pyworker._reporter import Reporter

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]

WIRE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int,
    "url": str,
    "loadtime": float,
    "max_perf": float,
    "cur_perf": float,
    "cur_load": float,
    "error_msg": str,
    "num_requests_working": int,
    "num_requests_recieved": int,
    "additional_disk_usage": float,
    "cur_capacity": int,
    "max_capacity": int,
    "new_load": float,
    "rej_load": float,
    "working_request_idxs": list,
    "version": str,
    "mtoken": str,
    "state": str,
}


def snapshot(**overrides: Any) -> LoadSnapshot:
    fields: dict[str, Any] = {
        "cur_load": 1.5,
        "new_load": 2.0,
        "rej_load": 0.5,
        "cur_perf": 3.0,
        "num_requests_working": 2,
        "num_requests_received": 4,
        "working_request_idxs": (3, 5),
        "interval": 1.0,
    }
    return LoadSnapshot(**(fields | overrides))


def build(lifecycle: Lifecycle, **overrides: Any) -> Report:
    kwargs: dict[str, Any] = {
        "lifecycle": lifecycle,
        "snapshot": snapshot(),
        "container_id": 42,
        "url": "http://1.2.3.4:41234",
        "disk_delta_gb": 0.25,
        "mtoken": "secret-token",
    }
    return build_report(**(kwargs | overrides))


def ready_lifecycle(*, loaded_at: float = 12.0, max_perf: float = 80.0) -> Lifecycle:
    lc = Lifecycle(started_at=0.0)
    lc.fire(Trigger.MODEL_LOADED, now=loaded_at - 2)
    lc.fire(Trigger.BENCHMARK_DONE, now=loaded_at, max_perf=max_perf)
    return lc


# -- build_report (pure) --------------------------------------------------------------------
def test_report_has_every_wire_field_with_its_type() -> None:
    body = build(ready_lifecycle()).to_json()
    assert set(body) == set(WIRE_FIELDS)
    for name, kind in WIRE_FIELDS.items():
        assert isinstance(body[name], kind), name
    assert body["id"] == 42
    assert body["url"] == "http://1.2.3.4:41234"
    assert body["num_requests_recieved"] == 4
    assert body["working_request_idxs"] == [3, 5]
    assert body["cur_capacity"] == body["max_capacity"] == 0
    assert body["additional_disk_usage"] == 0.25
    assert body["max_perf"] == 80.0
    assert body["state"] == "ready"
    assert body["mtoken"] == "secret-token"
    json.dumps(body)  # serialisable as is


def test_non_finite_numbers_are_sent_as_zero() -> None:
    lc = ready_lifecycle(max_perf=float("inf"))
    body = build(lc, snapshot=snapshot(cur_perf=float("nan"))).to_json()
    assert (body["max_perf"], body["cur_perf"]) == (0.0, 0.0)
    json.dumps(body, allow_nan=False)


def test_version_defaults_to_package_version() -> None:
    assert build(ready_lifecycle()).version == importlib.metadata.version("pyworker")
    assert build(ready_lifecycle(), version="2.0").version == "2.0"


def test_mtoken_is_kept_out_of_repr() -> None:
    assert "secret-token" not in repr(build(ready_lifecycle()))


def test_loadtime_is_sent_once_per_load() -> None:
    lc = ready_lifecycle(loaded_at=12.0)
    assert build(lc).loadtime == 12.0
    assert build(lc).loadtime == 0.0
    # A new model server process: a new load, timed from its start, reported once again.
    lc.fire(Trigger.MODEL_RESTARTED, now=100.0)
    assert build(lc).loadtime == 0.0
    lc.fire(Trigger.MODEL_LOADED, now=130.0)
    assert build(lc).loadtime == 0.0
    lc.fire(Trigger.BENCHMARK_DONE, now=135.0, max_perf=10.0)
    assert build(lc).loadtime == 35.0
    assert build(lc).loadtime == 0.0


def test_error_msg_only_when_errored() -> None:
    lc = ready_lifecycle()
    assert build(lc).error_msg == ""
    lc.fire(Trigger.MODEL_FAILED, now=20.0, reason="Error: WebserverFailed")
    report = build(lc)
    assert report.error_msg == "Error: WebserverFailed"
    assert report.state == "errored"
    lc.fire(Trigger.MODEL_LOADED, now=30.0)
    assert build(lc).error_msg == ""


@pytest.mark.parametrize(("delta", "expected"), [(-3.0, 0.0), (float("nan"), 0.0), (1.5, 1.5)])
def test_disk_delta_is_never_negative(delta: float, expected: float) -> None:
    assert build(ready_lifecycle(), disk_delta_gb=delta).additional_disk_usage == expected


# -- ReportSchedule (pure) ------------------------------------------------------------------
def due_ticks(
    schedule: ReportSchedule,
    ticks: range,
    state: Callable[[int], State],
    *,
    changed: Callable[[int], bool] = lambda t: False,
    in_flight: Callable[[int], int] = lambda t: 0,
) -> list[int]:
    due = []
    for t in ticks:
        if schedule.due(
            now=float(t), state=state(t), load_changed=changed(t), in_flight=in_flight(t)
        ):
            schedule.reported(now=float(t), state=state(t), in_flight=in_flight(t))
            due.append(t)
    return due


@pytest.mark.parametrize("state", [State.LOADING, State.BENCHMARKING, State.ERRORED])
def test_schedule_not_loaded_reports_every_10s_ignoring_load(state: State) -> None:
    ticks = due_ticks(ReportSchedule(), range(35), lambda t: state, changed=lambda t: True)
    assert ticks == [0, 10, 20, 30]


def test_schedule_ready_reports_on_change_and_every_10s() -> None:
    ticks = due_ticks(
        ReportSchedule(), range(40), lambda t: State.READY, changed=lambda t: t in (3, 4, 25)
    )
    assert ticks == [0, 3, 4, 14, 24, 25, 35]


def test_schedule_state_change_reports_next_tick() -> None:
    states = {0: State.LOADING, 4: State.BENCHMARKING, 6: State.READY}

    def state(t: int) -> State:
        return states[max(k for k in states if k <= t)]

    assert due_ticks(ReportSchedule(), range(20), state) == [0, 4, 6, 16]


def test_schedule_transition_round_trip_within_a_tick_still_reports() -> None:
    lc = ready_lifecycle()
    schedule = ReportSchedule()
    lc.subscribe(schedule.on_transition)
    schedule.reported(now=0.0, state=State.READY, in_flight=0)
    assert not schedule.due(now=1.0, state=State.READY, load_changed=False, in_flight=0)
    lc.fire(Trigger.MODEL_LOADED, now=1.2)  # ready -> benchmarking -> ready within one tick
    lc.fire(Trigger.BENCHMARK_DONE, now=1.4)
    assert schedule.due(now=2.0, state=State.READY, load_changed=False, in_flight=0)


def test_schedule_draining_reports_as_in_flight_falls_then_final_once() -> None:
    flights = {0: 5, 1: 5, 2: 3, 3: 3, 4: 0}

    def state(t: int) -> State:
        return State.DRAINING if t < 6 else State.STOPPED

    ticks = due_ticks(ReportSchedule(), range(30), state, in_flight=lambda t: flights.get(t, 0))
    assert ticks == [0, 2, 4, 6]  # ... and nothing after the final report


# -- Reporter with a mock clock and mock transport -----------------------------------------
@attrs.define
class Autoscaler:
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
    clock: trio.testing.MockClock
    autoscaler: Autoscaler
    lifecycle: Lifecycle
    tracker: LoadTracker
    http: httpx.AsyncClient

    def reporter(self, *hosts: str, **overrides: Any) -> Reporter:
        kwargs: dict[str, Any] = {
            "addresses": [f"http://{h}" for h in hosts or ("a",)],
            "container_id": 7,
            "url": "http://1.2.3.4:5000",
            "lifecycle": self.lifecycle,
            "tracker": self.tracker,
            "http": self.http,
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
    autoscaler = Autoscaler()
    async with httpx.AsyncClient(transport=httpx.MockTransport(autoscaler)) as http:
        now = trio.current_time()
        yield Rig(
            clock=autojump_clock,
            autoscaler=autoscaler,
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
    assert rig.autoscaler.times("a") == [0, 10, 20, 30]
    assert {b["state"] for b in rig.autoscaler.bodies("a")} == {"loading"}


async def test_reports_next_tick_after_a_change_when_ready(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter().run)
        await trio.sleep(2.5)
        rig.fire(Trigger.MODEL_LOADED)
        await trio.sleep(2)  # 4.5
        rig.fire(Trigger.BENCHMARK_DONE, max_perf=50.0)
        await trio.sleep(2.7)  # 7.2
        ticket = rig.tracker.open(10.0, trio.current_time())
        await trio.sleep(2)  # 9.2
        rig.tracker.close(ticket, Outcome.answered(200), trio.current_time())
        await trio.sleep(21.3)  # 30.5
        nursery.cancel_scope.cancel()
    times = rig.autoscaler.times("a")
    bodies = rig.autoscaler.bodies("a")
    assert times == [0, 3, 5, 8, 10, 20, 30]
    assert [b["state"] for b in bodies[:3]] == ["loading", "benchmarking", "ready"]
    assert [b["loadtime"] for b in bodies] == [0, 0, 4.5, 0, 0, 0, 0]
    assert bodies[2]["max_perf"] == 50.0
    assert bodies[3]["num_requests_working"] == 1
    assert bodies[3]["num_requests_recieved"] == 1
    assert bodies[4]["num_requests_working"] == 0


async def test_slow_address_does_not_delay_a_fast_one(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep(30)
        return httpx.Response(200)

    rig.autoscaler.behaviour["slow"] = hang
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter("slow", "fast").run)
        await trio.sleep(3.5)
        rig.fire(Trigger.MODEL_LOADED)
        await trio.sleep(27)  # 30.5
        nursery.cancel_scope.cancel()
    assert rig.autoscaler.times("fast") == [0, 4, 14, 24]
    assert rig.autoscaler.times("slow") == []
    # Bounded: each attempt is cut at 5 s, at most 3 attempts per report, and only the newest
    # report is ever waiting.
    slow_attempts = [t for t, h, _ in rig.autoscaler.attempts if h == "slow"]
    assert len(slow_attempts) <= 30.5 / 5 + 1
    assert all(b - a >= 5 for a, b in itertools.pairwise(slow_attempts))


async def test_replaced_report_hands_its_loadtime_on(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    calls = 0

    async def first_call_slow(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep(4.5)  # under the 5 s attempt timeout: it succeeds, late
        return httpx.Response(200)

    rig.autoscaler.behaviour["slow"] = first_call_slow
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter("slow", "fast").run)
        await trio.sleep(0.5)
        rig.fire(Trigger.MODEL_LOADED)  # report at 1 waits in slow's mailbox ...
        await trio.sleep(1)  # 1.5
        rig.fire(Trigger.BENCHMARK_DONE, max_perf=5.0)  # ... replaced at 2 (loadtime 1.5) ...
        await trio.sleep(1)  # 2.5
        rig.tracker.open(1.0, trio.current_time())  # ... replaced at 3 (loadtime 0)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    for host in ("slow", "fast"):
        loadtimes = [b["loadtime"] for b in rig.autoscaler.bodies(host)]
        assert [lt for lt in loadtimes if lt] == [1.5], host
    slow = rig.autoscaler.received
    assert [(t, b["num_requests_working"]) for t, h, b in slow if h == "slow"][:2] == [
        (4.5, 0),
        (4.5, 1),  # the newest report, carrying the replaced one's loadtime
    ]


async def test_retries_are_bounded(
    autojump_clock: trio.testing.MockClock, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async def error(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    rig.autoscaler.behaviour["a"] = error
    with caplog.at_level(logging.DEBUG, logger="pyworker.reporter"):
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.reporter().run)
            await trio.sleep(9)  # before the next report, due at 10
            nursery.cancel_scope.cancel()
    assert [t for t, _, _ in rig.autoscaler.attempts] == [0, 0.5, 1.5]
    warnings = [
        r for r in caplog.records if r.name == "pyworker.reporter" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1
    assert "HTTP 503" in warnings[0].getMessage()


async def test_client_error_is_not_retried(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def bad_request(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "nope"})

    rig.autoscaler.behaviour["a"] = bad_request
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter().run)
        await trio.sleep(9)  # before the next report, due at 10
        nursery.cancel_scope.cancel()
    assert [t for t, _, _ in rig.autoscaler.attempts] == [0]


async def test_newer_report_supersedes_a_retry(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def error(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    rig.autoscaler.behaviour["a"] = error
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.reporter(retry_backoff=2.0).run)
        await trio.sleep(2.5)
        rig.fire(Trigger.MODEL_LOADED)  # report at 3 replaces the retry due at 6
        await trio.sleep(7)
        nursery.cancel_scope.cancel()
    assert [(t, b["state"]) for t, _, b in rig.autoscaler.attempts] == [
        (0, "loading"),
        (2, "loading"),
        (3, "benchmarking"),
        (5, "benchmarking"),
        (9, "benchmarking"),
    ]


@pytest.mark.parametrize("failure", ["connect", "500"])
async def test_failing_address_recovers(
    autojump_clock: trio.testing.MockClock, rig: Rig, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    async def down_for_a_while(request: httpx.Request) -> httpx.Response:
        if trio.current_time() < 25:
            if failure == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(500)
        return httpx.Response(200)

    rig.autoscaler.behaviour["down"] = down_for_a_while
    with caplog.at_level(logging.INFO, logger="pyworker.reporter"):
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.reporter("down", "up").run)
            await trio.sleep(40.5)
            nursery.cancel_scope.cancel()
    assert rig.autoscaler.times("up") == [0, 10, 20, 30, 40]
    assert rig.autoscaler.times("down") == [30, 40]
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pyworker.reporter"]
    assert [lvl for lvl, _ in levels] == [logging.WARNING, logging.INFO]
    assert "http://down" in levels[0][1]


async def test_drain_then_final_report(autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    rig.fire(Trigger.MODEL_LOADED)
    rig.fire(Trigger.BENCHMARK_DONE, max_perf=5.0)
    tickets = [rig.tracker.open(1.0, 0.0) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        reporter = rig.reporter()
        await nursery.start(reporter.run)
        await trio.sleep(0.5)
        rig.fire(Trigger.SHUTDOWN)
        for ticket in tickets:
            await trio.sleep(2)
            rig.tracker.close(ticket, Outcome.answered(200), trio.current_time())
        await trio.sleep(0.2)
        rig.fire(Trigger.DRAINED)
    # run() returned by itself after the final report.
    assert trio.current_time() == pytest.approx(7)
    assert [(t, b["state"], b["num_requests_working"]) for t, _, b in rig.autoscaler.received] == [
        (0, "ready", 3),
        (1, "draining", 3),
        (3, "draining", 2),
        (5, "draining", 1),
        (7, "stopped", 0),  # drained at 6.7: the final report is the next tick's
    ]


async def test_final_report_carries_loadtime_a_dead_address_missed(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    calls = 0

    async def down_then_up(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls <= 6:  # the loading report and the ready report, three attempts each
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    rig.autoscaler.behaviour["a"] = down_then_up
    reporter = rig.reporter()
    with trio.fail_after(reporter.final_timeout + 10):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run)
            await trio.sleep(0.2)
            rig.fire(Trigger.MODEL_LOADED)
            rig.fire(Trigger.BENCHMARK_DONE, max_perf=1.0)
            await trio.sleep(5)
            assert rig.autoscaler.received == []
            rig.fire(Trigger.SHUTDOWN)
            rig.fire(Trigger.DRAINED)
        # run() returned by itself once the final report was out.
    assert [b["loadtime"] for b in rig.autoscaler.bodies("a")] == [pytest.approx(0.2)]
    assert [b["state"] for b in rig.autoscaler.bodies("a")] == ["stopped"]


async def test_final_report_is_bounded_by_its_deadline(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError

    rig.autoscaler.behaviour["slow"] = hang
    reporter = rig.reporter("slow", "fast", final_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        await trio.sleep(0.5)
        rig.fire(Trigger.SHUTDOWN)
        rig.fire(Trigger.DRAINED)
    # run() returned by itself (the nursery closed without a cancel): the final report went
    # out on the tick at 1 and gave up on the hanging address 2 s later.
    assert trio.current_time() == pytest.approx(3.0)
    assert [b["state"] for b in rig.autoscaler.bodies("fast")] == ["loading", "stopped"]


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
    seen: list[Report] = []
    reporter = rig.reporter(disk_path="/models", disk_usage=disk_usage, on_report=seen.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        await trio.sleep(5.5)
        used[0] += 3 * 2**30
        await trio.sleep(10)
        used[0] -= 2**30  # freed space is not "negative usage"
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    deltas = [r.additional_disk_usage for r in seen]
    assert sum(deltas) == pytest.approx(3.0)
    assert all(d >= 0 for d in deltas)
    assert [r.additional_disk_usage for r in seen] == [
        b["additional_disk_usage"] for b in rig.autoscaler.bodies("a")
    ]


async def test_a_single_string_is_not_a_list_of_addresses(
    autojump_clock: trio.testing.MockClock, rig: Rig
) -> None:
    with pytest.raises(TypeError, match="sequence of URLs"):
        rig.reporter(addresses="http://a")


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
                addresses=[binds[0] + "/"],
                container_id=3,
                url="http://worker.example:1234",
                lifecycle=lifecycle,
                tracker=LoadTracker(now=now),
                http=http,
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
    assert set(body) == set(WIRE_FIELDS)
    for name, kind in WIRE_FIELDS.items():
        assert isinstance(body[name], kind), name
    assert body["id"] == 3
    assert body["state"] == "loading"
