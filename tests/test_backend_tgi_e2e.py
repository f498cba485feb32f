"""The tgi backend end to end: a fake TGI process, the stand-in autoscaler and the worker."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from fakes import REPO_ROOT
from harness import Stack, eventually, start_stack

from pyworker import State, Trigger
from pyworker._machine import StateChange
from pyworker._tokens import estimate_tokens

PROMPT = "What is deep learning?"


def _sse(raw: bytes) -> list[dict[str, Any]]:
    """TGI's framing, relayed untouched: ``data:`` without a space, no ``[DONE]``."""
    assert raw.endswith(b"\n\n")
    blocks = raw[:-2].split(b"\n\n")
    assert all(block.startswith(b"data:{") for block in blocks), blocks
    return [json.loads(block.removeprefix(b"data:")) for block in blocks]


async def _finished_workload(stack: Stack) -> float:
    """The workload the tracker recorded for the last finished request, once it is recorded.

    The client can have its whole answer a moment before the worker's bookkeeping runs.
    """
    tracker = stack.worker.tracker
    with trio.fail_after(5):
        while True:
            if not tracker.in_flight and tracker._completions:
                return tracker._completions[-1][1]
            await trio.sleep(0.005)


async def _stats(stack: Stack) -> dict[str, int]:
    stats: dict[str, int] = (await stack.http.get(stack.fake.url + "/stats")).json()
    return stats


async def test_json_and_stream_relay_with_errors_and_actual_workload(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    stack = await start_stack(nursery, tmp_path, "tgi", "--load-delay", "0", "--token-rate", "5000")
    await stack.wait_state(State.READY)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True}}
    answer = await stack.post("/generate", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["details"]["generated_tokens"] == 6
    assert answer.headers["x-generated-tokens"] == "6"  # TGI's headers are relayed
    # TGI's headers count the tokens: the actual workload (the estimate too, as it happens:
    # the fake's tokenizer is the estimate, and the model generated all it was asked for).
    assert await _finished_workload(stack) == int(answer.headers["x-prompt-tokens"]) + 6

    streamed = await stack.post("/generate_stream", body)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "text/event-stream"
    events = _sse(streamed.content)
    assert [e["index"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[-1]["generated_text"] == answer.json()["generated_text"]
    details = events[-1]["details"]
    # The stream's last event reports TGI's own counts: they are the actual workload.
    actual = await _finished_workload(stack)
    assert actual == details["input_length"] + details["generated_tokens"]

    # TGI's own refusals inside a stream arrive as one event under HTTP 200, relayed as is.
    too_long = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5000}}
    refused = await stack.post("/generate_stream", too_long)
    assert refused.status_code == 200
    [event] = _sse(refused.content)
    assert event["error_type"] == "validation"
    assert event["error"].startswith("Input validation error: `inputs` tokens + `max_new_tokens`")
    as_json = await stack.post("/generate", too_long)
    assert as_json.status_code == 422
    assert as_json.json()["error_type"] == "validation"

    # The worker's own checks name each bad field, nested under payload and parameters.
    bad = await stack.post(
        "/generate_stream",
        {"inputs": PROMPT, "parameters": {"max_new_tokens": 0, "best_of": 2, "top_p": 1}},
    )
    assert bad.status_code == 422
    assert bad.json() == {
        "payload": {
            "parameters": {
                "max_new_tokens": "must be at least 1",
                "best_of": "must be 1 or null when streaming",
                "top_p": "must be greater than 0 and less than 1",
            }
        }
    }
    assert (await stack.post("/generate", {"prompt": "hi"})).json() == {
        "payload": {"inputs": "missing parameter"}
    }


async def test_a_model_that_stops_early_is_counted_at_what_tgi_reports(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The fake ends every answer with its end-of-sequence token at the third token, asked
    for 20: each route counts what TGI says it did, never the estimate's 20."""
    stack = await start_stack(
        nursery, tmp_path, "tgi", "--load-delay", "0", "--token-rate", "5000", "--eos-after", "3"
    )
    await stack.wait_state(State.READY)
    estimate = estimate_tokens(PROMPT)
    plain = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20}}
    detailed = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20, "details": True}}
    with trio.fail_after(30):
        # JSON, without details: the headers count.
        answer = await stack.post("/generate", plain)
        assert "details" not in answer.json()
        assert answer.headers["x-generated-tokens"] == "3"
        prompt_tokens = int(answer.headers["x-prompt-tokens"])
        assert await _finished_workload(stack) == prompt_tokens + 3
        # A stream with details: TGI's counts, in its last event.
        events = _sse((await stack.post("/generate_stream", detailed)).content)
        assert events[-1]["details"]["generated_tokens"] == 3
        assert await _finished_workload(stack) == events[-1]["details"]["input_length"] + 3
        # A stream without: the prompt's estimate and the tokens TGI streamed.
        events = _sse((await stack.post("/generate_stream", plain)).content)
        assert [e["index"] for e in events] == [1, 2, 3]
        assert events[-1]["details"] is None  # nothing was asked of TGI for the client
        assert await _finished_workload(stack) == estimate + 3
        # Several sequences: the headers count the best alone, so the estimate stands.
        best_of = {
            "inputs": PROMPT,
            "parameters": {"max_new_tokens": 20, "best_of": 2, "do_sample": True},
        }
        assert (await stack.post("/generate", best_of)).status_code == 200
        assert await _finished_workload(stack) == (estimate + 20) * 2
        # TGI's refusal inside a stream (HTTP 200): received, but no work done at all.
        tracker = stack.worker.tracker
        before = tracker.totals(trio.current_time())
        refused = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5000}}
        [event] = _sse((await stack.post("/generate_stream", refused)).content)
        assert event["error_type"] == "validation"
        await eventually(lambda: not tracker.in_flight)
        after = tracker.totals(trio.current_time()) - before
        assert (after.completed, after.completed_estimated, after.accepted) == (0, 0, 1)


async def test_the_benchmark_measures_what_a_model_that_stops_early_did(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """TGI cannot ignore its end-of-sequence token, so its benchmark answers may stop early
    (here at 16 of the 128 tokens asked): measured by TGI's counts, the capacity reads the
    fake's truth, 4000 tokens a second at most, where the estimates would read far more."""
    stack = await start_stack(
        nursery,
        tmp_path,
        "tgi",
        "--load-delay",
        "0",
        "--token-rate",
        "1000",
        "--capacity",
        "4000",
        "--eos-after",
        "16",
        benchmark_runs=8,
    )
    await stack.wait_state(State.READY)
    # Never above the fake's truth (the estimates would read five times more); below it only
    # as far as a busy machine slows the fake down.
    assert 1000 < stack.worker.lifecycle.max_perf <= 4000 * 1.15


async def test_stream_arrives_as_generated_and_a_dropped_client_cancels_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The benchmark's 128-token requests finish; the test's request hangs after 200 tokens.
    stack = await start_stack(
        nursery, tmp_path, "tgi", "--load-delay", "0", "--token-rate", "5000", "--hang-after", "200"
    )
    await stack.wait_state(State.READY)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 1000}}
    events = 0
    with trio.fail_after(10), trio.CancelScope() as drop:
        async with stack.http.stream(
            "POST", stack.url + "/generate_stream", json=stack.envelope(body)
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    events += 1
                if events == 200:
                    # Every token so far has arrived while the answer is not over (it never
                    # will be): relayed as generated. The request weighs what it may cost.
                    assert stack.worker.tracker.in_flight == 1
                    assert stack.worker.tracker.pending_workload == estimate_tokens(PROMPT) + 1000
                    drop.cancel()
    assert events == 200
    with trio.fail_after(5):
        while True:
            if (await _stats(stack))["cancelled"] >= 1:
                break
            await trio.sleep(0.02)
    assert stack.worker.tracker.in_flight == 0
    assert stack.worker.tracker.pending_workload == 0


async def test_the_old_connected_line_also_means_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A fake that never gets to its own "Connected": the test writes TGI 2.0's line instead.
    stack = await start_stack(nursery, tmp_path, "tgi", "--load-delay", "60")
    triggers: list[Trigger] = []

    def record(change: StateChange) -> None:
        triggers.append(change.trigger)

    stack.worker.lifecycle.subscribe(record)
    with trio.fail_after(10):
        await stack.fake.wait_for_log("Starting check and download process")
    old = (
        '{"timestamp":"2024-03-01T10:00:30.001Z","level":"INFO","message":"Connected",'
        '"target":"text_generation_router","filename":"router/src/main.rs","line_number":442}'
    )
    with stack.fake.log_path.open("a", encoding="utf-8") as log:
        log.write(old + "\n")
    with trio.fail_after(10):
        await stack.worker.watch.wait_leave(State.LOADING)
    assert triggers[0] is Trigger.MODEL_LOADED


async def test_a_fatal_line_marks_the_worker_errored_with_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    stack = await start_stack(
        nursery, tmp_path, "tgi", "--load-delay", "0", "--fail-load", "DownloadError"
    )
    await stack.wait_state(State.ERRORED)
    assert "Error: DownloadError" in stack.worker.lifecycle.error_msg
    refused = await stack.post("/generate", {"inputs": PROMPT})
    assert refused.status_code == 503
    assert "Error: DownloadError" in refused.json()["error"]


async def test_demo_reaches_ready_and_serves_its_printed_command(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYWORKER_STATE_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        # A quicker fake than the demo's default (a GPU's pace): the benchmark saturates it at
        # once instead of ramping up for ten seconds.
        "TGI_FAKE_ARGS": "--load-delay 0.2 --token-rate 2000 --capacity 8000",
    }
    with (tmp_path / "demo.err").open("wb") as stderr:
        demo = await trio.lowlevel.open_process(
            [sys.executable, "-m", "pyworker", "--backend", "tgi", "--demo", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=env,
        )
    assert demo.stdout is not None  # stdout=PIPE
    try:
        buffer = b""
        with trio.fail_after(60):
            while b"pyworker.client" not in buffer:
                chunk = await demo.stdout.receive_some()
                assert chunk, f"demo exited early:\n{buffer.decode()}"
                buffer += chunk
            while not buffer.endswith(b"\n"):
                buffer += await demo.stdout.receive_some()
        line = next(x for x in buffer.decode().splitlines() if "pyworker.client" in x)
        argv = shlex.split(line)
        client_args = argv[argv.index("pyworker.client") + 1 :]
        with trio.fail_after(60):
            sent = await trio.run_process(
                [sys.executable, "-m", "pyworker.client", *client_args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=REPO_ROOT,
                env=env,
            )
        assert sent.returncode == 0, sent.stderr.decode()
        answer = json.loads(sent.stdout)
        assert isinstance(answer["generated_text"], str)
        assert answer["generated_text"]
        demo.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await demo.wait() == 0
    finally:
        if demo.returncode is None:
            demo.kill()
            with trio.CancelScope(shield=True):
                await demo.wait()
        await demo.stdout.aclose()
