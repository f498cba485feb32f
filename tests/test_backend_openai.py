"""The openai backend: payload checks, workload, usage, log rules; end to end with the fakes."""

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
from hypothesis import given
from hypothesis import strategies as st

from backends.openai import (
    SERVERS,
    Settings,
    backend_for,
    log_rules,
    make_backend,
    observe_usage,
    observe_usage_or_timings,
    parse_chat,
    parse_completion,
)
from pyworker import LogAction, PayloadError, State, estimate_tokens

CHAT = {"messages": [{"role": "user", "content": "Tell me about rivers."}], "max_tokens": 5}
SHAPES = "a string, a list of strings, a list of token ids or a list of token id lists"
FAST = ("--load-delay", "0.2", "--token-rate", "5000")


def _errors(parse: Any, payload: object) -> Any:
    with pytest.raises(PayloadError) as caught:
        parse(payload)
    return caught.value.errors


# -- payloads and workload -------------------------------------------------------------------
def test_completion_workload_per_prompt_shape() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    assert parse_completion({"prompt": text}).workload == estimate_tokens(text) + 16
    batch = parse_completion({"prompt": [text, "hi"], "max_tokens": 10, "n": 3})
    assert batch.workload == estimate_tokens(text) + 1 + 2 * 3 * 10
    assert parse_completion({"prompt": [1, 2, 3, 4], "max_tokens": 2}).workload == 4 + 2
    ids = parse_completion({"prompt": [[1, 2, 3], [4]], "max_tokens": 2})
    assert ids.workload == 4 + 2 * 2
    configured = Settings(default_max_tokens=100)
    assert parse_completion({"prompt": [7]}, configured).workload == 101


def test_completion_body_is_forwarded_untouched() -> None:
    payload = {"prompt": "x", "max_tokens": 3, "top_k": 5, "ignore_eos": True, "vendor": [1]}
    job = parse_completion(payload)
    assert job.upstream_path == "/v1/completions"
    assert json.loads(job.body) == payload


def test_chat_workload() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        },
    ]
    prompt = 3 + (4 + estimate_tokens("Be brief.")) + (4 + estimate_tokens("What is this?") + 256)
    assert parse_chat({"messages": messages, "max_tokens": 7}).workload == prompt + 7
    # max_completion_tokens wins over max_tokens; n multiplies the answer.
    both = {"messages": messages, "max_tokens": 7, "max_completion_tokens": 9, "n": 2}
    assert parse_chat(both).workload == prompt + 18
    assert parse_chat({"messages": messages}).workload == prompt + 256
    assert parse_chat({"messages": messages}, Settings(default_chat_max_tokens=1)).workload == (
        prompt + 1
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with_tools = parse_chat({"messages": messages, "max_tokens": 7, "tools": tools})
    assert with_tools.workload > prompt + 7
    job = parse_chat({**CHAT, "chat_template_kwargs": {"x": 1}})
    assert job.upstream_path == "/v1/chat/completions"
    assert json.loads(job.body) == {**CHAT, "chat_template_kwargs": {"x": 1}}


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({}, {"prompt": "missing parameter"}),
        (
            {"prompt": 5},
            {"prompt": f"must be {SHAPES}, not integer"},
        ),
        ({"prompt": []}, {"prompt": "must not be empty"}),
        (
            {"prompt": ["a", 1]},
            {"prompt": f"must be {SHAPES} (token ids are non-negative integers)"},
        ),
        ({"prompt": [[1], []]}, {"prompt": "must not contain an empty token id list"}),
        (
            {"prompt": [1, -2]},
            {"prompt": f"must be {SHAPES} (token ids are non-negative integers)"},
        ),
        (
            {
                "prompt": "x",
                "max_tokens": 0,
                "n": 0,
                "temperature": -1,
                "top_p": 0,
                "stream": "yes",
            },
            {
                "max_tokens": "must be at least 1",
                "n": "must be at least 1",
                "temperature": "must be at least 0",
                "top_p": "must be greater than 0",
                "stream": "must be a boolean, not string",
            },
        ),
        (
            {"prompt": "x", "top_p": 1.5, "model": 3},
            {"top_p": "must be at most 1", "model": "must be a string, not integer"},
        ),
        (
            {"prompt": "x", "stream_options": {"include_usage": True}},
            {"stream_options": "only allowed when stream is true"},
        ),
        (
            {"prompt": "x", "stream": True, "stream_options": {"include_usage": "yes"}},
            {"stream_options": {"include_usage": "must be a boolean, not string"}},
        ),
        ({"prompt": "x", "stop": ["a", 1]}, {"stop": "must be a string or a list of strings"}),
        ([1], {"": "must be a JSON object, not array"}),
    ],
)
def test_completion_errors_name_each_field(payload: object, errors: dict[str, Any]) -> None:
    assert _errors(parse_completion, payload) == errors


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({}, {"messages": "missing parameter"}),
        ({"messages": []}, {"messages": "must contain at least one message"}),
        ({"messages": "hi"}, {"messages": "must be a list of messages, not string"}),
        (
            {"messages": [{"role": "user", "content": "ok"}, {"content": 3}, "x"]},
            {
                "messages": {
                    "1": {
                        "role": "missing parameter",
                        "content": "must be a string or a list of content parts, not integer",
                    },
                    "2": "must be an object, not string",
                }
            },
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            {"messages": {"0": {"content": "part 0 must be an object with a string 'type'"}}},
        ),
        (
            {"messages": [{"role": "user"}], "max_completion_tokens": 0, "tools": {}},
            {
                "messages": {"0": {"content": "missing parameter"}},
                "max_completion_tokens": "must be at least 1",
                "tools": "must be a list, not object",
            },
        ),
    ],
)
def test_chat_errors_name_each_field(payload: object, errors: dict[str, Any]) -> None:
    assert _errors(parse_chat, payload) == errors


def test_assistant_tool_call_message_needs_no_content() -> None:
    calls = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": calls}]
    assert parse_chat({"messages": messages, "max_tokens": 1}).workload > 0


def test_settings_from_env() -> None:
    assert Settings.from_env({}) == Settings()
    env = {
        "OPENAI_SERVER": "SGLang",
        "OPENAI_DEFAULT_MAX_TOKENS": "32",
        "OPENAI_DEFAULT_CHAT_MAX_TOKENS": "512",
    }
    assert Settings.from_env(env) == Settings(
        server="sglang", default_max_tokens=32, default_chat_max_tokens=512
    )
    with pytest.raises(ValueError, match="OPENAI_SERVER must be one of"):
        Settings.from_env({"OPENAI_SERVER": "tgi"})
    with pytest.raises(ValueError, match="OPENAI_DEFAULT_MAX_TOKENS must be a positive integer"):
        Settings.from_env({"OPENAI_DEFAULT_MAX_TOKENS": "0"})


# -- usage -----------------------------------------------------------------------------------
def usage_seen(*chunks: bytes) -> float | None:
    """What a fresh observer of one answer makes of ``chunks``."""
    observer = observe_usage()
    for chunk in chunks:
        observer.feed(chunk)
    return observer.actual


def test_observe_usage() -> None:
    assert usage_seen(b'data: {"choices":[{"delta":{"content":" hi"}}]}\n\n') is None
    whole = b'{"id":"x","usage":{"prompt_tokens":12,"total_tokens":20,"completion_tokens":8}}'
    assert usage_seen(whole) == 20.0
    llamacpp = b'{"usage":{"completion_tokens":3,"prompt_tokens":4,"total_tokens":7},"timings":{}}'
    assert usage_seen(llamacpp) == 7.0
    assert usage_seen(b'data: {"choices":[],"usage":null}\n\n') is None
    # Two events in one chunk, or in two: the later (running) figure counts.
    first = b'data: {"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\n'
    second = b'data: {"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
    assert usage_seen(first + second) == 7.0
    assert usage_seen(first, second) == 7.0
    # Generated text that mentions "usage" is escaped JSON and does not count.
    text = b'data: {"delta":{"content":"\\"usage\\": {\\"prompt_tokens\\": 9"}}\n\n'
    assert usage_seen(text) is None
    nested = (
        b'"usage":{"prompt_tokens":3,"completion_tokens":4,'
        b'"prompt_tokens_details":{"cached_tokens":2}}'
    )
    assert usage_seen(nested) == 7.0


def seen_with_timings(*chunks: bytes) -> float | None:
    """What a fresh observer of one answer from a server that may be llama.cpp makes of it."""
    observer = observe_usage_or_timings()
    for chunk in chunks:
        observer.feed(chunk)
    return observer.actual


# llama.cpp's last stream event without include_usage (a 2025 build: cache_n is there).
LLAMACPP_LAST = (
    b'data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1,'
    b'"id":"chatcmpl-x","model":"m","system_fingerprint":"b6500","object":"chat.completion.'
    b'chunk","timings":{"cache_n":30,"prompt_n":12,"prompt_ms":5.1,"prompt_per_token_ms":0.4,'
    b'"prompt_per_second":2352.9,"predicted_n":7,"predicted_ms":70.2,"predicted_per_token_ms":'
    b'10.0,"predicted_per_second":99.7}}\n\n'
)


def test_llamacpp_timings_count_when_there_is_no_usage() -> None:
    assert seen_with_timings(LLAMACPP_LAST) == 30 + 12 + 7
    stream = b'data: {"choices":[{"delta":{"content":" hi"}}]}\n\n' + LLAMACPP_LAST
    assert all(seen_with_timings(stream[:i], stream[i:]) == 49 for i in range(len(stream) + 1))
    # Builds before 2025 have no cache_n: the evaluated prompt tokens, then.
    older = LLAMACPP_LAST.replace(b'"cache_n":30,', b"")
    assert seen_with_timings(older) == 12 + 7
    # With usage (a JSON answer, or include_usage): usage counts, as for any server.
    usage = b'"usage":{"completion_tokens":7,"prompt_tokens":42,"total_tokens":49},'
    assert seen_with_timings(LLAMACPP_LAST.replace(b'"timings"', usage + b'"timings"')) == 49
    assert seen_with_timings(b'{"usage":{"prompt_tokens":4,"completion_tokens":3}}') == 7
    assert seen_with_timings(b'data: {"choices":[],"usage":null}\n\n') is None
    assert usage_seen(LLAMACPP_LAST) is None  # the usage-only observer of vLLM and SGLang


@given(cut=st.integers(min_value=0, max_value=100), second_cut=st.integers(0, 100))
def test_observe_usage_sees_a_usage_object_split_anywhere(cut: int, second_cut: int) -> None:
    whole = b'{"id":"x","usage":{"prompt_tokens":12,"total_tokens":20,"completion_tokens":8}}'
    a, b = sorted((cut % (len(whole) + 1), second_cut % (len(whole) + 1)))
    assert usage_seen(whole[:a], whole[a:b], whole[b:]) == 20.0


# -- log rules -------------------------------------------------------------------------------
VLLM_READY = "INFO:     Application startup complete."
VLLM_OLD_READY = "INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)"
SGLANG_EARLY = "[2026-03-11 13:53:30] INFO:     Application startup complete."
SGLANG_READY = "[2026-03-11 13:53:35] The server is fired up and ready to roll!"
LLAMACPP_READY = "srv  llama_server: server is listening on http://127.0.0.1:8080"
LLAMACPP_2025 = "main: server is listening on http://127.0.0.1:8080 - starting the main loop"
LLAMACPP_OLD = '{"tid":"1","level":"INFO","function":"main","line":3000,"msg":"model loaded"}'
LLAMACPP_OLD_EARLY = '{"tid":"1","level":"INFO","msg":"HTTP server listening","port":"8080"}'


def _action(server: str, line: str) -> LogAction | None:
    rule = backend_for(Settings(server=server)).classify(line)
    return None if rule is None else rule.action


@pytest.mark.parametrize(
    ("server", "line", "action"),
    [
        ("auto", VLLM_READY, LogAction.MODEL_LOADED),
        ("auto", VLLM_OLD_READY, LogAction.MODEL_LOADED),
        ("auto", LLAMACPP_READY, LogAction.MODEL_LOADED),
        ("auto", LLAMACPP_2025, LogAction.MODEL_LOADED),
        ("auto", LLAMACPP_OLD, LogAction.MODEL_LOADED),
        ("auto", LLAMACPP_OLD_EARLY, LogAction.INFO),
        ("auto", "main: HTTP server is listening, hostname: 127.0.0.1, port: 8080", None),
        # The documented trade-off: "auto" takes SGLang's uvicorn line, "sglang" does not.
        ("auto", SGLANG_EARLY, LogAction.MODEL_LOADED),
        ("sglang", SGLANG_EARLY, None),
        ("sglang", SGLANG_READY, LogAction.MODEL_LOADED),
        ("vllm", LLAMACPP_READY, None),
        ("llamacpp", VLLM_READY, None),
        ("llama-cpp-python", VLLM_OLD_READY, LogAction.MODEL_LOADED),
        ("llama-cpp-python", VLLM_READY, None),
        (
            "auto",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            LogAction.MODEL_ERROR,
        ),
        (
            "auto",
            "RuntimeError: Engine core initialization failed. See root cause above.",
            LogAction.MODEL_ERROR,
        ),
        (
            "vllm",
            "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
            LogAction.MODEL_ERROR,
        ),
        (
            "sglang",
            "[2026-03-11 13:53:40] Initialization failed. warmup error: Traceback",
            LogAction.MODEL_ERROR,
        ),
        (
            "llamacpp",
            "srv  llama_server: exiting due to model loading error",
            LogAction.MODEL_ERROR,
        ),
        ("auto", "OSError: [Errno 98] Address already in use", LogAction.MODEL_ERROR),
        (
            "auto",
            "INFO 05-01 10:00:00 [default_loader.py:262] Loading weights took 4.20 seconds",
            LogAction.INFO,
        ),
        ("auto", 'INFO:     127.0.0.1:51234 - "POST /v1/completions HTTP/1.1" 200 OK', None),
    ],
)
def test_log_rules(server: str, line: str, action: LogAction | None) -> None:
    assert _action(server, line) is action


@pytest.mark.parametrize("server", SERVERS)
def test_request_log_lines_are_ignored_before_any_other_rule(server: str) -> None:
    rules = log_rules(server)
    ignored = [rule for rule in rules if rule.action is LogAction.IGNORE]
    assert ignored
    assert rules[: len(ignored)] == tuple(ignored)
    prompt = "CUDA out of memory. Traceback (most recent call last): Error: ShardFailed"
    for line in (
        f"INFO 05-01 10:00:41 [logger.py:43] Received request cmpl-1-0: prompt: {prompt!r}, "
        "params: SamplingParams(n=1), prompt_token_ids: None, lora_request: None.",
        "(APIServer pid=7) INFO 05-01 10:00:41 [async_llm.py:270] Added request cmpl-1-0.",
        f"[2026-03-11 13:54:02] Receive: obj=GenerateReqInput(text={prompt!r}, rid='1')",
        'srv  log_server_r: request:  {"prompt":"INFO:     Application startup complete."}',
        "INFO 05-01 10:00:41 [logger.py:43] Received request cmpl-1-0: prompt: "
        "'The server is fired up and ready to roll! srv  llama_server: server is listening on '",
    ):
        assert _action(server, line) is None, line


def test_server_choices() -> None:
    auto = backend_for(Settings())
    assert (auto.health_path, auto.allow_parallel_requests) == ("/health", True)
    assert auto.model_server_url == "http://127.0.0.1:8000"
    assert auto.demo is not None
    assert auto.demo.argv(9, "/tmp/log")[-2:] == ["--flavor", "vllm"]
    assert backend_for(Settings(server="sglang")).model_server_url.endswith(":30000")
    python = backend_for(Settings(server="llama-cpp-python"))
    assert (python.health_path, python.allow_parallel_requests) == ("/v1/models", False)
    assert python.demo is None
    assert make_backend({"MODEL_NAME": "m"}).model_id == "m (auto)"
    # Only llama.cpp's streams carry timings: a server that may be llama.cpp is watched for
    # them too.
    assert auto.endpoint("/v1/chat/completions").observe is observe_usage_or_timings
    assert backend_for(Settings(server="llamacpp")).endpoints[0].observe is (
        observe_usage_or_timings
    )
    for server in ("vllm", "sglang", "llama-cpp-python"):
        assert backend_for(Settings(server=server)).endpoints[1].observe is observe_usage


# -- end to end ------------------------------------------------------------------------------
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
