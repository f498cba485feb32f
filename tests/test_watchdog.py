"""Tests for :mod:`pyworker._watchdog`: the stall rule on a mock clock, then a worker in front
of a real model server process that takes work and goes silent."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from harness import Stack, eventually, ready_stack

from pyworker import State
from pyworker._benchmark import BenchmarkResult
from pyworker._watchdog import MIN_MARGIN, Pace, Stall, Watchdog, margin_for

GUARD = 30  # seconds: the absolute bound on each test over real processes


def prompt(tokens: int) -> dict[str, object]:
    return {"prompt": "hi", "max_response_tokens": tokens}


async def read_cut_stream(stack: Stack, payload: object) -> list[bytes]:
    """The chunks of a ``/generate_stream`` answer that starts (200) and is then cut off."""
    events: list[bytes] = []

    async def read() -> None:
        async with stack.http.stream(
            "POST", stack.url + "/generate_stream", json=stack.envelope(payload)
        ) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                events.append(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        await read()
    return events


# -- the rule, on a mock clock ----------------------------------------------------------------


def test_margin_follows_the_benchmarks_spread() -> None:
    assert margin_for(1.0) == MIN_MARGIN == 3.0
    assert margin_for(1.4) == MIN_MARGIN
    assert margin_for(2.5) == 5.0
    assert margin_for(float("nan")) == MIN_MARGIN


def test_a_cache_from_before_the_spread_reads_one() -> None:
    result = BenchmarkResult(
        max_perf=5.0, workload=5.0, elapsed=1.0, runs=2, key="k", measured_at=0
    )
    assert (result.spread, result.request_speed) == (1.0, 0.0)
    with pytest.raises(ValueError, match="spread"):
        BenchmarkResult(
            max_perf=5.0, workload=5.0, elapsed=1.0, runs=2, key="k", measured_at=0, spread=0.5
        )


async def test_no_work_is_never_a_stall(mock_clock: trio.testing.MockClock) -> None:
    watchdog = Watchdog(stall_timeout=30.0)
    mock_clock.jump(1000.0)
    assert watchdog.check(trio.current_time()) is None


async def test_silence_past_the_timeout_with_work_waiting_is_a_stall(
    mock_clock: trio.testing.MockClock,
) -> None:
    watchdog = Watchdog(stall_timeout=30.0)
    mock_clock.jump(500.0)  # a long idle time before the request owes nothing
    with watchdog.track(10.0):
        mock_clock.jump(30.0)
        assert watchdog.check(trio.current_time()) is None
        mock_clock.jump(0.5)
        stall = watchdog.check(trio.current_time())
        assert stall == Stall(silent_for=30.5, limit=30.0, waiting=1)
        assert stall is not None
        assert "30 s" in stall.reason
        assert "1 request" in stall.reason
    assert watchdog.in_flight == 0
    assert watchdog.check(trio.current_time()) is None


async def test_a_long_prediction_widens_the_limit(mock_clock: trio.testing.MockClock) -> None:
    # 1,000 units at 50/s: 20 s predicted, so up to 60 s of silence is on schedule (k = 3).
    watchdog = Watchdog(stall_timeout=30.0, pace=lambda: Pace(max_perf=50.0))
    with watchdog.track(1000.0):
        mock_clock.jump(59.0)
        assert watchdog.check(trio.current_time()) is None
        mock_clock.jump(2.0)
        stall = watchdog.check(trio.current_time())
        assert stall is not None
        assert stall.limit == pytest.approx(60.0)


async def test_the_queue_ahead_counts_in_the_prediction(
    mock_clock: trio.testing.MockClock,
) -> None:
    watchdog = Watchdog(stall_timeout=1.0, pace=lambda: Pace(max_perf=10.0, margin=4.0))
    with watchdog.track(100.0) as first, watchdog.track(50.0) as second:
        assert first.expected == pytest.approx(10.0)
        assert second.expected == pytest.approx(15.0)  # 100 ahead of it, then its own 50
        mock_clock.jump(40.0)
        assert watchdog.check(trio.current_time()) is None  # 4 x 10 s for the oldest
        mock_clock.jump(0.5)
        assert watchdog.check(trio.current_time()) is not None


def test_a_request_alone_is_no_faster_than_one_requests_speed() -> None:
    # A batching model: 2,000 units/s in all, but 60/s for any one request.
    pace = Pace(max_perf=2000.0, request_speed=60.0)
    assert pace.predict(4000.0) == pytest.approx(4000 / 60)
    assert pace.predict(100.0, ahead=1e6) == pytest.approx(1000100 / 2000)
    assert pace.limit(30.0, pace.predict(4000.0)) == pytest.approx(3 * 4000 / 60)
    assert Pace().predict(1e9) == 0.0  # nothing measured: no prediction


def test_pace_of_a_benchmark_result() -> None:
    result = BenchmarkResult(
        max_perf=80.0,
        workload=8.0,
        elapsed=0.1,
        runs=4,
        key="k",
        measured_at=0,
        request_speed=20.0,
        spread=2.5,
    )
    assert Pace.of(result) == Pace(max_perf=80.0, request_speed=20.0, margin=5.0)
    assert Pace.of(None) == Pace()


async def test_progress_on_any_request_means_no_stall(mock_clock: trio.testing.MockClock) -> None:
    watchdog = Watchdog(stall_timeout=30.0)
    with watchdog.track(10.0), watchdog.track(10.0) as streaming:
        for _ in range(10):
            mock_clock.jump(20.0)
            watchdog.progressed(streaming)
            streaming.waiting_since = trio.current_time()  # waits for its next chunk
            assert watchdog.check(trio.current_time()) is None
        mock_clock.jump(31.0)
        stall = watchdog.check(trio.current_time())
        assert stall is not None
        assert stall.waiting == 2


async def test_time_spent_on_a_slow_client_is_not_silence(
    mock_clock: trio.testing.MockClock,
) -> None:
    watchdog = Watchdog(stall_timeout=30.0)
    with watchdog.track(10.0) as work:
        watchdog.progressed(work)  # a chunk arrived: now written to a client that reads slowly
        mock_clock.jump(100.0)
        assert watchdog.check(trio.current_time()) is None
        work.waiting_since = trio.current_time()  # back to waiting on the model server
        mock_clock.jump(29.0)
        assert watchdog.check(trio.current_time()) is None
        mock_clock.jump(2.0)
        assert watchdog.check(trio.current_time()) is not None


async def test_zero_turns_the_watchdog_off(mock_clock: trio.testing.MockClock) -> None:
    watchdog = Watchdog(stall_timeout=0.0)
    with watchdog.track(10.0):
        mock_clock.jump(1e6)
        assert watchdog.check(trio.current_time()) is None


async def test_run_reports_the_stall_and_ends_every_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watchdog = Watchdog(stall_timeout=30.0)
    stalls: list[tuple[float, Stall]] = []
    ended: list[str] = []

    async def request() -> None:
        with watchdog.track(10.0) as work, work.scope:
            await trio.sleep_forever()
        ended.append(work.ended)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        nursery.start_soon(request)
        await trio.testing.wait_all_tasks_blocked()
        await watchdog.run(lambda stall: stalls.append((trio.current_time(), stall)))
    [(at, stall)] = stalls
    assert 30.0 < at <= 31.0 + 1e-9
    assert stall.waiting == 2
    assert ended == ["model server stalled", "model server stalled"]
    assert watchdog.in_flight == 0


# -- a worker in front of a model server that goes silent -------------------------------------


async def test_a_silent_model_is_stalled_and_its_requests_get_504(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # Every request stops after 2 tokens; /healthcheck keeps answering 200.
        stack = await ready_stack(
            nursery, tmp_path, "--hang-after", "2", stall_timeout=0.5, health_interval=0.2
        )
        started = trio.current_time()
        response = await stack.post("/generate", prompt(5))
        waited = trio.current_time() - started
        assert response.status_code == 504
        assert response.json() == {"error": "model server stalled"}
        assert waited > 0.5  # not before the stall limit
        assert stack.worker.lifecycle.current is State.STALLED

        status = await stack.status()
        assert status["state"] == "stalled"
        assert "no answer from the model server" in status["error_msg"]
        refused = await stack.post("/generate", prompt(5))
        assert refused.status_code == 503
        assert refused.json()["state"] == "stalled"
        assert refused.json()["error"].startswith("model server stalled: no answer")
        # The upstream connection was closed: the model server saw its client leave.
        await eventually(lambda: _upstream_closed(stack), what="upstream closed")
        # The autoscaler hears of it, with nothing left in flight.
        reports = stack.standin.reports
        report = await eventually(
            lambda: next((r for r in reports if r["error_msg"]), None), what="a stall report"
        )
        assert "no answer from the model server" in report["error_msg"]
        assert report["num_requests_working"] == 0
        assert report["cur_load"] == 0
        # Passing health checks do not bring it back: only an answered request does.
        with trio.move_on_after(1.0):
            await stack.worker.watch.wait_leave(State.STALLED)
        assert stack.worker.lifecycle.current is State.STALLED


async def test_a_stream_that_goes_silent_is_cut(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--hang-after", "2", stall_timeout=0.5)
        events = await read_cut_stream(stack, prompt(5))
        assert b"".join(events).count(b"data: ") == 2  # what came before the silence
        assert not any(b'"done"' in event for event in events)
        await stack.wait_state(State.STALLED)


async def test_a_model_that_answers_again_makes_the_worker_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # The probe's limit comes from one request's speed (the fake's 100 tokens/s).
        stack = await ready_stack(
            nursery, tmp_path, request_speed=100.0, stall_timeout=0.5, health_interval=60.0
        )
        process = stack.fake.process
        process.send_signal(signal.SIGSTOP)  # the whole model server freezes
        try:
            response = await stack.post("/generate", prompt(5))
            assert response.status_code == 504
            assert stack.worker.lifecycle.current is State.STALLED
        finally:
            process.send_signal(signal.SIGCONT)
        await stack.wait_state(State.READY)
        assert stack.worker.lifecycle.error_msg == ""
        response = await stack.post("/generate", prompt(5))
        assert response.status_code == 200


async def test_a_restart_clears_a_stall(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--hang-after", "2", stall_timeout=0.5)
        assert (await stack.post("/generate", prompt(5))).status_code == 504
        await stack.restart_fake("--load-delay", "0.05")  # a new model server, a new log
        await stack.wait_state(State.LOADING, State.BENCHMARKING)
        await stack.wait_state(State.READY)
        assert (await stack.post("/generate", prompt(5))).status_code == 200


async def test_a_slow_answer_on_schedule_is_not_a_stall(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # 40 tokens at 20 tokens/s: 2 s of silence before the whole answer, four times the
        # stall timeout, but what the capacity predicts.
        stack = await ready_stack(
            nursery, tmp_path, "--token-rate", "20", max_perf=20.0, stall_timeout=0.5
        )
        response = await stack.post("/generate", prompt(40))
        assert response.status_code == 200, response.text
        assert stack.worker.lifecycle.current is State.READY


async def _upstream_closed(stack: Stack) -> bool:
    # The probe requests the stalled worker sends come and go: at least one was cancelled.
    stats = await stack.stats()
    return stats["cancelled"] >= 1 and stats["in_flight"] == 0


def test_stall_reason_holds_figures_only() -> None:
    reason = Stall(silent_for=31.2, limit=30.0, waiting=3).reason
    assert reason == "no answer from the model server for 31.2 s on 3 request(s) (limit 30 s)"


async def test_the_total_timeout_ends_a_request_that_keeps_going(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # 200 tokens at 20 tokens/s: 10 s of steady progress, past a 1 s total timeout.
        stack = await ready_stack(
            nursery, tmp_path, "--token-rate", "20", max_perf=20.0, total_timeout=1.0
        )
        response = await stack.post("/generate", prompt(200))
        assert response.status_code == 504
        assert "total_timeout" in response.json()["error"]

        events = await read_cut_stream(stack, prompt(200))
        assert 5 < b"".join(events).count(b"data: ") < 200
        # Not a stall: the model server is fine, and the worker stays ready.
        assert stack.worker.lifecycle.current is State.READY
        await eventually(lambda: _upstream_closed(stack), what="upstream closed")
