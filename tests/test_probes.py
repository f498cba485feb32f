"""Probe requests over real processes: an answer is proof the model works, whatever its log
or its health checks said before."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio
from harness import ready_stack, seed_benchmark, start_stack

from pyworker import State, load_backend
from pyworker._probe import Backoff

GUARD = 30


def prompt(tokens: int) -> dict[str, object]:
    return {"prompt": "hi", "max_response_tokens": tokens}


def test_backoff_doubles_to_its_maximum_and_resets() -> None:
    backoff = Backoff(initial=10.0, maximum=35.0)
    assert [backoff.next() for _ in range(4)] == [10.0, 20.0, 35.0, 35.0]
    backoff.reset()
    assert backoff.next() == 10.0


async def test_a_log_replaced_under_a_running_model_is_caught_by_a_probe(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, probe_interval=0.2)
        # logrotate's copytruncate, or an operator's mistake: a new, empty log, while the same
        # model server keeps serving. No ready line will ever come.
        log_path = stack.fake.log_path
        os.replace(log_path, log_path.with_name(log_path.name + ".old"))
        log_path.touch()
        await stack.wait_state(State.LOADING)
        await stack.wait_state(State.READY)
        assert (await stack.post("/generate", prompt(3))).status_code == 200


async def test_a_model_that_never_logs_its_ready_line_is_loaded_by_a_probe(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Measured already (the benchmark is not what this test is about).
    seed_benchmark(tmp_path / "state", load_backend("hello_world"), max_perf=1000.0, runs=2)
    with trio.fail_after(GUARD):
        # The worker reads a file the model server does not write (a wrong MODEL_LOG).
        stack = await start_stack(
            nursery,
            tmp_path,
            "hello_world",
            "--load-delay",
            "0.05",
            model_log=tmp_path / "elsewhere.log",
            probe_interval=0.2,
            benchmark_runs=2,
        )
        await stack.wait_state(State.BENCHMARKING)
        await stack.wait_state(State.READY)
        assert (await stack.post("/generate", prompt(3))).status_code == 200


async def test_a_dead_model_errors_the_worker_at_its_first_failed_request(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # Health checks a minute apart: only the failed request can tell the worker so soon.
        stack = await ready_stack(nursery, tmp_path, health_interval=60.0, probe_interval=60.0)
        await stack.fake.aclose()  # the model server dies; no restart yet
        response = await stack.post("/generate", prompt(3))
        assert response.status_code == 502
        await stack.wait_state(State.ERRORED)
        refused = await stack.post("/generate", prompt(3))
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert "model server failing requests" in refused.json()["error"]


async def test_an_errored_worker_recovers_when_its_model_answers_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # The model freezes with nothing in flight: the watchdog has nothing to watch, and the
        # health checks error the worker. Then it comes back, with no new log or ready line.
        stack = await ready_stack(
            nursery,
            tmp_path,
            request_speed=100.0,
            health_interval=0.1,
            health_timeout=0.2,
            health_failures=2,
            probe_interval=0.2,
        )
        stack.fake.process.send_signal(signal.SIGSTOP)
        try:
            await stack.wait_state(State.ERRORED)
        finally:
            stack.fake.process.send_signal(signal.SIGCONT)
        await stack.wait_state(State.BENCHMARKING)
        await stack.wait_state(State.READY)
        assert (await stack.post("/generate", prompt(3))).status_code == 200
        assert stack.worker.lifecycle.error_msg == ""
