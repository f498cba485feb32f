"""The fake OpenAI-compatible servers (vLLM, SGLang, llama.cpp flavors), run as subprocesses,
answering: vLLM's JSON answers, streams and errors; in every flavor a client leaving, injected
errors, an end of sequence before the tokens asked for, and the request log quoting a prompt;
llama.cpp going silent mid-stream, and its timings. Starting, and failing to start, are in
``test_fake_openai_startup.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fakes import (
    OPENAI_CHAT,
    OPENAI_FAKE,
    OPENAI_MODEL,
    OPENAI_READY,
    FakeServer,
    close_when_cancelled,
    openai_events,
    openai_fast,
    poll_stats,
    start_fake,
)

from backends.openai import Settings, backend_for
from pyworker import LogAction, estimate_tokens


# Every wait is bounded (httpx timeouts, start_fake's own bound, fail_after around polling),
# so a misbehaving fake fails its test instead of hanging the run.
async def _start(
    nursery: trio.Nursery, tmp_path: Path, flavor: str, *args: str
) -> tuple[FakeServer, httpx.AsyncClient]:
    fake = await start_fake(
        nursery,
        OPENAI_FAKE,
        *openai_fast(flavor),
        "--token-rate",
        "2000",
        *args,
        log_path=tmp_path / "f.log",
    )
    if flavor != "vllm":
        # SGLang warms up and llama.cpp loads after listening: wait for the ready line.
        await fake.wait_for_log(OPENAI_READY[flavor])
    client = httpx.AsyncClient(base_url=fake.url, timeout=5.0, trust_env=False)
    nursery.start_soon(close_when_cancelled, client)
    return fake, client


# -- vLLM --------------------------------------------------------------------------------------
async def test_vllm_json_answers(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, client = await _start(nursery, tmp_path, "vllm")
    prompt = "The capital of France is"
    completion = (await client.post("/v1/completions", json={"prompt": prompt})).json()
    assert completion["id"].startswith("cmpl-")
    assert completion["object"] == "text_completion"
    assert completion["model"] == OPENAI_MODEL
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["stop_reason"] is None
    assert len(choice["text"].split()) == 16  # vLLM's completions default
    # The fake's tokenizer adds a BOS token to the estimate.
    assert completion["usage"] == {
        "prompt_tokens": estimate_tokens(prompt) + 1,
        "total_tokens": estimate_tokens(prompt) + 17,
        "completion_tokens": 16,
        "prompt_tokens_details": None,
    }
    chat = (await client.post("/v1/chat/completions", json={**OPENAI_CHAT, "n": 2})).json()
    assert chat["id"].startswith("chatcmpl-")
    assert chat["object"] == "chat.completion"
    assert [c["index"] for c in chat["choices"]] == [0, 1]
    message = chat["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert len(message["content"].split()) == 4
    usage = chat["usage"]
    # BOS + assistant header (5) + one message of 5 template tokens + its text.
    assert usage["prompt_tokens"] == 5 + 5 + estimate_tokens("Say hello to the world.")
    assert usage["completion_tokens"] == 8  # n=2 choices of 4
    tokens = await client.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5]], "n": 2})
    assert tokens.json()["usage"]["prompt_tokens"] == 5
    assert tokens.json()["usage"]["completion_tokens"] == 2 * 2 * 16


async def test_vllm_streams(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, client = await _start(nursery, tmp_path, "vllm")
    body = {**OPENAI_CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    payloads = openai_events(response.content)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:5]]
    assert all(t.startswith(" ") for t in tokens)
    finish = chunks[5]["choices"][0]
    assert finish["finish_reason"] == "length"
    assert finish["delta"] == {"content": ""}
    assert chunks[6]["choices"] == []
    assert chunks[6]["usage"]["completion_tokens"] == 4
    assert len(chunks) == 7
    # No usage event unless asked for; completions stream text.
    plain = await client.post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True}
    )
    chunks = [json.loads(p) for p in openai_events(plain.content)[:-1]]
    assert [c["object"] for c in chunks] == ["text_completion"] * 4
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # continuous_usage_stats: the running usage on every event.
    options = {"include_usage": True, "continuous_usage_stats": True}
    running = await client.post(
        "/v1/completions",
        json={"prompt": "hi", "max_tokens": 3, "stream": True, "stream_options": options},
    )
    chunks = [json.loads(p) for p in openai_events(running.content)[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 3, 3]


async def test_vllm_errors(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, client = await _start(nursery, tmp_path, "vllm", "--max-model-len", "64")
    bad = await client.post("/v1/chat/completions", json={**OPENAI_CHAT, "max_tokens": 0})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("BadRequestError", 400)
    unknown = await client.post("/v1/completions", json={"prompt": "x", "model": "other"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "NotFoundError"
    assert "`other` does not exist" in unknown.json()["error"]["message"]
    options = await client.post(
        "/v1/completions", json={"prompt": "x", "stream_options": {"include_usage": True}}
    )
    assert options.status_code == 400
    too_long = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 100})
    assert too_long.status_code == 400
    assert "maximum context length is 64 tokens" in too_long.json()["error"]["message"]
    not_json = await client.post("/v1/completions", content=b"{nope")
    assert not_json.status_code == 400
    missing = await client.get("/nowhere")
    assert missing.status_code == 404


# -- every flavor ------------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", ["vllm", "sglang", "llamacpp"])
async def test_disconnect_aborts_generation(
    nursery: trio.Nursery, tmp_path: Path, flavor: str
) -> None:
    fake, client = await _start(nursery, tmp_path, flavor, "--token-rate", "50")
    body = {**OPENAI_CHAT, "max_tokens": 1000, "stream": True}
    seen = 0
    # Cancelling, not breaking out of the loop: a break leaves httpx's nested async
    # generators to the garbage collector.
    with trio.CancelScope() as drop:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    drop.cancel()
    # A JSON answer is abandoned the same way.
    with trio.move_on_after(0.2):
        await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1000})
    stats = await poll_stats(client, "cancelled", 2)
    assert stats["in_flight"] == 0
    assert stats["completed"] == 0
    assert stats["tokens_generated"] < 1000
    abort = {
        "vllm": "Aborted request chatcmpl-",
        "sglang": "Abort request",
        "llamacpp": "cancel task",
    }
    assert abort[flavor] in fake.log_text()


@pytest.mark.parametrize("flavor", ["vllm", "sglang", "llamacpp"])
async def test_injected_errors_use_the_flavors_shape(
    nursery: trio.Nursery, tmp_path: Path, flavor: str
) -> None:
    _, client = await _start(nursery, tmp_path, flavor, "--error-rate", "1")
    response = await client.post("/v1/chat/completions", json=OPENAI_CHAT)
    assert response.status_code == 500
    body: dict[str, Any] = response.json()
    if flavor == "vllm":
        assert body["error"]["type"] == "InternalServerError"
    elif flavor == "sglang":
        assert body["object"] == "error"
        assert body["code"] == 500
    else:
        assert body["error"] == {"code": 500, "message": "injected failure", "type": "server_error"}


@pytest.mark.parametrize("flavor", ["vllm", "sglang", "llamacpp"])
async def test_eos_after_stops_every_choice_early_unless_ignore_eos(
    nursery: trio.Nursery, tmp_path: Path, flavor: str
) -> None:
    """``--eos-after``: the model's end-of-sequence token comes early; ``ignore_eos`` (which
    these servers honour) generates all that was asked. Usage says what was generated."""
    _, client = await _start(nursery, tmp_path, flavor, "--eos-after", "2")
    chat = {**OPENAI_CHAT, "max_tokens": 6, "n": 2}
    stopped = (await client.post("/v1/chat/completions", json=chat)).json()
    assert [c["finish_reason"] for c in stopped["choices"]] == ["stop", "stop"]
    assert stopped["usage"]["completion_tokens"] == 2 * 2
    forced = (await client.post("/v1/chat/completions", json={**chat, "ignore_eos": True})).json()
    assert forced["choices"][0]["finish_reason"] == "length"
    assert forced["usage"]["completion_tokens"] == 2 * 6
    short = (await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})).json()
    assert short["choices"][0]["finish_reason"] == "length"  # asked for fewer: as asked
    body = {"prompt": "hi", "max_tokens": 6, "stream": True}
    chunks = [
        json.loads(c)
        for c in openai_events((await client.post("/v1/completions", json=body)).content)[:-1]
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    stats = await poll_stats(client, "completed", 4)
    assert stats["tokens_generated"] == 4 + 12 + 1 + 2


_ALARMING = (
    "torch.OutOfMemoryError: CUDA out of memory.\nTraceback (most recent call last):\n"
    "Error: ShardFailed\nThe server is fired up and ready to roll! server is listening on "
)


@pytest.mark.parametrize("flavor", ["vllm", "sglang", "llamacpp"])
async def test_logged_requests_quote_the_prompt_and_mean_nothing(
    nursery: trio.Nursery, tmp_path: Path, flavor: str
) -> None:
    fake, client = await _start(nursery, tmp_path, flavor, "--log-requests")
    chat = {"messages": [{"role": "user", "content": _ALARMING}], "max_tokens": 2}
    assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
    completion = {"prompt": [_ALARMING, "two"], "max_tokens": 2, "stop": [_ALARMING]}
    assert (await client.post("/v1/completions", json=completion)).status_code == 200
    lines = fake.log_text().splitlines()
    quoting = [line for line in lines if "CUDA out of memory" in line]
    first = {
        "vllm": "Received request chatcmpl-",
        "sglang": "Receive: obj=GenerateReqInput(text='<|begin_of_text|>",
        "llamacpp": 'srv  log_server_r: request:  {"messages":',
    }[flavor]
    assert first in quoting[0]
    assert len(quoting) == {"vllm": 2 + 1, "sglang": 2, "llamacpp": 2}[flavor]
    backend = backend_for(Settings(server=flavor))
    assert [backend.classify(line) for line in quoting] == [None] * len(quoting)
    ready = [
        line
        for line in lines
        if (rule := backend.classify(line))
        and rule.action
        in (
            LogAction.MODEL_LOADED,
            LogAction.MODEL_ERROR,
        )
    ]
    assert len(ready) == 1
    assert OPENAI_READY[flavor] in ready[0]


# -- llama.cpp ---------------------------------------------------------------------------------
async def test_hang_after_keeps_the_connection_open(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, client = await _start(nursery, tmp_path, "llamacpp", "--hang-after", "3")
    tokens = 0
    body = {**OPENAI_CHAT, "max_tokens": 10, "stream": True}
    with trio.CancelScope() as scope:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                tokens += '"content":" ' in line
                if tokens == 3:
                    # Three tokens, then silence on an open connection.
                    scope.deadline = trio.current_time() + 0.3
    assert scope.cancelled_caught
    assert tokens == 3
    await poll_stats(client, "cancelled", 1)


async def test_llamacpp_timings_end_its_streams(nursery: trio.Nursery, tmp_path: Path) -> None:
    """llama.cpp's ``timings`` (with ``cache_n``, as builds since 2025 send) are on the last
    event: the finish event, or the usage event when the client asked for usage."""
    _, client = await _start(nursery, tmp_path, "llamacpp")
    body = {**OPENAI_CHAT, "stream": True}
    plain = [
        json.loads(c)
        for c in openai_events((await client.post("/v1/chat/completions", json=body)).content)[:-1]
    ]
    assert "timings" in plain[-1]
    assert "usage" not in plain[-1]
    assert all("timings" not in c for c in plain[:-1])
    timings = plain[-1]["timings"]
    assert timings["cache_n"] == 0
    assert timings["predicted_n"] == 4
    body["stream_options"] = {"include_usage": True}
    asked = [
        json.loads(c)
        for c in openai_events((await client.post("/v1/chat/completions", json=body)).content)[:-1]
    ]
    assert asked[-1]["choices"] == []
    assert asked[-1]["usage"]["prompt_tokens"] == timings["cache_n"] + timings["prompt_n"]
    assert "timings" in asked[-1]
    assert all("timings" not in c for c in asked[:-1])
