"""The openai backend end to end: each fake flavour, the stand-in autoscaler and the worker; the
demo."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fakes import REPO_ROOT
from harness import Stack, start_stack

from backends.openai import make_backend, parse_chat
from pyworker import State

CHAT = {"messages": [{"role": "user", "content": "Tell me about rivers."}], "max_tokens": 5}
FAST = ("--load-delay", "0.2", "--token-rate", "5000")


async def _idle(stack: Stack) -> None:
    """Wait until the worker has closed the books on every request."""
    with trio.fail_after(5):
        while True:
            if not stack.worker.tracker.in_flight:
                return
            await trio.sleep(0.005)


def _last_finished(stack: Stack) -> float:
    finished = stack.worker.tracker._completions
    return finished[-1][1]


async def _events(stack: Stack, route: str, payload: object) -> list[tuple[float, bytes]]:
    """POST through the worker and collect (arrival time, event) of an SSE answer."""
    events: list[tuple[float, bytes]] = []
    buffer = b""
    envelope = stack.envelope(payload)
    async with stack.http.stream("POST", stack.url + route, json=envelope) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        async for chunk in response.aiter_raw():
            buffer += chunk
            *complete, buffer = buffer.split(b"\n\n")
            events.extend((trio.current_time(), event) for event in complete)
    assert buffer == b""
    return events


async def test_relay_and_actual_usage(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await start_stack(nursery, tmp_path, "openai", *FAST, wait_ready=True)
    # JSON: the answer's usage becomes the finished workload.
    response = await stack.post("/v1/chat/completions", CHAT)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    usage = answer["usage"]
    await _idle(stack)
    estimate = parse_chat(CHAT).workload
    actual = usage["prompt_tokens"] + usage["completion_tokens"]
    assert actual != estimate  # the fake's tokenizer differs from the estimate
    assert _last_finished(stack) == actual

    completion = {"prompt": "Once upon a time", "max_tokens": 3}
    response = await stack.post("/v1/completions", completion)
    assert response.json()["object"] == "text_completion"
    await _idle(stack)
    assert _last_finished(stack) == response.json()["usage"]["total_tokens"]

    # A stream without usage: relayed as is, finished with the estimate.
    stream = {**CHAT, "stream": True}
    events = await _events(stack, "/v1/chat/completions", stream)
    assert events[-1][1] == b"data: [DONE]"
    assert all(event.startswith(b"data: {") for _, event in events[:-1])
    assert b'"role":"assistant"' in events[0][1]
    await _idle(stack)
    assert _last_finished(stack) == parse_chat(stream).workload

    # With include_usage: the usage event is relayed and its figure recorded.
    asked = {**completion, "stream": True, "stream_options": {"include_usage": True}}
    events = await _events(stack, "/v1/completions", asked)
    usage_event = json.loads(events[-2][1].removeprefix(b"data: "))
    assert usage_event["choices"] == []
    await _idle(stack)
    assert _last_finished(stack) == usage_event["usage"]["total_tokens"]


@pytest.mark.parametrize("flavor", ["vllm", "llamacpp"])
async def test_a_model_that_stops_early_is_counted_at_its_usage(
    nursery: trio.Nursery, tmp_path: Path, flavor: str
) -> None:
    """The model stops at its end-of-sequence token after 3 of the 50 tokens asked: JSON
    answers and streams with usage count what the server reports; llama.cpp's streams count
    their timings even without usage; a vLLM stream without usage keeps its estimate."""
    stack = await start_stack(
        nursery, tmp_path, "openai", "--flavor", flavor, *FAST, "--eos-after", "3", wait_ready=True
    )
    chat = {**CHAT, "max_tokens": 50}
    estimate = parse_chat(chat).workload
    with trio.fail_after(30):
        response = await stack.post("/v1/chat/completions", chat)
        answer = response.json()
        assert answer["choices"][0]["finish_reason"] == "stop"
        actual = answer["usage"]["prompt_tokens"] + 3
        assert answer["usage"]["completion_tokens"] == 3
        await _idle(stack)
        assert _last_finished(stack) == actual
        assert actual < estimate

        asked = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        events = await _events(stack, "/v1/chat/completions", asked)
        assert json.loads(events[-2][1].removeprefix(b"data: "))["usage"]["completion_tokens"] == 3
        await _idle(stack)
        assert _last_finished(stack) == actual

        events = await _events(stack, "/v1/chat/completions", {**chat, "stream": True})
        last = json.loads(events[-2][1].removeprefix(b"data: "))
        assert "usage" not in last  # nothing asked of the server for the client
        await _idle(stack)
        if flavor == "llamacpp":
            timings = last["timings"]
            assert timings["cache_n"] + timings["prompt_n"] + timings["predicted_n"] == actual
            assert _last_finished(stack) == actual
        else:
            assert _last_finished(stack) == estimate


async def test_stream_is_relayed_as_generated(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await start_stack(nursery, tmp_path, "openai", *FAST, wait_ready=True)
    # 1,000 tokens at 5,000 a second: a fifth of a second of generation.
    payload = {"prompt": "hi", "max_tokens": 1000, "stream": True}
    events = await _events(stack, "/v1/completions", payload)
    tokens = [at for at, event in events if b'"finish_reason":null' in event]
    assert len(tokens) == 1000
    # Spread over the generation, not delivered in one burst at the end.
    assert tokens[-1] - tokens[0] > 0.1


async def test_payload_errors_are_422(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await start_stack(nursery, tmp_path, "openai", *FAST, wait_ready=True)
    response = await stack.post(
        "/v1/chat/completions", {"messages": [{"role": "user"}], "max_tokens": 0, "top_p": 2}
    )
    assert response.status_code == 422
    assert response.json() == {
        "payload": {
            "messages": {"0": {"content": "missing parameter"}},
            "max_tokens": "must be at least 1",
            "top_p": "must be at most 1",
        }
    }
    response = await stack.post("/v1/completions", {"prompt": None, "n": "2"})
    assert response.json() == {
        "payload": {"prompt": "missing parameter", "n": "must be an integer, not string"}
    }


async def test_model_server_errors_are_relayed(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await start_stack(nursery, tmp_path, "openai", *FAST, wait_ready=True)
    # Valid for the worker, refused by vLLM (unknown model): its error comes through as is.
    response = await stack.post("/v1/completions", {"prompt": "x", "model": "nope"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "NotFoundError"


SGLANG = make_backend({"OPENAI_SERVER": "sglang"})
"""The backend as ``OPENAI_SERVER=sglang`` makes it."""


async def test_sglang_ready_only_after_warmup(nursery: trio.Nursery, tmp_path: Path) -> None:
    stack = await start_stack(
        nursery, tmp_path, "openai", "--flavor", "sglang", *FAST, "--warmup", "0.6", backend=SGLANG
    )
    logs_at_loaded: list[str] = []

    def on_change(change: Any) -> None:
        if change.dest is State.BENCHMARKING:
            logs_at_loaded.append(stack.fake.log_text())

    stack.worker.lifecycle.subscribe(on_change)
    await stack.wait_state(State.READY)
    # By the time the worker took the model as loaded, SGLang had finished warming up.
    assert len(logs_at_loaded) == 1
    assert "Application startup complete." in logs_at_loaded[0]
    assert "The server is fired up and ready to roll!" in logs_at_loaded[0]
    response = await stack.post("/v1/chat/completions", CHAT)
    assert response.status_code == 200
    assert (await stack.http.get(stack.url + "/healthcheck")).status_code == 200


async def test_llamacpp_ready_from_its_listening_line(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    stack = await start_stack(nursery, tmp_path, "openai", "--flavor", "llamacpp", *FAST)
    logs_at_loaded: list[str] = []

    def on_change(change: Any) -> None:
        if change.dest is State.BENCHMARKING:
            logs_at_loaded.append(stack.fake.log_text())

    stack.worker.lifecycle.subscribe(on_change)
    await stack.wait_state(State.READY)
    assert "server is listening on" in logs_at_loaded[0]
    events = await _events(stack, "/v1/chat/completions", {**CHAT, "stream": True})
    assert events[-1][1] == b"data: [DONE]"
    assert b'"timings"' in events[-2][1]


@pytest.mark.parametrize(
    ("flavor", "knob", "reason"),
    [
        ("vllm", "--fail-load", "CUDA out of memory"),
        ("llamacpp", "--fail-load", "exiting due to model loading error"),
        ("sglang", "--fail-warmup", "Initialization failed. warmup error"),
    ],
)
async def test_fatal_lines_mark_the_worker_errored(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flavor: str,
    knob: str,
    reason: str,
) -> None:
    # Under "auto" the worker would already be benchmarking when SGLang's warm-up fails.
    backend = SGLANG if flavor == "sglang" else None
    stack = await start_stack(
        nursery,
        tmp_path,
        "openai",
        "--flavor",
        flavor,
        "--load-delay",
        "0",
        knob,
        "no luck",
        backend=backend,
    )
    await stack.wait_state(State.ERRORED)
    assert reason in stack.worker.lifecycle.error_msg


async def test_client_disconnect_reaches_the_model_server(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    stack = await start_stack(
        nursery, tmp_path, "openai", *FAST, "--max-model-len", "1000000", wait_ready=True
    )
    payload = {**CHAT, "max_tokens": 100_000, "stream": True}
    async with httpx.AsyncClient(base_url=stack.fake.url, trust_env=False) as fake:
        # The benchmark may still be winding down its abandoned requests: start from a
        # quiet model server.
        with trio.fail_after(5):
            while True:
                before = (await fake.get("/stats")).json()
                if not before["in_flight"]:
                    break
                await trio.sleep(0.01)
    with trio.CancelScope() as drop:
        envelope = stack.envelope(payload)
        async with stack.http.stream(
            "POST", stack.url + "/v1/chat/completions", json=envelope
        ) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                if b"content" in chunk:
                    drop.cancel()
    assert drop.cancelled_caught
    async with httpx.AsyncClient(base_url=stack.fake.url, trust_env=False) as fake:
        with trio.fail_after(5):
            while True:
                stats = (await fake.get("/stats")).json()
                if stats["cancelled"] > before["cancelled"] and not stats["in_flight"]:
                    break
                await trio.sleep(0.01)
    assert stats["tokens_generated"] - before["tokens_generated"] < 100_000
    await _idle(stack)
    assert stack.worker.tracker.in_flight == 0


# -- the demo --------------------------------------------------------------------------------
async def _read_line(process: trio.Process, buffer: bytearray) -> str:
    assert process.stdout is not None
    while b"\n" not in buffer:
        data = await process.stdout.receive_some(4096)
        if not data:
            raise EOFError(f"demo exited; output so far: {bytes(buffer)!r}")
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_demo_reaches_ready_and_its_command_works(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(PYWORKER_STATE_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    for name in ("MODEL_LOG", "REPORT_ADDR", "BACKEND"):
        env.pop(name, None)
    command = [sys.executable, "-m", "pyworker", "--backend", "openai", "--demo", "--port", "0"]
    process = await trio.lowlevel.open_process(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        buffer = bytearray()
        with trio.fail_after(30):
            while "ready. Send a signed request" not in await _read_line(process, buffer):
                pass
            client_command = (await _read_line(process, buffer)).strip()
        assert " /v1/chat/completions " in client_command
        result = await trio.run_process(
            shlex.split(client_command), cwd=REPO_ROOT, env=env, capture_stdout=True, check=False
        )
        assert result.returncode == 0, result.stdout
        answer = json.loads(result.stdout)
        assert answer["object"] == "chat.completion"
        assert answer["usage"]["completion_tokens"] == 32  # the demo's short example
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
    assert process.returncode == 0
