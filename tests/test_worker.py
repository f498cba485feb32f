"""The worker's lifecycle end to end: loading, benchmarking, ready, errored, restarts of the
model server, health failures and the drain deadline, with the model server as a process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from harness import Stack, eventually, ready_stack, seed_benchmark, start_stack

from backends._fakekit import HTTPServer, Request, Response
from pyworker import State, load_backend
from pyworker._health import HealthChecker
from pyworker._lifecycle import Service, Trigger
from pyworker._machine import Lifecycle, StateChange
from pyworker._upstream import UpstreamPool
from pyworker._watch import LifecycleWatch, run_in_states

HELLO = "hello_world"
GUARD = 30  # seconds: the absolute bound on each test


def prompt(tokens: int) -> dict[str, object]:
    return {"prompt": "hi", "max_response_tokens": tokens}


def seeded(tmp_path: Path, max_perf: float = 1000.0, runs: int = 2) -> None:
    seed_benchmark(tmp_path / "state", load_backend(HELLO), max_perf=max_perf, runs=runs)


@attrs.define
class Changes:
    """The worker's state changes from now on, none missed however fast they follow."""

    seen: list[tuple[State, State]] = attrs.Factory(list)
    _event: trio.Event = attrs.Factory(trio.Event)

    def __call__(self, change: StateChange) -> None:
        self.seen.append((change.source, change.dest))
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, source: State, dest: State) -> None:
        while (source, dest) not in self.seen:
            await self._event.wait()


def record_changes(stack: Stack) -> Changes:
    changes = Changes()
    stack.worker.lifecycle.subscribe(changes)
    return changes


async def refusal(stack: Stack) -> dict[str, Any]:
    response = await stack.post("/generate", prompt(2))
    assert response.status_code == 503, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_503_while_loading_and_benchmarking_then_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery, tmp_path, HELLO, "--load-delay", "1", "--token-rate", "400", benchmark_runs=2
        )

        async def loading_refusal() -> dict[str, Any] | None:
            response = await stack.post("/generate", prompt(2))
            body: dict[str, Any] = response.json()
            # Before the router's key is known the 503 has no state: poll until it has.
            return body if "state" in body else None

        body = await eventually(loading_refusal, what="a refusal naming the state")
        assert body == {"error": "model is loading", "state": "loading"}
        assert (await stack.status())["state"] == "loading"

        await stack.wait_state(State.BENCHMARKING)
        # The benchmark takes ~1 s (two rounds of 180 units at 400/s).
        assert await refusal(stack) == {
            "error": "model is being benchmarked",
            "state": "benchmarking",
        }
        await stack.wait_state(State.READY)
        response = await stack.post("/generate", prompt(2))
        assert response.status_code == 200
        status = await stack.status()
        assert status["state"] == "ready"
        assert status["max_perf"] > 0


async def test_failed_load_errors_the_worker_with_the_reason(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery, tmp_path, HELLO, "--load-delay", "0.05", "--fail-load", "bad weights 42"
        )
        await stack.wait_state(State.ERRORED)
        status = await stack.status()
        assert status["state"] == "errored"
        # The rule's words name the failure; the line itself (which may quote anything) is
        # only in the worker's own log.
        assert "model failed to load" in status["error_msg"]
        assert "bad weights 42" not in status["error_msg"]

        async def errored_refusal() -> dict[str, Any] | None:
            response = await stack.post("/generate", prompt(2))
            body: dict[str, Any] = response.json()
            return body if "state" in body else None

        body = await eventually(errored_refusal, what="a refusal naming the state")
        assert body["state"] == "errored"
        assert "model failed to load" in body["error"]
        assert "bad weights 42" not in body["error"]
        reports = stack.standin.reports
        report = await eventually(
            lambda: next((r for r in reports if r["error_msg"]), None), what="error report"
        )
        assert report["error_msg"] == status["error_msg"]
        assert report["loadtime"] == 0
        assert report["max_perf"] == 0


async def test_failed_benchmark_errors_the_worker(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery,
            tmp_path,
            HELLO,
            "--load-delay",
            "0.05",
            "--token-rate",
            "1000",
            "--error-rate",
            "1",
            benchmark_runs=2,
        )
        await stack.wait_state(State.ERRORED)
        body = await refusal(stack)
        assert "benchmark" in body["error"]
        assert "500" in body["error"]
        assert not list((tmp_path / "state").glob("benchmark-*.json"))


async def test_model_error_line_while_ready_is_confirmed_by_a_failed_health_check(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(GUARD):
        # Health checks time out, but the next periodic one is a minute away: only the check
        # the error line asks for can confirm it this soon.
        stack = await ready_stack(
            nursery, tmp_path, "--slow-health", "5", health_interval=60.0, health_timeout=0.2
        )
        await trio.sleep(0.1)  # the first periodic check (at entering ready) is done
        with stack.fake.log_path.open("a") as log:
            log.write("Exception: corrupted model file shard 3\n")
        await stack.wait_state(State.ERRORED)
        body = await refusal(stack)
        assert "corrupted model file" in body["error"]
        assert "shard 3" not in body["error"]
        assert "corrupted model file shard 3" in caplog.text  # the worker's own log has it


async def test_model_error_line_while_ready_and_healthy_keeps_it_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, health_interval=60.0)
        changes = record_changes(stack)
        with stack.fake.log_path.open("a") as log:
            log.write("Exception: corrupted model file shard 3\n")
            log.write("a later line\n")
        # The line is read, and a health check answered, well within a second.
        with trio.move_on_after(1.0):
            await stack.worker.watch.wait_leave(State.READY)
        assert changes.seen == []
        response = await stack.post("/generate", prompt(2))
        assert response.status_code == 200


async def test_model_server_restart_reloads_and_reports_loadtime_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(
            nursery,
            tmp_path,
            "--token-rate",
            "1000",
            max_perf=None,
        )
        assert (await stack.post("/generate", prompt(2))).status_code == 200
        changes = record_changes(stack)
        reports = stack.standin.reports
        await eventually(lambda: any(r["loadtime"] > 0 for r in reports), what="first loadtime")

        restarted_at = trio.current_time()
        await stack.restart_fake("--load-delay", "0.05", "--token-rate", "1000")
        await changes.wait_for(State.BENCHMARKING, State.READY)
        assert changes.seen == [
            (State.READY, State.LOADING),
            (State.LOADING, State.BENCHMARKING),
            (State.BENCHMARKING, State.READY),
        ]
        await eventually(
            lambda: len([r for r in reports if r["loadtime"] > 0]) == 2, what="second loadtime"
        )
        second = [r for r in reports if r["loadtime"] > 0][1]
        assert second["state"] == "ready"
        assert second["max_perf"] > 0
        # The new load is timed from the new log, not from the start of the worker.
        assert 0 < second["loadtime"] <= trio.current_time() - restarted_at


async def test_requests_right_after_a_model_server_restart_succeed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    seeded(tmp_path)
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery, tmp_path, HELLO, "--load-delay", "0.05", wait_ready=True, benchmark_runs=2
        )
        async with trio.open_nursery() as clients:  # leave a few idle connections in the pool
            for _ in range(3):
                clients.start_soon(stack.post, "/generate", prompt(5))
        changes = record_changes(stack)
        await stack.restart_fake()
        await changes.wait_for(State.BENCHMARKING, State.READY)
        for _ in range(3):
            response = await stack.post("/generate", prompt(2))
            assert response.status_code == 200, response.text


async def test_health_checks_after_a_model_server_restart_keep_the_worker_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    seeded(tmp_path)
    with trio.fail_after(GUARD):
        stack = await ready_stack(
            nursery,
            tmp_path,
            health_interval=0.3,
            health_failures=2,
            max_perf=None,
        )
        async with trio.open_nursery() as clients:  # eight idle connections in the pool
            for _ in range(8):
                clients.start_soon(stack.post, "/generate", prompt(5))
        changes = record_changes(stack)
        # While the model server is down (~0.5 s) the checks fail, and may error the worker:
        # rightly so. The restart must bring it back to ready, and keep it there.
        await stack.restart_fake()
        await changes.wait_for(State.BENCHMARKING, State.READY)
        with trio.move_on_after(1.5):  # five health checks against a healthy model server
            await stack.worker.watch.wait_leave(State.READY)
        assert stack.worker.lifecycle.current is State.READY, stack.worker.lifecycle.error_msg


async def test_failing_health_checks_error_the_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    seeded(tmp_path)
    with trio.fail_after(GUARD):
        stack = await ready_stack(
            nursery,
            tmp_path,
            "--slow-health",
            "5",
            health_interval=0.1,
            health_timeout=0.2,
            health_failures=2,
            max_perf=None,
        )
        changes = record_changes(stack)
        await stack.wait_state(State.ERRORED)
        assert changes.seen == [(State.READY, State.ERRORED)]
        status = await stack.status()
        assert "unhealthy" in status["error_msg"]
        assert "timed out" in status["error_msg"]
        body = await refusal(stack)
        assert body["state"] == "errored"
        assert "unhealthy" in body["error"]
        reports = stack.standin.reports
        await eventually(lambda: any("unhealthy" in r["error_msg"] for r in reports), what="report")


async def test_drain_deadline_cuts_requests_off(nursery: trio.Nursery, tmp_path: Path) -> None:
    seeded(tmp_path)
    with trio.fail_after(GUARD):
        stack = await ready_stack(
            nursery,
            tmp_path,
            "--token-rate",
            "50",
            drain_timeout=0.3,
            max_perf=None,
        )
        outcome: list[object] = []

        async def slow_client() -> None:
            try:
                outcome.append(await stack.post("/generate", prompt(1000)))
            except httpx.HTTPError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as clients:
            clients.start_soon(slow_client)
            await eventually(lambda: stack.worker.tracker.in_flight == 1, what="admitted")
            started = trio.current_time()
            stack.shutdown.set()
            await stack.wait_state(State.STOPPED)
            assert trio.current_time() - started < 5
        # The client got no answer: its request was cut off, not reported as a success.
        [result] = outcome
        assert isinstance(result, httpx.HTTPError), result
        stats = await eventually(
            lambda: _stats_if(stack, lambda s: s["in_flight"] == 0), what="upstream stopped"
        )
        assert stats["completed"] == 0


async def _stats_if(stack: Stack, check: Any) -> dict[str, int] | None:
    stats = await stack.stats()
    return stats if check(stats) else None


async def test_health_failures_of_a_replaced_model_server_do_not_count(
    nursery: trio.Nursery,
) -> None:
    """A restart that goes loading -> ready between two health checks (fast load, cached
    benchmark) starts the failure count afresh for the new model server."""
    checks = 0
    first_check = trio.Event()

    async def unhealthy(request: Request) -> Response:
        nonlocal checks
        checks += 1
        first_check.set()
        return Response.json({"status": "broken"}, status=500)

    lifecycle = Lifecycle(started_at=0.0)
    watch = LifecycleWatch(lifecycle)
    errored_after: list[int] = []
    lifecycle.subscribe(
        lambda change: errored_after.append(checks) if change.dest is State.ERRORED else None
    )
    lifecycle.fire(Trigger.MODEL_LOADED, now=0.0)
    lifecycle.fire(Trigger.BENCHMARK_DONE, now=0.0, max_perf=1.0)
    with trio.fail_after(GUARD):
        port: int = await nursery.start(HTTPServer(unhealthy).serve)
        async with UpstreamPool(host="127.0.0.1", port=port) as pool:
            checker = HealthChecker(
                upstream=pool, path="/health", lifecycle=lifecycle, interval=0.01, failures=2
            )
            await nursery.start(run_in_states, watch, Service.HEALTH_CHECKS, checker.run)
            await first_check.wait()
            # The model server restarts and is ready again before the next check.
            for trigger in (Trigger.MODEL_RESTARTED, Trigger.MODEL_LOADED, Trigger.BENCHMARK_DONE):
                lifecycle.fire(trigger, now=1.0, max_perf=1.0)
            reloaded_at = checks
            await watch.wait_state(State.ERRORED)
    assert errored_after == [reloaded_at + 2]
    assert "HTTP 500" in lifecycle.error_msg


async def test_a_load_that_never_ends_errors_the_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    seeded(tmp_path)
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery,
            tmp_path,
            "hello_world",
            "--load-delay",
            "60",
            load_timeout=0.5,
            benchmark_runs=2,
        )
        await stack.wait_state(State.ERRORED)
        error = stack.worker.lifecycle.error_msg
        assert "did not log its ready line within 0.5 s" in error
        assert "MODEL_LOG" in error
        # A new model server process starts a new load, with a fresh timeout.
        await stack.restart_fake("--load-delay", "0.05")
        await stack.wait_state(State.READY)
