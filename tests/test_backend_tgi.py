"""The tgi backend: its log rules, payload checks, workload and observers (end to end with the
fake: ``test_backend_tgi_e2e.py``)."""

from __future__ import annotations

import json
import random
import shlex
from typing import Any

import pytest
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
from pyworker import LogAction, PayloadError
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
# Every field of TGI's GenerateParameters but the grammar (whose object shape has tests of its
# own above), and one it does not know.
_NAMES = [name for name in tgi.GENERATE_PARAMETERS if name != "grammar"] + ["unknown"]
_PARAMETERS = st.dictionaries(
    st.sampled_from(_NAMES),
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


def test_an_error_event_is_reported_by_either_stream_observer() -> None:
    """However the stream's observer was made, an error event makes it report one (the
    worker then counts no work done); tokens alone, or text quoting an error, do not."""
    error = b'data:{"error":"Incomplete generation stream","error_type":"incomplete"}\n\n'
    quoting = _token_event(1, '{"error":"x"}')
    for make in (observe_stream, lambda: StreamCounts(10.0)):
        observer = make()
        for chunk in (_token_event(1), quoting, error[:9], error[9:]):
            assert observer.error is None
            observer.feed(chunk)
        assert observer.error == "an error event"


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
