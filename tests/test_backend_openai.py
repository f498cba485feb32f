"""The openai backend: payload checks, workload, usage, log rules (end to end with the fakes:
``test_backend_openai_e2e.py``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
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
from pyworker import LogAction, PayloadError, estimate_tokens

CHAT = {"messages": [{"role": "user", "content": "Tell me about rivers."}], "max_tokens": 5}
SHAPES = "a string, a list of strings, a list of token ids or a list of token id lists"


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
    with pytest.raises(
        ValueError, match="OPENAI_DEFAULT_MAX_TOKENS must be an integer of at least 1"
    ):
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


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"error": {"object": "error", "message": "x", "code": 500}}\n\n',  # vLLM
        b'data: {"error":{"message":"x","http_status_code":422}}\n\n',  # TGI, llama.cpp
    ],
)
def test_an_error_event_in_a_stream_is_reported(event: bytes) -> None:
    token = b'data: {"choices":[{"delta":{"content":"{\\"error\\": 1}"}}]}\n\n'
    for make in (observe_usage, observe_usage_or_timings):
        observer = make()
        seen = []
        for chunk in (token, event[:12], event[12:]):
            observer.feed(chunk)
            seen.append(observer.error)
        # Generated text quoting an error is escaped, not one; the event, split, is.
        assert seen == [None, None, "an error event"]
        assert observer.actual is None  # and no usage: nothing to count


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
