"""Tests for the load reports' contents in both formats (vast-2026.md §8, vast-protocol.md), the
baseline of what the autoscaler accepted, and the schedule: :mod:`pyworker._report`, pure."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from report_wire import V2024, V2026, WIRE_FIELDS

from pyworker._lifecycle import State, Trigger
from pyworker._load import CANCELLED, LoadTracker, Outcome, TicketKind
from pyworker._machine import Lifecycle
from pyworker._report import Baseline, Draft, ReportFormat, ReportSchedule, build_report
from pyworker._version import __version__


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
