"""The tgi backend: its log rules, payload checks and workload, then end to end with the fake."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from fakes import REPO_ROOT
from harness import Stack, start_stack
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.tgi import (
    LOG_RULES,
    GenerateCounts,
    Settings,
    StreamCounts,
    benchmark_payload,
    make_backend,
    observe_stream,
    parse_generate,
)
from backends.tgi import _fake_api as tgi
from pyworker import LogAction, PayloadError, State, Trigger
from pyworker._machine import StateChange
from pyworker._tokens import estimate_tokens
from pyworker.devtools._demo import example_commands

BACKEND = make_backend({})
"""The backend with every setting at its default."""

PROMPT = "What is deep learning?"
DEFAULTS = Settings()


def _action(line: str) -> LogAction | None:
    rule = BACKEND.classify(line)
    return None if rule is None else rule.action


def _parse(payload: object, *, stream: bool = False, settings: Settings = DEFAULTS) -> Any:
    return parse_generate(payload, settings, stream=stream)


def _errors(payload: object, *, stream: bool = False, settings: Settings = DEFAULTS) -> Any:
    with pytest.raises(PayloadError) as caught:
        _parse(payload, stream=stream, settings=settings)
    return caught.value.errors


# -- log rules -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        # TGI >= 2.1 with --json-output (what the fake writes)
        '{"timestamp":"2025-05-01T10:00:30.001Z","level":"INFO","message":"Connected",'
        '"target":"text_generation_router::server","filename":"router/src/server.rs",'
        '"line_number":2302}',
        # TGI <= 2.0: logged from main.rs, target without "::server"
        '{"timestamp":"2024-03-01T10:00:30.001Z","level":"INFO","message":"Connected",'
        '"target":"text_generation_router","filename":"router/src/main.rs","line_number":442}',
        # without --json-output, colours off (LOG_COLORIZE=1)
        "2025-05-01T10:00:30.001234Z  INFO text_generation_router::server: "
        "router/src/server.rs:2302: Connected",
        # without --json-output, the router's default colours
        "\x1b[2m2025-05-01T10:00:30.001234Z\x1b[0m \x1b[32m INFO\x1b[0m "
        "\x1b[2mtext_generation_router::server\x1b[0m\x1b[2m:\x1b[0m "
        "\x1b[2mrouter/src/server.rs\x1b[0m\x1b[2m:\x1b[0m\x1b[2m2302:\x1b[0m Connected",
    ],
    ids=["json-2.1", "json-2.0", "text", "text-ansi"],
)
def test_both_connected_forms_mean_ready(line: str) -> None:
    assert _action(line) is LogAction.MODEL_LOADED


@pytest.mark.parametrize(
    "line",
    [
        "Error: DownloadError",
        "Error: ShardCannotStart",
        "Error: ShardFailed",
        "Error: WebserverFailed",
        "Error: WebserverCannotStart",
        'Error: ArgumentValidation("`max_input_tokens` must be < `max_total_tokens`")',
        'Error: NotEnoughCUDADevices("`num_shard` is 2 but only 1 CUDA device is visible")',
    ],
)
def test_fatal_lines_mean_errored(line: str) -> None:
    assert _action(line) is LogAction.MODEL_ERROR


def test_progress_lines_are_info_and_others_are_ignored() -> None:
    def launcher(message: str) -> str:
        return (
            '{"timestamp":"2025-05-01T10:00:04.211Z","level":"INFO","fields":{"message":'
            + json.dumps(message)
            + '},"target":"text_generation_launcher"}'
        )

    for message in (
        "Starting check and download process for org/model",
        "Download file: model-00001-of-00002.safetensors",
        "Successfully downloaded weights for org/model",
        "Files are already present on the host. Skipping download.",
        "Shard ready in 12.3s",
    ):
        assert _action(launcher(message)) is LogAction.INFO, message
    for message in ("Starting shard", "Waiting for shard to be ready...", "Warming up model"):
        assert _action(launcher(message)) is None, message
    # The error rules come first: the first matching rule wins.
    assert [r.action for r in LOG_RULES][:7] == [LogAction.MODEL_ERROR] * 7


# -- payloads and workload -------------------------------------------------------------------
def test_workload_is_prompt_tokens_plus_max_new_tokens_and_the_body_is_forwarded() -> None:
    payload = {
        "inputs": PROMPT,
        "parameters": {"max_new_tokens": 64, "temperature": 0.7, "future_knob": [1, 2]},
        "add_special_tokens": False,
        "extra": {"kept": True},
    }
    job = _parse(payload)
    assert job.workload == estimate_tokens(PROMPT) + 64
    assert json.loads(job.body) == payload  # as the client sent it, unknown fields included
    assert job.upstream_path == "/generate"
    assert _parse(payload, stream=True).upstream_path == "/generate_stream"


def test_workload_defaults_truncation_and_best_of() -> None:
    prompt_tokens = estimate_tokens(PROMPT)
    assert _parse({"inputs": PROMPT}).workload == prompt_tokens + 100
    null = {"inputs": PROMPT, "parameters": {"max_new_tokens": None}}
    assert _parse(null).workload == prompt_tokens + 100
    custom = Settings(default_max_new_tokens=20)  # TGI 1.x's default
    assert _parse(null, settings=custom).workload == prompt_tokens + 20
    truncated = {"inputs": PROMPT, "parameters": {"max_new_tokens": 10, "truncate": 2}}
    assert _parse(truncated).workload == 2 + 10
    best_of = {"inputs": PROMPT, "parameters": {"max_new_tokens": 10, "best_of": 2, "top_k": 5}}
    assert _parse(best_of).workload == 2 * (prompt_tokens + 10)


def test_every_bad_field_is_named_nested_under_parameters() -> None:
    errors = _errors(
        {
            "inputs": "",
            "add_special_tokens": None,
            "parameters": {
                "max_new_tokens": 0,
                "temperature": 0,
                "repetition_penalty": -1.0,
                "frequency_penalty": 2.5,
                "top_k": 0,
                "top_p": 1.0,
                "typical_p": 0,
                "do_sample": None,
                "stop": ["a", "b", "c", "d", "e"],
                "truncate": "all",
                "details": "yes",
                "seed": -1,
                "top_n_tokens": 6,
                "grammar": {"type": "yaml", "value": "x"},
                "adapter_id": 7,
                "unknown_knob": {"passes": "through"},
            },
        }
    )
    assert errors == {
        "inputs": "must not be empty",
        "add_special_tokens": "must be a boolean, not null",
        "parameters": {
            "max_new_tokens": "must be at least 1",
            "temperature": "must be greater than 0",
            "repetition_penalty": "must be greater than 0",
            "frequency_penalty": "must be at most 2",
            "top_k": "must be at least 1",
            "top_p": "must be greater than 0 and less than 1",
            "typical_p": "must be greater than 0 and less than 1",
            "do_sample": "must be a boolean, not null",
            "stop": "must have at most 4 stop sequences, not 5",
            "truncate": "must be an integer, not string",
            "details": "must be a boolean, not string",
            "seed": "must be at least 0",
            "top_n_tokens": "must be at most 5",
            "grammar": {"type": "must be 'json' or 'regex'"},
            "adapter_id": "must be a string, not integer",
        },
    }
    assert _errors({"parameters": {"max_new_tokens": 5}}) == {"inputs": "missing parameter"}
    assert _errors({"inputs": PROMPT, "parameters": None}) == {
        "parameters": "must be a JSON object, not null"
    }
    assert _errors(["not", "an", "object"]) == {"": "must be a JSON object, not array"}


def test_rules_across_fields_and_streaming() -> None:
    def parameters(**values: object) -> dict[str, object]:
        return {"inputs": PROMPT, "parameters": values}

    assert _errors(parameters(best_of=2)) == {
        "parameters": {
            "best_of": "needs sampling: set do_sample, temperature, top_k, top_p or typical_p"
        }
    }
    assert _errors(parameters(best_of=2, do_sample=True, seed=1)) == {
        "parameters": {"seed": "must be null when best_of is more than 1"}
    }
    assert _errors(parameters(best_of=3, do_sample=True)) == {
        "parameters": {"best_of": "must be at most 2"}
    }
    assert _errors(parameters(best_of=2, do_sample=True), stream=True) == {
        "parameters": {"best_of": "must be 1 or null when streaming"}
    }
    assert _errors(parameters(decoder_input_details=True), stream=True) == {
        "parameters": {"decoder_input_details": "must be false when streaming"}
    }
    _parse(parameters(decoder_input_details=True, best_of=2, do_sample=True))
    _parse(parameters(best_of=1), stream=True)


def test_limits_come_from_tgi_launcher_environment() -> None:
    env = {
        "MAX_STOP_SEQUENCES": "1",
        "MAX_BEST_OF": "1",
        "MAX_TOP_N_TOKENS": "0",
        "MAX_INPUT_LENGTH": "100",
        "MAX_TOTAL_TOKENS": "200",
        "TGI_DEFAULT_MAX_NEW_TOKENS": "32",
    }
    limited = Settings.from_env(env)
    assert limited == Settings(
        default_max_new_tokens=32,
        max_stop_sequences=1,
        max_best_of=1,
        max_top_n_tokens=0,
        max_input_tokens=100,
        max_total_tokens=200,
    )
    errors = _errors(
        {
            "inputs": PROMPT,
            "parameters": {
                "stop": ["a", "b"],
                "max_new_tokens": 201,
                "truncate": 101,
                "top_n_tokens": 1,
            },
        },
        settings=limited,
    )
    assert set(errors["parameters"]) == {"stop", "max_new_tokens", "truncate", "top_n_tokens"}
    assert Settings.from_env({}) == DEFAULTS
    with pytest.raises(ValueError, match="MAX_BEST_OF"):
        Settings.from_env({"MAX_BEST_OF": "many"})


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 8),
    st.floats(-3, 3, allow_nan=False),
    st.text(max_size=3),
    st.lists(st.text(max_size=2), max_size=6),
    st.lists(st.integers(0, 3), min_size=1, max_size=2),
)
_PARAMETERS = st.dictionaries(
    st.sampled_from(
        [
            "best_of",
            "temperature",
            "repetition_penalty",
            "frequency_penalty",
            "top_k",
            "top_p",
            "typical_p",
            "do_sample",
            "max_new_tokens",
            "return_full_text",
            "stop",
            "truncate",
            "watermark",
            "details",
            "decoder_input_details",
            "seed",
            "top_n_tokens",
            "adapter_id",
            "unknown",
        ]
    ),
    _VALUES,
    max_size=4,
)
# The fake with limits the worker cannot know left wide open.
_OPEN_LIMITS = tgi.Limits(max_input_tokens=10**9, max_total_tokens=10**12)


def _tgi_accepts(payload: dict[str, Any], *, stream: bool) -> bool:
    try:
        parsed = tgi.deserialize(payload)
        if stream:
            tgi.check_stream(parsed)
        else:
            tgi.check_best_of(parsed, _OPEN_LIMITS)
        tgi.validate(parsed, _OPEN_LIMITS)
    except (tgi.PlainError, tgi.TGIError):
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(parameters=_PARAMETERS, stream=st.booleans(), inputs=st.sampled_from(["", PROMPT]))
def test_the_worker_refuses_exactly_what_tgi_refuses(
    parameters: dict[str, Any], stream: bool, inputs: str
) -> None:
    payload = {"inputs": inputs, "parameters": parameters}
    try:
        _parse(payload, stream=stream)
    except PayloadError:
        worker_accepts = False
    else:
        worker_accepts = True
    assert worker_accepts == _tgi_accepts(payload, stream=stream)


def test_observe_takes_tgi_counts_from_the_last_event_only() -> None:
    token = (
        b'data:{"index":1,"token":{"id":5,"text":" a","logprob":-0.1,"special":false},'
        b'"generated_text":null,"details":null}\n\n'
    )
    last = (
        b'data:{"index":2,"token":{"id":2,"text":"</s>","logprob":-0.01,"special":true},'
        b'"generated_text":" a \\"generated_tokens\\":999","details":{"finish_reason":'
        b'"eos_token","generated_tokens":2,"seed":null,"input_length":5}}\n\n'
    )
    assert details_seen(token) is None
    assert details_seen(last) == 7
    assert details_seen(token + last) == 7
    assert details_seen(token, last) == 7
    # Split anywhere, even inside the marker, the final details are still seen.
    stream = token + last
    assert all(details_seen(stream[:i], stream[i:]) == 7 for i in range(len(stream) + 1))
    no_details = last.split(b',"details"')[0] + b',"details":null}\n\n'
    assert details_seen(no_details) is None
    error = b'data:{"error":"Model is overloaded","error_type":"overloaded"}\n\n'
    assert details_seen(error) is None


def details_seen(*chunks: bytes) -> float | None:
    """What a fresh observer of one stream makes of ``chunks``."""
    observer = observe_stream()
    for chunk in chunks:
        observer.feed(chunk)
    return observer.actual


def _token_event(index: int, text: str = " a") -> bytes:
    token = {"id": 5, "text": text, "logprob": -0.1, "special": False}
    event = {"index": index, "token": token, "generated_text": None, "details": None}
    return b"data:" + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def test_a_stream_without_details_counts_its_tokens_beside_the_prompts_estimate() -> None:
    """The job's own observer knows the prompt's estimate (10 here); TGI numbers its token
    events from 1, and the last one's number is the count of tokens generated."""

    def seen(*chunks: bytes) -> float | None:
        observer = StreamCounts(10.0)
        for chunk in chunks:
            observer.feed(chunk)
        return observer.actual

    # A token whose text reads like an event is escaped in JSON, and counts for nothing.
    last = _token_event(3, '{"index":99,').replace(
        b'"generated_text":null', b'"generated_text":" a a a"'
    )
    stream = _token_event(1) + _token_event(2) + last
    assert seen(stream) == 13
    assert all(seen(stream[:i], stream[i:]) == 13 for i in range(len(stream) + 1))
    # Details, when the client asked: TGI's own counts, the prompt's included.
    detailed = last.replace(b'"details":null', b'"details":{"generated_tokens":3,"input_length":7}')
    assert seen(_token_event(1), detailed) == 10
    # A refusal is one error event: nothing generated, no work done. After tokens, an error
    # leaves the tokens generated until then.
    error = b'data:{"error":"Model is overloaded","error_type":"overloaded"}\n\n'
    assert seen(error) == 0
    assert seen(_token_event(1), error) == 11
    assert seen(b"") is None  # nothing at all: the estimate stands
    assert details_seen(stream) is None  # the endpoint's own knows no prompt: details only


def test_generate_counts_are_tgis_token_headers() -> None:
    def seen(headers: list[tuple[bytes, bytes]], sequences: int = 1) -> float | None:
        observer = GenerateCounts(sequences)
        observer.head(headers)
        observer.feed(b'{"generated_text":" a","details":{"generated_tokens":9}}')
        return observer.actual

    counts = [(b"x-prompt-tokens", b"5"), (b"x-generated-tokens", b"3")]
    assert seen(counts) == 8
    assert seen(counts[:1]) is None  # both, or nothing counts
    assert seen([counts[0], (b"x-generated-tokens", b"-3")]) is None
    assert seen([counts[0], (b"x-generated-tokens", b"")]) is None
    # best_of: the headers count the best sequence alone, so the estimate stands.
    assert seen(counts, sequences=2) is None
    best_of = {"inputs": PROMPT, "parameters": {"best_of": 2, "do_sample": True}}
    job = _parse(best_of)
    assert job.observe is not None
    observer = job.observe()
    assert isinstance(observer, GenerateCounts)
    observer.head(counts)
    assert observer.actual is None


def test_benchmark_payload_and_demo_example_are_valid_tgi_requests() -> None:
    for seed in range(5):
        payload = benchmark_payload(random.Random(seed))
        parameters = payload["parameters"]
        assert isinstance(parameters, dict)
        assert 64 <= parameters["max_new_tokens"] <= 128
        for stream in (False, True):
            _parse(payload, stream=stream)
            assert _tgi_accepts(payload, stream=stream)
    commands = [shlex.split(c) for c in example_commands("http://127.0.0.1:9", BACKEND)]
    assert [command[-2] for command in commands] == ["/generate", "/generate_stream"]
    for command in commands:  # each a payload the backend takes
        BACKEND.endpoint(command[-2]).parse(json.loads(command[-1]))


def test_model_id_comes_from_the_environment() -> None:
    env = {"MODEL_ID": "c", "HF_MODEL_ID": "b", "MODEL_NAME": "a"}
    assert make_backend(env).model_id == "a"
    assert make_backend({"MODEL_ID": "c", "HF_MODEL_ID": "b"}).model_id == "b"
    assert make_backend({"MODEL_ID": "c"}).model_id == "c"


# -- end to end: fake TGI process + stand-in autoscaler + worker -----------------------------
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
        best_of = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20, "best_of": 2}}
        best_of["parameters"]["do_sample"] = True
        assert (await stack.post("/generate", best_of)).status_code == 200
        assert await _finished_workload(stack) == (estimate + 20) * 2
        # TGI's refusal inside a stream (HTTP 200): no work done.
        refused = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5000}}
        [event] = _sse((await stack.post("/generate_stream", refused)).content)
        assert event["error_type"] == "validation"
        assert await _finished_workload(stack) == 0


async def test_the_benchmark_measures_what_a_model_that_stops_early_did(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """TGI cannot ignore its end-of-sequence token, so its benchmark answers may stop early
    (here at 16 of the 128 tokens asked): measured by TGI's counts, the capacity reads the
    fake's truth, 4000 tokens a second, where the estimates would read far more."""
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
    assert stack.worker.lifecycle.max_perf == pytest.approx(4000, rel=0.15)


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
    try:
        assert demo.stdout is not None
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
        await demo.stdout.aclose()  # type: ignore[union-attr]
