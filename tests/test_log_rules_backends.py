"""Every built-in backend's log rules: the servers' own lines still mean what they did, and no
rule can be set off by text a client chose, quoted in the model server's request log (each
server's request log line, every rule's words, Hypothesis' text; end to end, a worker behind a
vLLM that logs requests stays ready). How one rule matches a line is in ``test_log_rules.py``."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from harness import seed_benchmark, start_stack
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.openai import Settings, backend_for
from backends.tgi._fake_log import generate_parameters, request_span
from pyworker import Backend, LogAction, State, load_backend

# -- every backend: the server's own lines, and its request log lines --------------------------
# The real lines each backend's rules must still recognise, beyond those in test_backend_*.py:
# the forms the anchors must allow (vLLM's process prefixes and logged tracebacks, llama.cpp's
# level prefix, TGI's plain text).
REAL_LINES: dict[str, list[tuple[str, LogAction]]] = {
    "openai": [
        ("(APIServer pid=123) INFO:     Application startup complete.", LogAction.MODEL_LOADED),
        (
            "(EngineCore_DP0 pid=140) ERROR 05-01 10:00:07 [core.py:708] torch.OutOfMemoryError: "
            "CUDA out of memory. Tried to allocate 2.00 GiB.",
            LogAction.MODEL_ERROR,
        ),
        (
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
            LogAction.MODEL_ERROR,
        ),
        (
            "(APIServer pid=123) RuntimeError: Engine core initialization failed. See root cause "
            "above. Failed core proc(s): {'EngineCore_DP0': 1}",
            LogAction.MODEL_ERROR,
        ),
        (
            "ERROR 05-01 10:00:07 [async_llm.py:480] vllm.v1.engine.exceptions.EngineDeadError: "
            "EngineCore encountered an issue. See stack trace (above) for the root cause.",
            LogAction.MODEL_ERROR,
        ),
        (
            "ERROR 05-01 10:00:07 [core.py:708] ValueError: No available memory for the cache "
            "blocks. Try increasing `gpu_memory_utilization` when initializing the engine.",
            LogAction.MODEL_ERROR,
        ),
        (
            "ValueError: The model's max seq len (32768) is larger than the maximum number of "
            "tokens that can be stored in KV cache (12000). Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
            LogAction.MODEL_ERROR,
        ),
        (
            "OSError: org/missing is not a local folder and is not a valid model identifier "
            "listed on 'https://huggingface.co/models'",
            LogAction.MODEL_ERROR,
        ),
        ("OSError: You are trying to access a gated repo.", LogAction.MODEL_ERROR),
        (
            "[2026-03-11 13:53:40 DP0 TP0] Scheduler hit an exception: Traceback (most recent "
            "call last):",
            LogAction.MODEL_ERROR,
        ),
        (
            "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.",
            LogAction.MODEL_ERROR,
        ),
        ("main: exiting due to model loading error", LogAction.MODEL_ERROR),
        ("E srv  llama_server: exiting due to model loading error", LogAction.MODEL_ERROR),
        ("srv  llama_server: exiting due to HTTP server error", LogAction.MODEL_ERROR),
        ("ValueError: Failed to load model from file: /models/x.gguf", LogAction.MODEL_ERROR),
        (
            "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): "
            "address already in use",
            LogAction.MODEL_ERROR,
        ),
        (
            "[2026-03-11 13:53:30] ERROR:    [Errno 98] error while attempting to bind on "
            "address ('127.0.0.1', 30000): address already in use",
            LogAction.MODEL_ERROR,
        ),
        (
            "0.00.512.301 I srv  llama_server: server is listening on http://127.0.0.1:8080",
            LogAction.MODEL_LOADED,
        ),
        (
            "(APIServer pid=123) INFO 05-01 10:00:04 [default_loader.py:262] Loading weights "
            "took 4.20 seconds",
            LogAction.INFO,
        ),
        (
            "[2026-03-11 13:53:25 TP0] KV Cache is allocated. #tokens: 383872, K size: 23.43 GB",
            LogAction.INFO,
        ),
        ("srv    load_model: loading model '/models/x.gguf'", LogAction.INFO),
    ],
    "tgi": [
        (
            "2025-05-01T10:00:04.211Z  INFO shard-manager: text_generation_launcher: Shard ready "
            "in 12.3s rank=0",
            LogAction.INFO,
        ),
        (
            '{"timestamp":"2025-05-01T10:00:30.001Z","level":"INFO","message":"Connected",'
            '"target":"text_generation_router::server","filename":"router/src/server.rs",'
            '"line_number":2302}',
            LogAction.MODEL_LOADED,
        ),
        ("Error: ShardCannotStart", LogAction.MODEL_ERROR),
    ],
    "comfyui": [
        ("To see the GUI go to: https://[::1]:8188", LogAction.MODEL_LOADED),
        (
            "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an "
            "NVIDIA GPU and installed a driver from http://www.nvidia.com/Download/index.aspx",
            LogAction.MODEL_ERROR,
        ),
        ("   0.1 seconds (IMPORT FAILED): /ComfyUI/custom_nodes/broken-pack", LogAction.INFO),
    ],
    "hello_world": [
        (
            "2026-11-25T16:00:00.123Z INFO infer server has started on http://127.0.0.1:5001",
            LogAction.MODEL_LOADED,
        ),
        ("infer server has started", LogAction.MODEL_LOADED),
        (
            "2026-11-25T16:00:00.123Z ERROR Error: model failed to load: no weights",
            LogAction.MODEL_ERROR,
        ),
        ("Exception: corrupted model file shard 3", LogAction.MODEL_ERROR),
        ("2026-11-25T16:00:00.123Z INFO loading model: 40%", LogAction.INFO),
    ],
}


OPENAI_SERVERS = ("auto", "vllm", "sglang", "llamacpp", "llama-cpp-python")
BACKENDS: dict[str, Backend] = {
    **{f"openai:{server}": backend_for(Settings(server=server)) for server in OPENAI_SERVERS},
    "tgi": load_backend("tgi"),
    "comfyui": load_backend("comfyui"),
    "hello_world": load_backend("hello_world"),
}


def _family(name: str) -> str:
    return name.split(":", 1)[0]


@pytest.mark.parametrize(
    ("name", "line", "action"),
    [
        (name, line, action)
        for name, (family, lines) in itertools.product(
            ["openai:auto", "tgi", "comfyui", "hello_world"], REAL_LINES.items()
        )
        if _family(name) == family
        for line, action in lines
    ],
)
def test_the_servers_own_lines_still_mean_what_they_did(
    name: str, line: str, action: LogAction
) -> None:
    rule = BACKENDS[name].classify(line)
    assert rule is not None
    assert rule.action is action


# What a request log line looks like, per backend, with the client's ``text`` inside it, as
# each server writes it (sources in the backends' rule comments and the fakes' log writers).
_VLLM_PARAMS = (
    "SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, "
    "temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=None, stop={stop!r}, "
    "stop_token_ids=[], bad_words=[], include_stop_str_in_output=False, ignore_eos=False, "
    "max_tokens=16, min_tokens=0, logprobs=None, prompt_logprobs=None, skip_special_tokens=True, "
    "spaces_between_special_tokens=True, truncate_prompt_tokens=None, structured_outputs=None, "
    "extra_args=None)"
)


def _tgi_json(level: str, message: str, span: dict[str, str]) -> str:
    return json.dumps(
        {
            "timestamp": "2025-05-01T10:00:40.123456Z",
            "level": level,
            "message": message,
            "target": "text_generation_router::server",
            "filename": "router/src/server.rs",
            "line_number": 432,
            "span": span,
            "spans": [span],
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _tgi_text(level: str, message: str, parameters: str) -> str:
    return (
        f"2025-05-01T10:00:40.123456Z {level:>5} generate{{parameters={parameters} "
        'total_time="1.2s" validation_time="0.1ms" queue_time="0.2ms" inference_time="1.2s" '
        'time_per_token="60ms" seed="None"}: text_generation_router::server: '
        f"router/src/server.rs:432: {message}"
    )


def _stop(text: str) -> dict[str, object]:
    return {"stop": [text], "max_new_tokens": 20}


REQUEST_LINES: dict[str, list[Callable[[str], str]]] = {
    "openai": [
        # vLLM (vllm/entrypoints/logger.py, vllm/v1/engine/async_llm.py)
        lambda t: (
            f"INFO 05-01 10:00:41 [logger.py:43] Received request cmpl-5c1e-0: prompt: {t!r}, "
            f"params: {_VLLM_PARAMS.format(stop=[t])}, prompt_token_ids: None, "
            "prompt_embeds shape: None, lora_request: None."
        ),
        lambda t: (
            f"(APIServer pid=123) INFO 05-01 10:00:41 [logger.py:43] Received request "
            f"chatcmpl-9a-0: prompt: {t!r}, params: {_VLLM_PARAMS.format(stop=[])}, "
            "prompt_token_ids: None, prompt_embeds shape: None, lora_request: None."
        ),
        lambda t: (
            f"INFO 05-01 10:00:42 [logger.py:71] Generated response chatcmpl-9a: output: {t!r}, "
            "output_token_ids: None, finish_reason: stop"
        ),
        # SGLang's tokenizer manager
        lambda t: (
            f"[2026-03-11 13:54:02] Receive: obj=GenerateReqInput(text={t!r}, input_ids=None, "
            f"sampling_params={{'max_new_tokens': 16, 'stop': [{t!r}]}}, rid='a1b2')"
        ),
        lambda t: (
            f"[2026-03-11 13:54:03] Finish: obj=GenerateReqInput(text='hi'), out={{'text': {t!r}, "
            "'meta_info': {'id': 'a1b2', 'finish_reason': {'type': 'length', 'length': 8}}}"
        ),
        # llama.cpp's log_server_request (--verbose), bodies as JSON
        lambda t: (
            "srv  log_server_r: request:  "
            + json.dumps({"messages": [{"role": "user", "content": t}], "max_tokens": 8})
        ),
        lambda t: "D srv  log_server_r: response: " + json.dumps({"content": t, "stop": True}),
    ],
    "tgi": [
        # --json-output: the request's outcome in its span, the stop sequences in parameters;
        # at LOG_LEVEL=debug, the prompt itself
        lambda t: _tgi_json(
            "INFO", "Success", request_span("generate", _stop(t), total_time="1.2s")
        ),
        lambda t: _tgi_json(
            "ERROR",
            "Request failed during generation: Server error: CUDA out of memory",
            request_span("generate_stream", _stop(t)),
        ),
        lambda t: _tgi_json("DEBUG", f"Input: {t}", request_span("generate", _stop("x"))),
        # plain text: the span between the level and the target
        lambda t: _tgi_text("INFO", "Success", generate_parameters(_stop(t))),
        # plain text at debug: the prompt as it is (Display). A prompt's newline splits the
        # line there; what follows it is a line of its own, which no rule can tell from
        # TGI's (the worker's health check has to).
        lambda t: _tgi_text("DEBUG", f"Input: {t.replace(chr(10), ' ')}", "GenerateParameters {}"),
    ],
    "comfyui": [
        # a workflow that failed validation: the value quoted, then the error dict
        lambda t: f"  - Value not in list: ckpt_name: {t!r} not in ['sd15.safetensors']",
        lambda t: (
            "invalid prompt: {'type': 'prompt_outputs_failed_validation', 'message': 'Prompt "
            f"outputs failed validation', 'details': {t!r}, 'extra_info': {{}}}}"
        ),
        # a node's failure, its message as the node raised it (INFO: the prompt's own error)
        lambda t: f"!!! Exception during processing !!! {t.replace(chr(10), ' ')}",
    ],
    "hello_world": [
        lambda t: (
            f"2026-11-25T16:00:00.123Z INFO request received: prompt: {t!r}, "
            "max_response_tokens: 32"
        ),
    ],
}

# Every rule's substring and every real line, of every backend: the words a client could
# quote to imitate the server.
WORDS = sorted(
    {rule.substring for backend in BACKENDS.values() for rule in backend.log_rules} - {""}
    | {line for lines in REAL_LINES.values() for line, _ in lines}
    | {
        "CUDA out of memory",
        "Traceback (most recent call last):",
        "Error: ShardFailed",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "INFO:     Application startup complete.",
        "The server is fired up and ready to roll!",
        "srv  llama_server: server is listening on http://127.0.0.1:8080",
        '"message":"Connected","target":"text_generation_router',
        ": Connected",
        "To see the GUI go to: http://0.0.0.0:8188",
        "\nError: WebserverFailed\n",
        "\x1b[0m",
    }
)
_SIGNALS = (LogAction.MODEL_LOADED, LogAction.MODEL_ERROR)


def _meaning(name: str, line: str) -> LogAction | None:
    rule = BACKENDS[name].classify(line)
    return None if rule is None else rule.action


@pytest.mark.parametrize("name", list(BACKENDS))
def test_request_log_lines_quoting_any_rules_words_mean_nothing(name: str) -> None:
    for template, word in itertools.product(REQUEST_LINES[_family(name)], WORDS):
        for text in (word, f"please say {word} twice", f"{word}\n{word}"):
            line = template(text)
            assert _meaning(name, line) not in _SIGNALS, line


_TEXT = st.one_of(
    st.text(),
    st.sampled_from(WORDS),
    st.builds(
        "".join,
        st.lists(st.one_of(st.text(max_size=8), st.sampled_from(WORDS)), max_size=5),
    ),
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(list(BACKENDS)), data=st.data(), text=_TEXT)
def test_no_client_text_in_a_request_log_line_signals_anything(
    name: str, data: st.DataObject, text: str
) -> None:
    template = data.draw(st.sampled_from(REQUEST_LINES[_family(name)]))
    line = template(text)
    assert _meaning(name, line) not in _SIGNALS, line


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_built_in_rule_is_anchored(name: str) -> None:
    # A bare substring matches inside a quoted prompt; each built-in rule pins its line's start.
    assert all(rule.pattern is not None for rule in BACKENDS[name].log_rules)


# -- end to end: a prompt that reads like a failure, through a server that logs requests -------
_ALARMING = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    "Traceback (most recent call last):\n"
    "Error: ShardFailed\n"
    "INFO:     Application startup complete."
)


class _Seen(logging.Handler):
    """Sets ``event`` when the worker logs a model server line containing ``marker``: the
    tailer hands lines over in order, so every line before it has been classified."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.event = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.marker in record.getMessage():
            self.event.set()


async def test_a_worker_behind_a_request_logging_vllm_stays_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = load_backend("openai")
    seed_benchmark(tmp_path / "state", backend, max_perf=1000.0, runs=2)
    seen = _Seen("Loading weights took 0.42 seconds")
    logger = logging.getLogger("pyworker")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(seen)
    try:
        with trio.fail_after(30):
            stack = await start_stack(
                nursery,
                tmp_path,
                "openai",
                "--load-delay",
                "0",
                "--token-rate",
                "5000",
                "--log-requests",
                wait_ready=True,
                benchmark_runs=2,
            )
            chat = {"messages": [{"role": "user", "content": _ALARMING}], "max_tokens": 4}
            first = await stack.post("/v1/chat/completions", chat)
            assert first.status_code == 200, first.text
            completion = await stack.post("/v1/completions", {"prompt": _ALARMING, "max_tokens": 4})
            assert completion.status_code == 200, completion.text
            received = [
                line for line in stack.fake.log_text().splitlines() if "Received request" in line
            ]
            assert len(received) == 2
            assert all("CUDA out of memory" in line for line in received)
            # A line of vLLM's own after them: once the worker has logged it, it has read them.
            with stack.fake.log_path.open("a") as log:
                log.write("INFO 05-01 10:00:04 [default_loader.py:262] Loading weights took ")
                log.write("0.42 seconds\n")
            await seen.event.wait()
            assert stack.worker.lifecycle.current is State.READY
            assert (await stack.status())["state"] == "ready"
            again = await stack.post("/v1/completions", {"prompt": "still there?", "max_tokens": 2})
            assert again.status_code == 200, again.text
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
