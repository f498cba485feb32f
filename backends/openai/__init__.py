"""openai: OpenAI-compatible model servers (vLLM, SGLang, llama.cpp, llama-cpp-python).

Routes ``POST /v1/completions`` and ``POST /v1/chat/completions``, JSON or streamed (server-sent
events ending in ``data: [DONE]``, relayed as they arrive). The client's OpenAI body is checked
field by field (a 422 names each bad field) and then forwarded as it is: fields this backend does
not know (``top_k``, ``ignore_eos``, ``chat_template_kwargs``, …) pass through untouched, and
nothing is added.

Workload is in tokens: the prompt's estimated tokens plus the tokens the request may generate
(``max_tokens``, or ``max_completion_tokens`` for chat) for each of its ``n`` choices. When the
model server reports ``usage`` (always in a JSON answer; in a stream only if the client asked for
it with ``stream_options.include_usage``), the worker records that actual figure, ``prompt_tokens
+ completion_tokens``, as the finished request's workload instead, and so does the benchmark;
llama.cpp's streams report their ``timings`` even unasked, which count the same tokens. The
backend never asks for usage on the client's behalf (:mod:`backends.openai._observe` says why):
a vLLM or SGLang stream without it keeps its estimate.

Environment:

``OPENAI_SERVER``
    ``auto`` (default), ``vllm``, ``sglang``, ``llamacpp`` or ``llama-cpp-python``: which log
    lines mean ready, the health route, and whether requests may run in parallel. ``auto``
    knows vLLM's and llama.cpp's ready lines exactly; for SGLang it takes uvicorn's
    ``Application startup complete.``, which SGLang prints *before* its warm-up request ends
    (SGLang already serves requests then, but the benchmark may pay for the warm-up); set
    ``sglang`` to wait for ``The server is fired up and ready to roll!``. ``llama-cpp-python``
    has no ``/health`` (``GET /v1/models`` is polled instead) and serves one request at a time.
``OPENAI_DEFAULT_MAX_TOKENS``
    tokens assumed for a completion without ``max_tokens`` (default 16, vLLM's and OpenAI's
    default).
``OPENAI_DEFAULT_CHAT_MAX_TOKENS``
    tokens assumed for a chat completion without a limit (default 256). The servers' own default
    is "the rest of the context window", which is no estimate at all; the actual usage replaces
    this guess once the answer reports it.
``MODEL_NAME`` / ``MODEL_ID``
    names the model for the benchmark cache.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from pyworker import (
    Backend,
    DemoServer,
    Endpoint,
    Fields,
    Job,
    LogAction,
    LogRule,
    estimate_tokens,
    json_body,
    json_type_name,
)

from ._observe import UsageOrTimings, observe_usage, observe_usage_or_timings

__all__ = [
    "DEFAULT_SETTINGS",
    "SERVERS",
    "Settings",
    "UsageOrTimings",
    "backend_for",
    "log_rules",
    "make_backend",
    "observe_usage",
    "observe_usage_or_timings",
    "parse_chat",
    "parse_completion",
]

SERVERS = ("auto", "vllm", "sglang", "llamacpp", "llama-cpp-python")
"""The values of ``OPENAI_SERVER``."""

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"

# Bounds no server accepts beyond (and that keep the workload arithmetic finite): OpenAI's API
# caps n at 128; no model's context window comes near 2**24 tokens.
MAX_CHOICES = 128
MAX_TOKENS_LIMIT = 1 << 24

# Chat templates wrap each message in role markers (Llama 3: 5 tokens, ChatML: 4) and prime the
# answer with an assistant header; the estimate charges a typical amount for both.
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_PER_REPLY = 3
# An image or audio part costs the model hundreds of tokens (LLaVA 1.5: 576 per image), none of
# which can be counted without the model's processor; charge a middling flat amount.
NON_TEXT_PART_TOKENS = 256

_DEFAULT_PORTS = {
    "auto": 8000,
    "vllm": 8000,
    "sglang": 30000,
    "llamacpp": 8080,
    "llama-cpp-python": 8000,
}
_FAKE_FLAVORS = {"auto": "vllm", "vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}


@attrs.frozen(kw_only=True)
class Settings:
    """What the environment configures (see the module docstring).

    Attributes:
        server: which model server runs behind the worker, one of :data:`SERVERS`.
        default_max_tokens: tokens assumed for a completion without ``max_tokens``.
        default_chat_max_tokens: tokens assumed for a chat completion without a limit.
    """

    server: str = attrs.field(default="auto", validator=attrs.validators.in_(SERVERS))
    default_max_tokens: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    default_chat_max_tokens: int = attrs.field(default=256, validator=attrs.validators.ge(1))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read the settings from ``env``.

        Raises:
            ValueError: a variable has an impossible value (the message names it).
        """
        server = env.get("OPENAI_SERVER", "").strip().lower() or "auto"
        if server not in SERVERS:
            raise ValueError(f"OPENAI_SERVER must be one of {', '.join(SERVERS)}, not {server!r}")
        return cls(
            server=server,
            default_max_tokens=_positive_env(env, "OPENAI_DEFAULT_MAX_TOKENS", 16),
            default_chat_max_tokens=_positive_env(env, "OPENAI_DEFAULT_CHAT_MAX_TOKENS", 256),
        )


DEFAULT_SETTINGS = Settings()


def _positive_env(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {text!r}")
    return value


# -- validation ------------------------------------------------------------------------------
def _is_token_id(value: object) -> bool:
    return type(value) is int and value >= 0


_PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of token id lists"


def _prompt_tokens(prompt: object) -> tuple[int, int] | str:
    """(estimated prompt tokens, number of prompts) of a completions ``prompt``, or an error.

    A list of strings or of token id lists is a batch: each element is its own prompt.
    """
    if isinstance(prompt, str):
        return estimate_tokens(prompt), 1
    if not isinstance(prompt, list):
        return f"must be {_PROMPT_SHAPES}, not {json_type_name(prompt)}"
    if not prompt:
        return "must not be empty"
    first = prompt[0]
    if isinstance(first, str):
        if all(isinstance(p, str) for p in prompt):
            return sum(estimate_tokens(p) for p in prompt), len(prompt)
    elif isinstance(first, list):
        total = 0
        for ids in prompt:
            if not isinstance(ids, list) or not all(_is_token_id(t) for t in ids):
                break
            if not ids:
                return "must not contain an empty token id list"
            total += len(ids)
        else:
            return total, len(prompt)
    elif all(_is_token_id(t) for t in prompt):
        return len(prompt), 1
    return f"must be {_PROMPT_SHAPES} (token ids are non-negative integers)"


def _content_tokens(content: object) -> int | str:
    """Estimated tokens of a message's ``content``, or an error."""
    if isinstance(content, str):
        return estimate_tokens(content)
    if content is None:
        return 0  # an assistant message that only carries tool calls
    if not isinstance(content, list):
        return f"must be a string or a list of content parts, not {json_type_name(content)}"
    total = 0
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return f"part {index} must be an object with a string 'type'"
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                return f"part {index} is a text part without a string 'text'"
            total += estimate_tokens(text)
        else:
            total += NON_TEXT_PART_TOKENS
    return total


def _messages_tokens(fields: Fields) -> int:
    """Estimated prompt tokens of ``messages``, recording errors per message and field."""
    messages = fields.data.get("messages")
    if messages is None:
        fields.errors["messages"] = "missing parameter"
        return 0
    if not isinstance(messages, list):
        fields.errors["messages"] = f"must be a list of messages, not {json_type_name(messages)}"
        return 0
    if not messages:
        fields.errors["messages"] = "must contain at least one message"
        return 0
    total = CHAT_TOKENS_PER_REPLY
    errors: dict[str, Any] = {}
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            errors[str(index)] = f"must be an object, not {json_type_name(message)}"
            continue
        problems: dict[str, str] = {}
        role = message.get("role")
        if role is None:
            problems["role"] = "missing parameter"
        elif not isinstance(role, str):
            problems["role"] = f"must be a string, not {json_type_name(role)}"
        if "content" not in message and "tool_calls" not in message:
            problems["content"] = "missing parameter"
        else:
            counted = _content_tokens(message.get("content"))
            if isinstance(counted, str):
                problems["content"] = counted
            else:
                total += CHAT_TOKENS_PER_MESSAGE + counted
        if problems:
            errors[str(index)] = problems
        elif "tool_calls" in message:
            total += estimate_tokens(json_body(message["tool_calls"]).decode())
    fields.nested("messages", errors)
    return total


def _check_common(fields: Fields) -> tuple[int, bool]:
    """The sampling fields both routes share; returns (n, stream)."""
    fields.string("model", default=None)
    fields.number("temperature", default=None, minimum=0)
    top_p = fields.number("top_p", default=None, maximum=1)
    if isinstance(top_p, int | float) and not isinstance(top_p, bool) and top_p <= 0:
        fields.errors["top_p"] = "must be greater than 0"
    n = fields.integer("n", default=1, minimum=1, maximum=MAX_CHOICES)
    stream = fields.boolean("stream", default=False)
    options = fields.obj("stream_options", default=None)
    if isinstance(options, dict):
        if stream is not True:
            fields.errors["stream_options"] = "only allowed when stream is true"
        else:
            nested = Fields(options)
            nested.boolean("include_usage", default=None)
            nested.boolean("continuous_usage_stats", default=None)
            fields.nested("stream_options", nested.errors)
    stop = fields.data.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        fields.errors["stop"] = "must be a string or a list of strings"
    return (n if isinstance(n, int) and not isinstance(n, bool) else 1), stream is True


def _limit(fields: Fields, name: str) -> int | None:
    value = fields.integer(name, default=None, minimum=1, maximum=MAX_TOKENS_LIMIT)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_completion(payload: object, settings: Settings = DEFAULT_SETTINGS) -> Job:
    """Validate a ``/v1/completions`` body and weigh it.

    Workload: the prompts' estimated tokens (token id prompts: their count) plus ``max_tokens``
    for each of the ``n`` choices of each prompt.

    Raises:
        PayloadError: a field is missing or wrong (each one named).
    """
    fields = Fields(payload)
    fields.check()  # not an object: nothing else to say
    prompt_tokens, prompts = 0, 1
    prompt = fields.data.get("prompt")
    if prompt is None:
        fields.errors["prompt"] = "missing parameter"
    else:
        counted = _prompt_tokens(prompt)
        if isinstance(counted, str):
            fields.errors["prompt"] = counted
        else:
            prompt_tokens, prompts = counted
    max_tokens = _limit(fields, "max_tokens")
    n, _ = _check_common(fields)
    fields.check()
    wanted = max_tokens or settings.default_max_tokens
    return Job(
        workload=prompt_tokens + prompts * n * wanted,
        body=json_body(payload),
        upstream_path=COMPLETIONS,
    )


def parse_chat(payload: object, settings: Settings = DEFAULT_SETTINGS) -> Job:
    """Validate a ``/v1/chat/completions`` body and weigh it.

    Workload: the messages' estimated tokens plus a template overhead per message, plus
    ``max_completion_tokens`` (or ``max_tokens``) for each of the ``n`` choices.

    Raises:
        PayloadError: a field is missing or wrong (each one named).
    """
    fields = Fields(payload)
    fields.check()  # not an object: nothing else to say
    prompt_tokens = _messages_tokens(fields)
    max_tokens = _limit(fields, "max_tokens")
    # The newer name wins when both are given, as in vLLM and OpenAI.
    max_completion_tokens = _limit(fields, "max_completion_tokens")
    n, _ = _check_common(fields)
    tools = fields.data.get("tools")
    if tools is not None:
        if isinstance(tools, list):
            # Templates render tool definitions into the prompt.
            prompt_tokens += estimate_tokens(json_body(tools).decode())
        else:
            fields.errors["tools"] = f"must be a list, not {json_type_name(tools)}"
    fields.check()
    wanted = max_completion_tokens or max_tokens or settings.default_chat_max_tokens
    return Job(
        workload=prompt_tokens + n * wanted,
        body=json_body(payload),
        upstream_path=CHAT_COMPLETIONS,
    )


# -- benchmark -------------------------------------------------------------------------------
_WORDS_TEXT = (
    "the quick model reads a long question about rivers mountains and cities then answers "
    "with care while the worker counts tokens reports load and keeps every request safe from "
    "loss so that clients see steady latency even when many arrive at once"
)
_WORDS = tuple(_WORDS_TEXT.split())


def benchmark_payload(rng: random.Random) -> dict[str, object]:
    """A typical chat request: a system line, a ~100-word question, a 128-token answer.

    ``ignore_eos`` (honoured by vLLM, SGLang and llama.cpp, ignored by llama-cpp-python) makes
    the server generate every token asked for, so the benchmark's workload is the work done.
    """
    question = " ".join(rng.choices(_WORDS, k=100))
    return {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ],
        "max_tokens": 128,
        "ignore_eos": True,
    }


_HELLO = [{"role": "user", "content": "What is a GPU?"}]
_DEMO_EXAMPLES: tuple[tuple[str, object], ...] = (
    ("/v1/chat/completions", {"messages": _HELLO, "max_tokens": 32}),
    ("/v1/chat/completions", {"messages": _HELLO, "max_tokens": 32, "stream": True}),
)
"""What the demo suggests: a chat answer, then the same streamed."""


def completion_benchmark_payload(rng: random.Random) -> dict[str, object]:
    """A typical completion request: a ~100-word prompt, a 128-token answer."""
    return {"prompt": " ".join(rng.choices(_WORDS, k=100)), "max_tokens": 128, "ignore_eos": True}


# -- log lines -------------------------------------------------------------------------------
# Every rule is anchored to the start of a line as the server itself writes it: these servers
# can log requests, and then a client's prompt is in the log, on a line that begins with the
# server's own prefix and an INFO level. Fragments of those prefixes, composed into each rule
# (in the manner of h11's ABNF fragments):
#
# vLLM's logger (stdout), "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
# date "%m-%d %H:%M:%S" (older builds: no "[" before the file), its multi-line messages (a
# logged traceback) repeated under the same prefix on every line:
#     INFO 05-01 10:00:00 [api_server.py:1043] vLLM API server version 0.11.0
#     ERROR 05-01 10:00:07 [core.py:708] EngineCore failed to start.
# since ~0.10 each process's lines are also prefixed with its name and pid:
#     (APIServer pid=123) INFO 05-01 10:00:00 [api_server.py:1043] …
#     (EngineCore_DP0 pid=140) ERROR 05-01 10:00:07 [core.py:708] …
_VLLM_PROCESS = r"(?:\(\w+ pid=\d+\) )?"
_VLLM_STAMP = r"\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[?[\w.-]+:\d+\] "
# SGLang's logging.basicConfig format (stderr), no level: "[%(asctime)s{rank}] %(message)s",
#     [2026-03-11 13:53:23] The server is fired up and ready to roll!
#     [2026-03-11 13:53:23 TP0] Load weight begin. avail mem=78.50 GB
#     [2026-03-11 13:53:23 DP0 TP0] Scheduler hit an exception: Traceback (most recent …
_SGLANG = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [A-Z]+\d+)*\] "
# llama.cpp's common log (stderr): with --log-prefix / --log-timestamps a "0.00.123.456 " time
# and an "I "/"W "/"E "/"D " level come first; server lines are "srv  " + the function right-
# aligned in 12 columns, 2025 builds log some from "main: ":
#     srv  llama_server: server is listening on http://127.0.0.1:8080
#     main: server is listening on http://127.0.0.1:8080 - starting the main loop
_LLAMACPP = r"(?:\d+\.\d\d\.\d{3}\.\d{3} )?(?:[IWED] )?(?:srv +[\w()]+|main): "
# Where a Python exception's last line starts: at the start of the line (an uncaught
# traceback on stderr, Python's own format), or after vLLM's prefix at ERROR or CRITICAL
# (a traceback vLLM logged), or after SGLang's prefix:
#     torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. …
#     (EngineCore_DP0 pid=140) ERROR 05-01 10:00:07 [core.py:708] ValueError: No available …
_RAISED = _VLLM_PROCESS + rf"(?:(?:ERROR|CRITICAL) {_VLLM_STAMP}|{_SGLANG})?"
# uvicorn's default formatter (vLLM, SGLang and llama-cpp-python's HTTP servers): the level
# and a colon, padded to 9 columns, "INFO:     Application startup complete."; SGLang puts its
# own prefix before it, vLLM >= 0.10 its process prefix.
_UVICORN = rf"(?:{_VLLM_PROCESS}|{_SGLANG})"


def _rule(action: LogAction, substring: str, pattern: str) -> LogRule:
    return LogRule(action=action, substring=substring, pattern=pattern)


# Request log lines quote the client's text: they mean nothing, whatever they say. Each server
# writes them only when asked (vLLM <= 0.10 by default, unless --disable-log-requests; vLLM
# >= 0.10.2 with --enable-log-requests; SGLang with --log-requests; llama.cpp's bodies with
# --verbose). vllm/entrypoints/logger.py (repr of the prompt, then the sampling parameters,
# whose stop strings are the client's too), vllm/v1/engine/async_llm.py:
#     INFO 05-01 10:00:41 [logger.py:43] Received request cmpl-5c1e…-0: prompt: 'CUDA out
#       of memory', params: SamplingParams(n=1, …, stop=[], …), prompt_token_ids: None, …
#     INFO 05-01 10:00:41 [async_llm.py:270] Added request cmpl-5c1e…-0.
#     INFO 05-01 10:00:42 [logger.py:71] Generated response cmpl-5c1e…-0: output: '…', …
# SGLang's tokenizer manager (the request dataclass, strings by repr):
#     [2026-03-11 13:54:02] Receive: obj=GenerateReqInput(text='…', …)
#     [2026-03-11 13:54:03] Finish: obj=GenerateReqInput(text='…', …), out={'text': '…', …}
# llama.cpp's log_server_request (the bodies at debug level, as they came):
#     srv  log_server_r: request:  {"messages":[{"role":"user","content":"…"}],…}
#     srv  log_server_r: response: {"choices":[…],…}
_REQUESTS = (
    _rule(
        LogAction.IGNORE,
        " request ",
        _VLLM_PROCESS + rf"[A-Z]+ {_VLLM_STAMP}(?:Received|Added) request ",
    ),
    _rule(
        LogAction.IGNORE, " response ", _VLLM_PROCESS + rf"[A-Z]+ {_VLLM_STAMP}Generated response "
    ),
    _rule(LogAction.IGNORE, ": obj=", _SGLANG + r"(?:Receive|Finish): obj="),
    _rule(LogAction.IGNORE, "log_server_r: ", _LLAMACPP + r"(?:request|response): "),
)

# Fatal lines first: the first matching rule wins.
_ERRORS = (
    # vLLM (and anything on PyTorch): torch >= 2.5 raises torch.OutOfMemoryError, older
    # torch.cuda.OutOfMemoryError, torch 1.x a RuntimeError, each "CUDA out of memory. …".
    _rule(
        LogAction.MODEL_ERROR,
        "CUDA out of memory",
        _RAISED + r"(?:torch\.(?:cuda\.)?OutOfMemoryError|RuntimeError): CUDA out of memory",
    ),
    # "RuntimeError: Engine core initialization failed. See root cause above. Failed core …"
    _rule(
        LogAction.MODEL_ERROR,
        "Engine core initialization failed",
        _RAISED + r"RuntimeError: Engine core initialization failed",
    ),
    # "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. …"
    _rule(LogAction.MODEL_ERROR, "EngineDeadError", _RAISED + r"(?:[\w.]+\.)?EngineDeadError\b"),
    _rule(
        LogAction.MODEL_ERROR,
        "No available memory for the cache blocks",
        _RAISED + r"ValueError: No available memory for the cache blocks",
    ),
    # "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens
    # that can be stored in KV cache (12000). Try increasing `gpu_memory_utilization` …"
    _rule(
        LogAction.MODEL_ERROR,
        "larger than the maximum number of tokens that can be stored in KV cache",
        _RAISED + r"ValueError: The model's max seq len \(\d+\) is larger than the maximum "
        r"number of tokens that can be stored in KV cache",
    ),
    # transformers / huggingface_hub: "OSError: org/name is not a local folder and is not a
    # valid model identifier listed on 'https://huggingface.co/models'", "OSError: You are
    # trying to access a gated repo."
    _rule(
        LogAction.MODEL_ERROR,
        "is not a local folder and is not a valid model identifier",
        _RAISED + r"OSError: \S+ is not a local folder and is not a valid model identifier",
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "You are trying to access a gated repo",
        _RAISED + r"(?:OSError|(?:[\w.]+\.)?GatedRepoError): You are trying to access a gated",
    ),
    # SGLang: "[…] Initialization failed. warmup error: Traceback (most recent call last):",
    # "[… TP0] Scheduler hit an exception: Traceback …", and the memory check's traceback
    # "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."
    _rule(
        LogAction.MODEL_ERROR,
        "Initialization failed. warmup error",
        _SGLANG + r"Initialization failed\. warmup error",
    ),
    _rule(
        LogAction.MODEL_ERROR, "Scheduler hit an exception", _SGLANG + r"Scheduler hit an exception"
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "Not enough memory. Please try to increase --mem-fraction-static",
        _RAISED + r"RuntimeError: Not enough memory\. Please try to increase "
        r"--mem-fraction-static",
    ),
    # llama.cpp: "srv  llama_server: exiting due to model loading error" (2025: "main: …"),
    # and "… exiting due to HTTP server error" after "couldn't bind HTTP server socket, …"
    _rule(
        LogAction.MODEL_ERROR,
        "exiting due to model loading error",
        _LLAMACPP + r"exiting due to model loading error",
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "exiting due to HTTP server error",
        _LLAMACPP + r"exiting due to HTTP server error",
    ),
    # llama-cpp-python: "ValueError: Failed to load model from file: /models/x.gguf"
    _rule(
        LogAction.MODEL_ERROR,
        "Failed to load model from file",
        _RAISED + r"ValueError: Failed to load model from file",
    ),
    # The port: vLLM binds it itself and raises "OSError: [Errno 98] Address already in use";
    # uvicorn (SGLang, llama-cpp-python) logs "ERROR:    [Errno 98] error while attempting to
    # bind on address ('127.0.0.1', 30000): address already in use".
    _rule(
        LogAction.MODEL_ERROR,
        "Address already in use",
        _RAISED + r"OSError: \[Errno \d+\] Address already in use",
    ),
    _rule(
        LogAction.MODEL_ERROR,
        "error while attempting to bind on address",
        _UVICORN + r"ERROR: +\[Errno \d+\] error while attempting to bind on address",
    ),
)
# uvicorn's "INFO:     Application startup complete." (vLLM >= 0.6: the server is up; under
# SGLang, see "auto" below) and "INFO:     Uvicorn running on http://…" (older vLLM, and
# llama-cpp-python).
_VLLM_READY = (
    _rule(
        LogAction.MODEL_LOADED,
        "Application startup complete.",
        _UVICORN + r"INFO: +Application startup complete\.$",
    ),
    _rule(LogAction.MODEL_LOADED, "Uvicorn running on", _UVICORN + r"INFO: +Uvicorn running on "),
)
_SGLANG_READY = (
    _rule(
        LogAction.MODEL_LOADED,
        "The server is fired up and ready to roll!",
        _SGLANG + r"The server is fired up and ready to roll!",
    ),
)
# 2024 llama.cpp builds logged JSON, and their "HTTP server listening" came *before* the model
# loaded; only "model loaded" meant ready there. In JSON a client's quotes are escaped, so the
# key and value, quoted, are the server's own:
#     {"tid":"1","timestamp":1715000000,"level":"INFO","function":"main","line":3000,
#      "msg":"model loaded"}
_LLAMACPP_READY = (
    _rule(LogAction.MODEL_LOADED, "server is listening on", _LLAMACPP + r"server is listening on "),
    _rule(LogAction.MODEL_LOADED, '"msg":"model loaded"', r'\{"tid":.*"msg":"model loaded"'),
)
_PROGRESS = (
    _rule(
        LogAction.INFO,
        " took ",
        _VLLM_PROCESS + rf"INFO {_VLLM_STAMP}(?:Loading weights|Model loading) took ",
    ),
    _rule(
        LogAction.INFO, "GPU KV cache size", _VLLM_PROCESS + rf"INFO {_VLLM_STAMP}GPU KV cache size"
    ),
    _rule(
        LogAction.INFO,
        "",
        _SGLANG + r"(?:Load weight end|KV Cache is allocated|Capture cuda graph end)\b",
    ),
    _rule(LogAction.INFO, "load_model: loading model", _LLAMACPP + r"loading model "),
    _rule(
        LogAction.INFO, '"msg":"HTTP server listening"', r'\{"tid":.*"msg":"HTTP server listening"'
    ),
)

_READY_RULES = {
    # SGLang's uvicorn lines come before its warm-up ends; "auto" takes them (see above).
    "auto": _VLLM_READY + _LLAMACPP_READY + _SGLANG_READY,
    "vllm": _VLLM_READY,
    "sglang": _SGLANG_READY,
    "llamacpp": _LLAMACPP_READY,
    "llama-cpp-python": (_VLLM_READY[1],),
}


def log_rules(server: str) -> tuple[LogRule, ...]:
    """The log rules for ``server`` (one of :data:`SERVERS`): request log lines first (they
    mean nothing, whatever they quote), then fatal lines, ready lines and progress."""
    return _REQUESTS + _ERRORS + _READY_RULES[server] + _PROGRESS


# -- the backend -----------------------------------------------------------------------------
def _demo_argv(flavor: str) -> Callable[[int, str], list[str]]:
    def argv(port: int, log_path: str) -> list[str]:
        return [
            sys.executable,
            "-u",
            "-m",
            "backends.openai.fake",
            "--port",
            str(port),
            "--log",
            log_path,
            "--flavor",
            flavor,
        ]

    return argv


def _model_id(env: Mapping[str, str], server: str) -> str:
    name = env.get("MODEL_NAME") or env.get("MODEL_ID") or "openai-demo"
    # The same model serves at a different speed on another server.
    return f"{name} ({server})"


def backend_for(settings: Settings, *, model_id: str = "") -> Backend:
    """The backend for ``settings``.

    Args:
        settings: which server, and the default token budgets.
        model_id: names the model for the benchmark cache (default: the demo's).
    """
    server = settings.server
    one_at_a_time = server == "llama-cpp-python"
    flavor = _FAKE_FLAVORS.get(server)
    # Only llama.cpp's streams carry timings; elsewhere a search for them is wasted per chunk.
    observe = observe_usage_or_timings if server in {"auto", "llamacpp"} else observe_usage
    return Backend(
        name="openai",
        model_server_url=f"http://127.0.0.1:{_DEFAULT_PORTS[server]}",
        endpoints=(
            Endpoint(
                route=COMPLETIONS,
                parse=lambda payload: parse_completion(payload, settings),
                benchmark_payload=completion_benchmark_payload,
                observe=observe,
            ),
            Endpoint(
                route=CHAT_COMPLETIONS,
                parse=lambda payload: parse_chat(payload, settings),
                benchmark_payload=benchmark_payload,
                observe=observe,
            ),
        ),
        benchmark_route=CHAT_COMPLETIONS,
        log_rules=log_rules(server),
        allow_parallel_requests=not one_at_a_time,
        # llama-cpp-python has no /health; listing the models is its cheapest answer.
        health_path="/v1/models" if one_at_a_time else "/health",
        model_id=model_id or _model_id({}, server),
        # No fake imitates llama-cpp-python: its demo is the real server (see the tests).
        demo=(
            DemoServer(argv=_demo_argv(flavor), examples=_DEMO_EXAMPLES)
            if flavor is not None
            else None
        ),
    )


def make_backend(env: Mapping[str, str]) -> Backend:
    """The backend as the environment configures it (see the module docstring).

    Raises:
        ValueError: a variable has an impossible value (the message names it).
    """
    settings = Settings.from_env(env)
    return backend_for(settings, model_id=_model_id(env, settings.server))
