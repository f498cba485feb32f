"""Tests for the load reports: their contents in both formats (vast-2026.md §8,
vast-protocol.md), the baseline of what the autoscaler accepted, the schedule, fail-over
delivery, and the final report."""

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

from pyworker._autoscaler import Autoscaler
from pyworker._lifecycle import State, Trigger
from pyworker._load import CANCELLED, LoadTracker, Outcome, TicketKind
from pyworker._machine import Lifecycle
from pyworker._report import Baseline, Draft, ReportFormat, ReportSchedule, build_report
from pyworker._reporter import Reporter
from pyworker._version import __version__

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
V2026, V2024 = ReportFormat.V2026, ReportFormat.V2024

COMMON_FIELDS: dict[str, type | tuple[type, ...]] = {
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
WIRE_FIELDS = {V2026: COMMON_FIELDS | {"disk_usage": float}, V2024: COMMON_FIELDS}


def ready_lifecycle(*, loaded_at: float = 12.0, max_perf: float = 80.0) -> Lifecycle:
    lc = Lifecycle(started_at=0.0)
    lc.fire(Trigger.MODEL_LOADED, now=loaded_at - 2)
    lc.fire(Trigger.BENCHMARK_DONE, now=loaded_at, max_perf=max_perf)
    return lc


def build(
    fmt: ReportFormat,
    lifecycle: Lifecycle,
    tracker: LoadTracker,
    since: Baseline,
    now: float,
    **overrides: Any,
) -> Draft:
    kwargs: dict[str, Any] = {
        "fmt": fmt,
        "lifecycle": lifecycle,
        "tracker": tracker,
        "since": since,
        "now": now,
        "container_id": 42,
        "url": "http://1.2.3.4:41234",
        "disk_used": 100.0,
        "mtoken": "secret-token",
    }
    return build_report(**(kwargs | overrides))


@attrs.define
class Scene:
    """A worker ten seconds after its start: two requests in flight, one session open, a
    request completed, one cancelled, one refused."""

    lifecycle: Lifecycle
    tracker: LoadTracker
    start: Baseline

    @classmethod
    def make(cls) -> Scene:
        tracker = LoadTracker(now=0.0)
        start = Baseline(totals=tracker.totals(0.0), disk_used=99.5)
        tracker.open(10.0, 1.0, idx=7001)
        tracker.open(20.0, 2.0, idx=7002)
        tracker.open(100.0, 3.0, idx=7003, kind=TicketKind.SESSION)
        in_session = tracker.open(5.0, 3.5, idx=7003, kind=TicketKind.IN_SESSION)
        tracker.close(in_session, Outcome.answered(200, actual=4.0), 3.6)
        tracker.close(tracker.open(30.0, 4.0, idx=7004), Outcome.answered(200), 5.0)
        tracker.close(tracker.open(8.0, 6.0, idx=7005), CANCELLED, 6.5)
        tracker.rejected(50.0, 7.0)
        return cls(lifecycle=ready_lifecycle(loaded_at=2.5), tracker=tracker, start=start)


# -- build_report (pure) --------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [V2026, V2024])
def test_report_has_every_wire_field_with_its_type(fmt: ReportFormat) -> None:
    scene = Scene.make()
    body = build(fmt, scene.lifecycle, scene.tracker, scene.start, 10.0).report.to_json()
    assert set(body) == set(WIRE_FIELDS[fmt])
    for name, kind in WIRE_FIELDS[fmt].items():
        assert isinstance(body[name], kind), name
    assert (body["id"], body["url"], body["mtoken"]) == (42, "http://1.2.3.4:41234", "secret-token")
    assert (body["cur_capacity"], body["max_capacity"]) == (0, 0)
    assert (body["max_perf"], body["state"], body["version"]) == (80.0, "ready", __version__)
    json.dumps(body, allow_nan=False)


def test_2026_meanings() -> None:
    """vast-2026.md §8, field by field."""
    scene = Scene.make()
    report = build(V2026, scene.lifecycle, scene.tracker, scene.start, 10.0).report
    # Every report once loaded carries the load time.
    assert report.loadtime == 2.5
    # In flight now: the two requests and the session (not the request that ran in it).
    assert report.cur_load == 10 + 20 + 100
    assert report.num_requests_working == 3
    assert report.working_request_idxs == (7001, 7002, 7003)
    # Totals since the last accepted report: received minus cancelled, completed, refused.
    assert report.new_load == 10 + 20 + 100 + 5 + 30 + 8 - 8
    assert report.cur_perf == 4 + 30  # the in-session request at its actual workload
    assert report.rej_load == 50
    # Requests and sessions accepted since start (requests in sessions aside).
    assert report.num_requests_recieved == 5
    # Disk: absolute, and the growth since the last accepted report.
    assert (report.disk_usage, report.additional_disk_usage) == (100.0, 0.5)


def test_2024_meanings() -> None:
    """vast-protocol.md's load report, field by field, over the 10 s since the start."""
    scene = Scene.make()
    report = build(V2024, scene.lifecycle, scene.tracker, scene.start, 10.0).report
    assert report.loadtime == 2.5  # once per load
    assert report.cur_load == pytest.approx((173 - 8) / 10)
    assert report.new_load == pytest.approx(173 / 10)
    assert report.rej_load == pytest.approx(50 / 10)
    assert report.cur_perf == pytest.approx(34 / 10)  # over the minute so far (10 s of it)
    assert report.num_requests_recieved == 5
    assert report.num_requests_working == 3
    assert report.disk_usage is None


@pytest.mark.parametrize("fmt", [V2026, V2024])
def test_figures_count_from_the_last_accepted_report(fmt: ReportFormat) -> None:
    scene = Scene.make()
    lost = build(fmt, scene.lifecycle, scene.tracker, scene.start, 10.0)
    # Not accepted: the next report still covers everything since the start...
    again = build(fmt, scene.lifecycle, scene.tracker, scene.start, 10.0)
    assert again.report == lost.report
    # ... and once one is accepted, the next covers only what came after it.
    scene.tracker.close(scene.tracker.open(6.0, 11.0, idx=7006), Outcome.answered(200), 12.0)
    after = build(fmt, scene.lifecycle, scene.tracker, again.accepted, 20.0).report
    if fmt is V2026:
        assert (after.new_load, after.cur_perf, after.rej_load) == (6, 6, 0)
        assert after.num_requests_recieved == 6  # cumulative
        assert after.loadtime == 2.5  # in every report
    else:
        assert after.new_load == pytest.approx(6 / 10)
        assert after.num_requests_recieved == 1
        assert after.loadtime == 0.0  # sent once, and that report was accepted


def test_a_cancel_outweighing_new_arrivals_is_never_negative_nor_lost() -> None:
    tracker = LoadTracker(now=0.0)
    lifecycle = ready_lifecycle()
    early = tracker.open(5.0, 0.5)
    first = build(V2026, lifecycle, tracker, Baseline(totals=tracker.totals(0.0)), 1.0)
    assert first.report.new_load == 5
    tracker.close(early, CANCELLED, 1.5)  # cancelled after its arrival was reported
    second = build(V2026, lifecycle, tracker, first.accepted, 2.0)
    assert second.report.new_load == 0
    tracker.open(7.0, 2.5)
    third = build(V2026, lifecycle, tracker, second.accepted, 3.0)
    # 5 received and cancelled, then 7: what was reported adds up to what really stayed.
    assert first.report.new_load + second.report.new_load + third.report.new_load == 7


def test_2024_loadtime_is_sent_once_per_load_accepted() -> None:
    tracker = LoadTracker(now=0.0)
    lc = ready_lifecycle(loaded_at=12.0)
    start = Baseline(totals=tracker.totals(0.0))
    first = build(V2024, lc, tracker, start, 13.0)
    assert first.report.loadtime == 12.0
    assert build(V2024, lc, tracker, first.accepted, 14.0).report.loadtime == 0.0
    # A new model server process: a new load, reported once again.
    lc.fire(Trigger.MODEL_RESTARTED, now=100.0)
    lc.fire(Trigger.MODEL_LOADED, now=130.0)
    lc.fire(Trigger.BENCHMARK_DONE, now=135.0, max_perf=10.0)
    assert build(V2024, lc, tracker, first.accepted, 136.0).report.loadtime == 35.0


def test_error_msg_only_when_errored() -> None:
    tracker = LoadTracker(now=0.0)
    start = Baseline(totals=tracker.totals(0.0))
    lc = ready_lifecycle()
    assert build(V2026, lc, tracker, start, 1.0).report.error_msg == ""
    lc.fire(Trigger.MODEL_FAILED, now=20.0, reason="Error: WebserverFailed")
    report = build(V2026, lc, tracker, start, 21.0).report
    assert (report.error_msg, report.state, report.loadtime) == (
        "Error: WebserverFailed",
        "errored",
        0.0,
    )


def test_non_finite_numbers_are_sent_as_zero_and_the_token_kept_out_of_repr() -> None:
    tracker = LoadTracker(now=0.0)
    lc = ready_lifecycle(max_perf=float("inf"))
    report = build(V2026, lc, tracker, Baseline(totals=tracker.totals(0.0)), 1.0).report
    assert report.to_json()["max_perf"] == 0.0
    assert "secret-token" not in repr(report)


def test_disk_growth_is_never_negative() -> None:
    tracker = LoadTracker(now=0.0)
    start = Baseline(totals=tracker.totals(0.0), disk_used=100.0)
    draft = build(V2026, ready_lifecycle(), tracker, start, 1.0, disk_used=98.0)
    assert draft.report.additional_disk_usage == 0.0
    assert draft.accepted.disk_used == 98.0


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


@pytest.mark.parametrize(
    "state", [State.LOADING, State.BENCHMARKING, State.AWAITING_KEY, State.ERRORED]
)
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
