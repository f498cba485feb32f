"""A fake OpenAI-compatible model server imitating vLLM, SGLang or llama.cpp's ``llama-server``.

``python -m backends.openai.fake --port P --log PATH --flavor vllm|sglang|llamacpp [knobs]``
(``--help`` lists the knobs). It imitates its flavor's start-up and log lines (on the stream
the real server uses), health route, response and stream shapes, error bodies and reaction to
a client going away, as catalogued in the model-server reference (§2-4, §6):

* **vllm**: ``INFO MM-DD hh:mm:ss [file.py:N]`` lines on stdout; nothing listens until the
  model has loaded, then uvicorn's ``INFO:     Application startup complete.`` on stderr;
  ``GET /health`` 200 with an empty body; ids ``cmpl-``/``chatcmpl-``; nested errors
  ``{"error": {"message", "type", "param", "code"}}`` (validation: 400 ``BadRequestError``;
  an unknown ``model``: 404).
* **sglang**: ``[date time]`` lines on stderr; listens after loading, prints uvicorn's lines,
  then warms up (``--warmup``) with ``GET /health`` answering 503 until
  ``The server is fired up and ready to roll!``; flat errors ``{"object": "error", …}``.
* **llamacpp**: ``srv  <function>: …`` lines on stderr; listens *before* loading and answers
  every route 503 ``{"error": {"code": 503, "message": "Loading model", "type":
  "unavailable_error"}}`` until ``srv  llama_server: server is listening on http://…``; then
  ``GET /health`` is 200 ``{"status": "ok"}``; answers carry a ``timings`` object.

All flavors serve ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream`` →
``data: {…}`` events with a space, ending ``data: [DONE]``; with ``stream_options.include_usage``
a last event with ``"choices": []`` and ``usage``), and ``GET /v1/models``. ``GET /stats``
(fake-only) serves the counters of :class:`Stats`.

The fake's "tokenizer" is the worker's estimate plus what a real one adds: a BOS token per
prompt, and Llama 3 chat-template tokens (5 per message, 4 to prime the answer). So the
``usage`` it reports differs from the worker's estimate the way a real server's does. Every
choice generates exactly ``max_tokens`` tokens (``finish_reason: "length"``); without
``max_tokens`` a completion gets 16 (vLLM, SGLang) and everything else the rest of the context
window (``--max-model-len``). A request costs its prompt tokens plus its generated tokens in the
capacity model (prompt first, then one unit per token), so streams emit tokens as generated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import sys
import time
import types
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import attrs
import trio

from backends._fakekit import (
    CapacityModel,
    HTTPServer,
    Knobs,
    Request,
    Response,
    StreamResponse,
    knob_parser,
    write_port_file,
)
from backends._fakekit import Stats as BaseStats
from pyworker._tokens import estimate_tokens

FLAVORS = ("vllm", "sglang", "llamacpp")
DEFAULT_PORTS = {"vllm": 8000, "sglang": 30000, "llamacpp": 8080}
DEFAULT_MODEL = "fake-org/Fake-Llama-3-8B-Instruct"
DEFAULT_MAX_MODEL_LEN = 4096
COMPLETION_DEFAULT_MAX_TOKENS = 16
VLLM_VERSION = "0.11.0"
LLAMACPP_BUILD = "b6500-1d0125bc"

# The fake tokenizer's additions to the worker's estimate (see the module docstring).
BOS_TOKENS = 1
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_TOKENS_PER_REPLY = 4
NON_TEXT_PART_TOKENS = 576

_VOCABULARY_TEXT = (
    "the a model server token stream answer prompt worker load request queue batch light "
    "river stone cloud garden window paper music quiet bright swift gentle ancient green "
    "blue golden silver morning evening winter summer story bridge mountain ocean forest "
    "city road friend voice dream idea number letter signal engine circuit"
)
_VOCABULARY = tuple(_VOCABULARY_TEXT.split())
_TABLE_SIZE = 4096
_DONE = b"data: [DONE]\n\n"
# A placeholder content whose JSON encoding is split out of a serialised event, so that each
# token's event is two constant byte strings around the token's pre-encoded JSON string.
_SLOT = "\x00token\x00"
_SLOT_JSON = json.dumps(_SLOT).encode()


@attrs.frozen(kw_only=True)
class Options:
    """The fake's own knobs, beside the kit's :class:`~backends._fakekit.Knobs`.

    Attributes:
        flavor: which server to imitate, one of :data:`FLAVORS`.
        model: the served model name.
        max_model_len: the context window, in tokens.
        warmup: SGLang only: seconds of warm-up between listening and the ready line.
        fail_warmup: SGLang only: fail the warm-up with this reason (exit 1).
    """

    flavor: str = attrs.field(default="vllm", validator=attrs.validators.in_(FLAVORS))
    model: str = DEFAULT_MODEL
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    warmup: float = 0.5
    fail_warmup: str | None = None


# -- log lines -------------------------------------------------------------------------------
def _write(stream: Any, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


@attrs.define(eq=False)
class Console:
    """Writes the flavor's log lines to the stream the real server uses.

    With ``--log`` both stdout and stderr are the log file (as ``server >log 2>&1``), so the
    streams interleave in the order written.
    """

    flavor: str

    def vllm(self, where: str, message: str, level: str = "INFO") -> None:
        """A vLLM logger line (stdout): ``INFO 05-01 10:00:00 [api_server.py:1043] …``."""
        stamp = time.strftime("%m-%d %H:%M:%S")
        _write(sys.stdout, f"{level} {stamp} [{where}] {message}")

    def sglang(self, message: str, *, rank: str = "") -> None:
        """An SGLang logger line (stderr): ``[2026-03-11 13:53:23 TP0] …``."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        _write(sys.stderr, f"[{stamp}{' ' + rank if rank else ''}] {message}")

    def uvicorn(self, message: str, level: str = "INFO") -> None:
        """A uvicorn lifecycle line (stderr), ``[date]``-prefixed under SGLang."""
        line = f"{level + ':':<10}{message}"
        if self.flavor == "sglang":
            self.sglang(line)
        else:
            _write(sys.stderr, line)

    def access(self, method: str, path: str, status: int, reason: str) -> None:
        """A uvicorn access line (stdout), or llama.cpp's request line (stderr)."""
        if self.flavor == "llamacpp":
            self.srv("log_server_r", f"request: {method} {path} 127.0.0.1 {status}")
            return
        line = f'{"INFO:":<10}127.0.0.1:0 - "{method} {path} HTTP/1.1" {status} {reason}'
        if self.flavor == "sglang":
            line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}"
        _write(sys.stdout, line)

    def srv(self, function: str, message: str) -> None:
        """A llama.cpp server line (stderr): ``srv  llama_server: …``."""
        _write(sys.stderr, f"srv  {function:>12}: {message}")

    def slot(self, function: str, slot: int, task: int, message: str) -> None:
        """A llama.cpp slot line (stderr): ``slot launch_slot_: id  0 | task 5 | …``."""
        _write(sys.stderr, f"slot {function:>12}: id {slot:2d} | task {task} | {message}")

    def raw(self, text: str) -> None:
        """Lines as they are (tracebacks, C-level messages) on stderr."""
        _write(sys.stderr, text)


def _redirect_output(path: str | None) -> None:
    """Send stdout and stderr (descriptors 1 and 2) to ``path``, appending."""
    if path is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


# -- requests --------------------------------------------------------------------------------
@attrs.define(kw_only=True)
class Stats(BaseStats):
    """The kit's counters, plus the prompt tokens of the generation requests admitted."""

    prompt_tokens: int = 0


class ApiError(Exception):
    """An error answer, shaped by the flavor.

    Args:
        status: the HTTP status.
        message: what went wrong.
        kind: ``validation``, ``context`` (prompt too long), ``not_found``, ``internal``.
    """

    def __init__(self, status: int, message: str, kind: str = "validation") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


@attrs.frozen(kw_only=True)
class Generation:
    """A validated generation request.

    Attributes:
        chat: chat completions (else completions).
        model: the model name to echo.
        prompt_tokens: tokens of each prompt (completions take a batch).
        max_tokens: tokens each choice generates.
        n: choices per prompt.
        stream: answer with server-sent events.
        include_usage: end the stream with a usage event.
        continuous_usage: put the running usage on every event (vLLM).
        seed_text: what the generated text is derived from.
    """

    chat: bool
    model: str
    prompt_tokens: tuple[int, ...]
    max_tokens: int
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    seed_text: str

    @property
    def choices(self) -> int:
        """Choices in the answer: ``n`` per prompt."""
        return len(self.prompt_tokens) * self.n

    @property
    def total_prompt(self) -> int:
        """Prompt tokens of all prompts."""
        return sum(self.prompt_tokens)

    @property
    def total_completion(self) -> int:
        """Tokens generated over all choices."""
        return self.choices * self.max_tokens


def _type_ok(value: object, kind: type | types.UnionType) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _content_tokens(content: object) -> int:
    if isinstance(content, str):
        return estimate_tokens(content)
    if content is None:
        return 0
    if not isinstance(content, list):
        raise ApiError(400, "messages: content must be a string or a list of parts")
    total = 0
    for part in content:
        if not isinstance(part, dict):
            raise ApiError(400, "messages: each content part must be an object")
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            total += estimate_tokens(part["text"])
        else:
            total += NON_TEXT_PART_TOKENS
    return total


def _prompt_counts(prompt: object) -> tuple[int, ...]:
    if isinstance(prompt, str):
        return (estimate_tokens(prompt) + BOS_TOKENS,)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return tuple(estimate_tokens(p) + BOS_TOKENS for p in prompt)
        if all(_type_ok(t, int) for t in prompt):
            return (len(prompt),)
        if all(isinstance(p, list) and p and all(_type_ok(t, int) for t in p) for p in prompt):
            return tuple(len(p) for p in prompt)
    raise ApiError(400, "prompt: must be a string, a list of strings or token ids")


def parse_generation(body: bytes, *, chat: bool, options: Options) -> Generation:
    """Validate a generation request as the flavor's server would.

    Raises:
        ApiError: the server's 400 (or 404 for an unknown model).
    """
    flavor = options.flavor
    try:
        data = json.loads(body)
    except ValueError as exc:
        if flavor == "llamacpp":
            message = f"[json.exception.parse_error.101] parse error: {exc}"
        else:
            message = f"JSON decode error: {exc}"
        raise ApiError(400, message) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model: Input should be a valid string")
    if flavor == "vllm" and model is not None and model != options.model:
        raise ApiError(404, f"The model `{model}` does not exist.", "not_found")
    if chat:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: Field required (a non-empty list)")
        prompt = 1 + CHAT_TOKENS_PER_REPLY  # BOS, then the assistant header
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ApiError(400, "messages: each message needs a string role")
            prompt += CHAT_TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        counts: tuple[int, ...] = (prompt,)
        seed_text = json.dumps(messages)
    else:
        if "prompt" not in data:
            raise ApiError(400, "prompt: Field required")
        counts = _prompt_counts(data["prompt"])
        seed_text = json.dumps(data["prompt"])
    limit = data.get("max_completion_tokens") if chat else None
    if limit is None:
        limit = data.get("max_tokens")
    if limit is not None and (not _type_ok(limit, int) or limit < 1):
        raise ApiError(400, f"max_tokens must be at least 1, got {limit}.")
    n = data.get("n", 1)
    if n is None:
        n = 1
    if not _type_ok(n, int) or n < 1:
        raise ApiError(400, f"n must be at least 1, got {n}.")
    temperature = data.get("temperature")
    if temperature is not None and (not _type_ok(temperature, int | float) or temperature < 0):
        raise ApiError(400, f"temperature must be non-negative, got {temperature}.")
    top_p = data.get("top_p")
    if top_p is not None and (not _type_ok(top_p, int | float) or not 0 < top_p <= 1):
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}.")
    stream = data.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream: Input should be a valid boolean")
    stream_options = data.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise ApiError(400, "stream_options: Input should be a valid dictionary")
        if not stream and flavor == "vllm":
            raise ApiError(400, "Stream options can only be defined when `stream=True`.")
    else:
        stream_options = {}
    longest = max(counts)
    room = options.max_model_len - longest
    if room < 1:
        raise ApiError(400, _context_message(options, longest, limit or 1), "context")
    if limit is None:
        default_limit = not chat and flavor != "llamacpp"
        limit = COMPLETION_DEFAULT_MAX_TOKENS if default_limit else room
    if longest + limit > options.max_model_len:
        if flavor == "llamacpp":
            limit = room  # llama.cpp stops at the end of the context instead
        else:
            raise ApiError(400, _context_message(options, longest, limit), "context")
    return Generation(
        chat=chat,
        model=model or options.model,
        prompt_tokens=counts,
        max_tokens=limit,
        n=n,
        stream=stream,
        include_usage=stream and stream_options.get("include_usage") is True,
        continuous_usage=stream and stream_options.get("continuous_usage_stats") is True,
        seed_text=seed_text,
    )


def _context_message(options: Options, prompt: int, wanted: int) -> str:
    if options.flavor == "llamacpp":
        return "the request exceeds the available context size, try increasing it"
    return (
        f"This model's maximum context length is {options.max_model_len} tokens. However, you "
        f"requested {prompt + wanted} tokens ({prompt} in the messages, {wanted} in the "
        "completion). Please reduce the length of the messages or completion."
    )


def error_body(flavor: str, error: ApiError) -> dict[str, Any]:
    """The flavor's JSON error body for ``error``."""
    status = error.status
    if flavor == "llamacpp":
        kinds = {
            "validation": "invalid_request_error",
            "context": "exceed_context_size_error",
            "not_found": "not_found_error",
            "internal": "server_error",
            "unavailable": "unavailable_error",
        }
        return {"error": {"code": status, "message": error.message, "type": kinds[error.kind]}}
    types = {
        "validation": "BadRequestError",
        "context": "BadRequestError",
        "not_found": "NotFoundError",
        "internal": "InternalServerError",
        "unavailable": "ServiceUnavailableError",
    }
    if flavor == "sglang":
        # SGLang maps request-model validation failures to "Bad Request".
        kind = "Bad Request" if error.kind == "validation" else types[error.kind]
        return {
            "object": "error",
            "message": error.message,
            "type": kind,
            "param": None,
            "code": status,
        }
    body = {"message": error.message, "type": types[error.kind], "param": None, "code": status}
    return {"error": body}


_LOADING = ApiError(503, "Loading model", "unavailable")


# -- answers ---------------------------------------------------------------------------------
@attrs.define(eq=False)
class _Answer:
    """Shapes one request's answer and events for the flavor."""

    flavor: str
    gen: Generation
    id: str
    created: int
    started: float

    @classmethod
    def start(cls, flavor: str, gen: Generation) -> _Answer:
        if flavor == "sglang":
            ident = uuid.uuid4().hex
        elif flavor == "llamacpp":
            ident = "chatcmpl-" + secrets.token_hex(16)
        else:
            ident = ("chatcmpl-" if gen.chat else "cmpl-") + uuid.uuid4().hex
        return cls(flavor, gen, ident, int(time.time()), time.monotonic())

    @property
    def object_name(self) -> str:
        return "chat.completion" if self.gen.chat else "text_completion"

    def usage(self, completion: int | None = None) -> dict[str, Any]:
        gen = self.gen
        done = gen.total_completion if completion is None else completion
        prompt = gen.total_prompt
        if self.flavor == "llamacpp":
            return {
                "completion_tokens": done,
                "prompt_tokens": prompt,
                "total_tokens": prompt + done,
            }
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + done,
            "completion_tokens": done,
        }
        if self.flavor == "vllm":
            usage["prompt_tokens_details"] = None
        return usage

    def timings(self) -> dict[str, float]:
        """llama.cpp's per-request timings (milliseconds)."""
        elapsed = (time.monotonic() - self.started) * 1000
        prompt, predicted = self.gen.total_prompt, self.gen.total_completion
        prompt_ms = elapsed * prompt / max(prompt + predicted, 1)
        predicted_ms = elapsed - prompt_ms
        return {
            "prompt_n": prompt,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_token_ms": round(prompt_ms / max(prompt, 1), 3),
            "prompt_per_second": round(prompt * 1000 / max(prompt_ms, 1e-3), 3),
            "predicted_n": predicted,
            "predicted_ms": round(predicted_ms, 3),
            "predicted_per_token_ms": round(predicted_ms / max(predicted, 1), 3),
            "predicted_per_second": round(predicted * 1000 / max(predicted_ms, 1e-3), 3),
        }

    def _envelope(self, choices: list[dict[str, Any]], *, chunk: bool) -> dict[str, Any]:
        kind = self.object_name + (".chunk" if chunk and self.gen.chat else "")
        if self.flavor == "llamacpp":
            return {
                "choices": choices,
                "created": self.created,
                "model": self.gen.model,
                "system_fingerprint": LLAMACPP_BUILD,
                "object": kind,
                "id": self.id,
            }
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.gen.model,
            "choices": choices,
        }

    def _choice(
        self, index: int, content: str, finish: str | None, *, chunk: bool
    ) -> dict[str, Any]:
        chat = self.gen.chat
        choice: dict[str, Any] = {"index": index}
        if chat and chunk:
            if finish is None:
                choice["delta"] = {"content": content}
            else:
                choice["delta"] = {} if self.flavor == "llamacpp" else {"content": ""}
        elif chat:
            choice["message"] = {"role": "assistant", "content": content}
            if self.flavor == "vllm":
                choice["message"]["tool_calls"] = []
        else:
            choice["text"] = content
        if self.flavor != "llamacpp":
            choice["logprobs"] = None
        choice["finish_reason"] = finish
        if self.flavor == "vllm" and (finish is not None or not chat):
            choice["stop_reason"] = None
        return choice

    def whole(self, texts: list[str]) -> bytes:
        """The JSON answer with every choice's text."""
        choices = [self._choice(i, text, "length", chunk=False) for i, text in enumerate(texts)]
        body = self._envelope(choices, chunk=False)
        body["usage"] = self.usage()
        if self.flavor == "llamacpp":
            body["timings"] = self.timings()
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def event(obj: object) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def role_event(self, index: int) -> bytes:
        choice: dict[str, Any] = {"index": index, "delta": {"role": "assistant", "content": ""}}
        if self.flavor != "llamacpp":
            choice["logprobs"] = None
        choice["finish_reason"] = None
        return self.event(self._envelope([choice], chunk=True))

    def token_template(self, index: int) -> tuple[bytes, bytes]:
        """The bytes before and after a token's JSON string in its event."""
        encoded = self.event(
            self._envelope([self._choice(index, _SLOT, None, chunk=True)], chunk=True)
        )
        head, _, tail = encoded.partition(_SLOT_JSON)
        return head, tail

    def token_event_with_usage(self, index: int, word: str, produced: int) -> bytes:
        body = self._envelope([self._choice(index, word, None, chunk=True)], chunk=True)
        body["usage"] = self.usage(produced)
        return self.event(body)

    def finish_event(self, index: int, produced: int) -> bytes:
        body = self._envelope([self._choice(index, "", "length", chunk=True)], chunk=True)
        if self.gen.continuous_usage:
            body["usage"] = self.usage(produced)
        if self.flavor == "llamacpp":
            body["timings"] = self.timings()
        return self.event(body)

    def usage_event(self) -> bytes:
        body = self._envelope([], chunk=True)
        body["usage"] = self.usage()
        return self.event(body)


# -- the server ------------------------------------------------------------------------------
Route = Callable[[Request], Awaitable[Response | StreamResponse]]


@attrs.define(eq=False)
class OpenAIFake:
    """The fake's request handling (:meth:`handle`), state and counters.

    Attributes:
        knobs: rates, limits and failure injection.
        options: flavor and model.
        console: where log lines go.
        state: ``loading``, ``warming`` (SGLang's warm-up) or ``ready``.
        stats: the counters served by ``GET /stats``.
    """

    knobs: Knobs
    options: Options
    console: Console
    state: str = "loading"
    stats: Stats = attrs.field(init=False, factory=Stats)
    _capacity: CapacityModel = attrs.field(init=False)
    _words: tuple[str, ...] = attrs.field(init=False)
    _encoded: tuple[bytes, ...] = attrs.field(init=False)
    _error_rng: random.Random = attrs.field(init=False)
    _tasks: int = attrs.field(init=False, default=0)
    _free_slots: list[int] = attrs.field(init=False, factory=list)
    _routes: dict[str, tuple[str, Route]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._capacity = self.knobs.capacity_model()
        rng = random.Random(self.knobs.seed)
        self._words = tuple(" " + rng.choice(_VOCABULARY) for _ in range(_TABLE_SIZE))
        self._encoded = tuple(json.dumps(word).encode() for word in self._words)
        self._error_rng = random.Random(f"errors:{self.knobs.seed}")
        slots = self.knobs.max_parallel or 4
        self._free_slots = list(range(slots - 1, -1, -1))
        routes: dict[str, tuple[str, Route]] = {
            "/health": ("GET", self._health),
            "/v1/models": ("GET", self._models),
            "/v1/completions": ("POST", self._completions),
            "/v1/chat/completions": ("POST", self._chat_completions),
            "/stats": ("GET", self._stats),
        }
        flavor = self.options.flavor
        if flavor == "vllm":
            routes["/version"] = ("GET", self._version)
            routes["/ping"] = ("GET", self._health)
        elif flavor == "sglang":
            routes["/ping"] = ("GET", self._ping)
            routes["/health_generate"] = ("GET", self._health)
        else:
            routes["/v1/health"] = ("GET", self._health)
            routes["/models"] = ("GET", self._models)
            routes["/chat/completions"] = ("POST", self._chat_completions)
        self._routes = routes

    # -- dispatch ------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response | StreamResponse:
        """Answer one request (the kit's :data:`~backends._fakekit.Handler`)."""
        flavor = self.options.flavor
        if flavor == "llamacpp" and self.state != "ready" and request.path != "/stats":
            # llama-server's pre-routing middleware answers everything this way while loading.
            response: Response | StreamResponse = self._error(_LOADING)
        else:
            route = self._routes.get(request.path)
            if route is None:
                response = self._not_found()
            elif request.method != route[0]:
                response = Response(
                    status=405,
                    body=b'{"detail":"Method Not Allowed"}',
                    headers=((b"allow", route[0].encode()),),
                )
            else:
                response = await route[1](request)
        if response.status >= 400:
            self.stats.errors += 1
        if request.path != "/stats":
            reason = _REASONS.get(response.status, "")
            self.console.access(request.method, request.path, response.status, reason)
        return response

    def _error(self, error: ApiError) -> Response:
        return Response.json(error_body(self.options.flavor, error), status=error.status)

    def _not_found(self) -> Response:
        if self.options.flavor == "llamacpp":
            return self._error(ApiError(404, "File Not Found", "not_found"))
        return Response.json({"detail": "Not Found"}, status=404)

    # -- small routes ----------------------------------------------------------------------------
    async def _health(self, request: Request) -> Response:
        if self.knobs.slow_health:
            await trio.sleep(self.knobs.slow_health)
        flavor = self.options.flavor
        if flavor == "llamacpp":
            return Response.json({"status": "ok"})
        if self.state != "ready":
            return Response(status=503, content_type=b"text/plain")
        return Response(status=200, content_type=b"text/plain")

    async def _ping(self, request: Request) -> Response:
        return Response(status=200, content_type=b"text/plain")

    async def _version(self, request: Request) -> Response:
        return Response.json({"version": VLLM_VERSION})

    async def _stats(self, request: Request) -> Response:
        return Response.json(attrs.asdict(self.stats))

    async def _models(self, request: Request) -> Response:
        options = self.options
        model: dict[str, Any] = {
            "id": options.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}[
                options.flavor
            ],
        }
        if options.flavor == "llamacpp":
            model["meta"] = {"n_ctx_train": options.max_model_len, "n_vocab": 128256}
        else:
            model.update(root=options.model, parent=None, max_model_len=options.max_model_len)
            if options.flavor == "vllm":
                model["permission"] = []
        return Response.json({"object": "list", "data": [model]})

    # -- generation ------------------------------------------------------------------------------
    async def _completions(self, request: Request) -> Response | StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat_completions(self, request: Request) -> Response | StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, *, chat: bool) -> Response | StreamResponse:
        try:
            gen = parse_generation(request.body, chat=chat, options=self.options)
        except ApiError as error:
            return self._error(error)
        if self.knobs.error_rate and self._error_rng.random() < self.knobs.error_rate:
            self._log_failure("injected failure (--error-rate)")
            return self._error(ApiError(500, "injected failure", "internal"))
        answer = _Answer.start(self.options.flavor, gen)
        offset = zlib.crc32(gen.seed_text.encode("utf-8", "surrogatepass")) % _TABLE_SIZE
        if gen.stream:
            headers: tuple[tuple[bytes, bytes], ...] = ((b"cache-control", b"no-cache"),)
            if self.options.flavor == "llamacpp":
                headers += ((b"x-accel-buffering", b"no"),)
            return StreamResponse(chunks=self._stream(request, answer, offset), headers=headers)
        texts: list[list[str]] = [[] for _ in range(gen.choices)]
        words = self._words
        async with aclosing(self._run(request, answer)) as tokens:
            async for choice, produced in tokens:
                texts[choice].append(words[(offset + choice * 7 + produced) % _TABLE_SIZE])
        return Response(status=200, body=answer.whole(["".join(t) for t in texts]))

    async def _stream(self, request: Request, answer: _Answer, offset: int) -> AsyncIterator[bytes]:
        gen = answer.gen
        templates = [answer.token_template(i) for i in range(gen.choices)]
        encoded = self._encoded
        words = self._words
        total = 0
        started = False
        # Closed explicitly: when the client leaves, this generator is closed at a yield, and
        # the capacity job inside _run must be released now, not at garbage collection.
        async with aclosing(self._run(request, answer)) as tokens:
            async for choice, produced in tokens:
                if not started:
                    started = True
                    if gen.chat:
                        for index in range(gen.choices):
                            yield answer.role_event(index)
                total += 1
                position = (offset + choice * 7 + produced) % _TABLE_SIZE
                if gen.continuous_usage:
                    yield answer.token_event_with_usage(choice, words[position], total)
                else:
                    head, tail = templates[choice]
                    yield head + encoded[position] + tail
        for index in range(gen.choices):
            yield answer.finish_event(index, total)
        if gen.include_usage:
            yield answer.usage_event()
        yield _DONE

    async def _run(
        self, request: Request, answer: _Answer
    ) -> AsyncGenerator[tuple[int, int], None]:
        """Serve the request in the capacity model; yields (choice, its token number)."""
        gen = answer.gen
        stats = self.stats
        stats.in_flight += 1
        stats.max_concurrent = max(stats.max_concurrent, stats.in_flight)
        stats.prompt_tokens += gen.total_prompt
        self._tasks += 1
        task = self._tasks
        slot = self._free_slots.pop() if self._free_slots else 0
        self._log_start(answer, slot, task)
        finished = False
        wanted = gen.total_completion
        choices = gen.choices
        try:
            async with self._capacity.job(gen.total_prompt + wanted) as job:
                await job.serve(gen.total_prompt)
                produced = 0
                while produced < wanted:
                    await self._fail_point(answer, produced)
                    count = await job.serve_some(self._next_batch(produced, wanted))
                    for _ in range(count):
                        # Choices advance together, one token each in turn, as in a batch.
                        yield produced % choices, produced // choices
                        produced += 1
                        stats.tokens_generated += 1
                await self._fail_point(answer, produced)
            finished = True
        finally:
            stats.in_flight -= 1
            self._free_slots.append(slot)
            if finished:
                stats.completed += 1
            elif request.client_gone:
                stats.cancelled += 1
            self._log_end(answer, slot, task, finished, request.client_gone)

    def _next_batch(self, produced: int, wanted: int) -> int:
        """How many tokens to wait for next: all that are left, up to a failure point."""
        limit = wanted - produced
        for point in (self.knobs.hang_after, self.knobs.crash_after):
            if point is not None and point > produced:
                limit = min(limit, point - produced)
        return limit

    async def _fail_point(self, answer: _Answer, produced: int) -> None:
        """Crash or hang here if the knobs say so (after ``produced`` tokens)."""
        if produced == self.knobs.crash_after:
            self._log_failure(f"request {answer.id}: crashing after {produced} tokens")
            if self.options.flavor == "vllm":
                self.console.vllm("core.py:634", "EngineCore encountered a fatal error.", "ERROR")
                self.console.raw(
                    "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue."
                )
            os._exit(1)
        if produced == self.knobs.hang_after:
            self._log_failure(f"request {answer.id}: hanging after {produced} tokens")
            await trio.sleep_forever()

    # -- per-request log lines -------------------------------------------------------------------
    def _log_failure(self, message: str) -> None:
        flavor = self.options.flavor
        if flavor == "vllm":
            self.console.vllm("fake.py:1", message, "WARNING")
        elif flavor == "sglang":
            self.console.sglang(message)
        else:
            self.console.srv("fake", message)

    def _log_start(self, answer: _Answer, slot: int, task: int) -> None:
        if self.options.flavor == "llamacpp":
            self.console.slot("launch_slot_", slot, task, "processing task")

    def _log_end(self, answer: _Answer, slot: int, task: int, finished: bool, gone: bool) -> None:
        flavor = self.options.flavor
        if flavor == "llamacpp":
            if not finished and gone:
                self.console.srv("cancel_tasks", f"cancel task, id_task = {task}")
            tokens = answer.gen.total_prompt + answer.gen.total_completion
            self.console.slot(
                "release", slot, task, f"stop processing: n_tokens = {tokens}, truncated = 0"
            )
            if not self.stats.in_flight:
                self.console.srv("update_slots", "all slots are idle")
        elif not finished and gone:
            if flavor == "vllm":
                self.console.vllm("async_llm.py:420", f"Aborted request {answer.id}.")
            else:
                self.console.sglang(f"Abort request {answer.id}")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# -- start-up --------------------------------------------------------------------------------
_GGUF = "/models/{model}.gguf"


async def _listen(nursery: trio.Nursery, fake: OpenAIFake, knobs: Knobs) -> HTTPServer | None:
    """Start serving; None (after the flavor's error lines) if the port cannot be bound."""
    server = HTTPServer(fake.handle, host=knobs.host, port=knobs.port)
    try:
        port = await nursery.start(server.serve)
    except OSError as exc:
        console = fake.console
        flavor = fake.options.flavor
        if flavor == "vllm":
            console.raw("Traceback (most recent call last):")
            console.raw(
                '  File "/usr/lib/python3.12/site-packages/vllm/entrypoints/openai/api_server.py", '
                "line 1920, in create_server_socket"
            )
            console.raw("    sock.bind(addr)")
            console.raw(f"OSError: [Errno {exc.errno}] Address already in use")
        elif flavor == "sglang":
            console.uvicorn(
                f"[Errno {exc.errno}] error while attempting to bind on address "
                f"('{knobs.host}', {knobs.port}): address already in use",
                "ERROR",
            )
        else:
            console.srv(
                "start",
                f"couldn't bind HTTP server socket, hostname: {knobs.host}, port: {knobs.port}",
            )
            console.srv("llama_server", "exiting due to HTTP server error")
        return None
    if knobs.port_file is not None:
        write_port_file(knobs.port_file, port)
    return server


def _uvicorn_started(console: Console, url: str, *, running_line: bool) -> None:
    console.uvicorn(f"Started server process [{os.getpid()}]")
    console.uvicorn("Waiting for application startup.")
    console.uvicorn("Application startup complete.")
    if running_line:
        console.uvicorn(f"Uvicorn running on {url} (Press CTRL+C to quit)")


async def _start_vllm(nursery: trio.Nursery, fake: OpenAIFake, knobs: Knobs) -> int | None:
    console, options = fake.console, fake.options
    model, delay = options.model, knobs.load_delay
    console.vllm("api_server.py:1837", f"vLLM API server version {VLLM_VERSION}")
    console.vllm(
        "utils.py:326",
        f"non-default args: {{'model': '{model}', 'port': {knobs.port}, "
        f"'max_model_len': {options.max_model_len}}}",
    )
    console.vllm(
        "core.py:75",
        f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: model='{model}', "
        f"max_seq_len={options.max_model_len}",
    )
    console.vllm("gpu_model_runner.py:2007", f"Starting to load model {model}...")
    await trio.sleep(delay / 2)
    if knobs.fail_load is not None:
        console.vllm("core.py:708", "EngineCore failed to start.", "ERROR")
        console.raw("Traceback (most recent call last):")
        console.raw(
            '  File "/usr/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 699, '
            "in run_engine_core"
        )
        console.raw("    engine_core = EngineCoreProc(*args, **kwargs)")
        console.raw(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
            f"{knobs.fail_load}"
        )
        console.raw(
            "RuntimeError: Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {'EngineCore_DP0': 1}"
        )
        return 1
    console.vllm("default_loader.py:262", f"Loading weights took {delay / 4:.2f} seconds")
    console.vllm(
        "gpu_model_runner.py:2029", f"Model loading took 14.99 GiB and {delay / 2:.6f} seconds"
    )
    await trio.sleep(delay / 4)
    console.vllm("kv_cache_utils.py:829", "GPU KV cache size: 123,456 tokens")
    console.vllm(
        "kv_cache_utils.py:833",
        f"Maximum concurrency for {options.max_model_len:,} tokens per request: 30.14x",
    )
    await trio.sleep(delay / 4)
    console.vllm(
        "core.py:214",
        f"init engine (profile, create kv cache, warmup model) took {delay:.2f} seconds",
    )
    server = await _listen(nursery, fake, knobs)
    if server is None:
        return 1
    console.vllm("api_server.py:1880", f"Starting vLLM API server 0 on {server.url}")
    console.vllm("launcher.py:36", "Available routes are:")
    for path, (method, _) in fake._routes.items():
        if path != "/stats":
            console.vllm("launcher.py:44", f"Route: {path}, Methods: {method}")
    # uvicorn logs these just before its socket accepts; written after, so a reader of the
    # log never finds the server ready and then refusing connections.
    fake.state = "ready"
    _uvicorn_started(console, server.url, running_line=False)
    return None


async def _start_sglang(nursery: trio.Nursery, fake: OpenAIFake, knobs: Knobs) -> int | None:
    console, options = fake.console, fake.options
    model, delay = options.model, knobs.load_delay
    console.sglang(
        f"server_args=ServerArgs(model_path='{model}', tokenizer_path='{model}', "
        f"host='{knobs.host}', port={knobs.port}, context_length={options.max_model_len})"
    )
    console.sglang("Init torch distributed begin.", rank="TP0")
    console.sglang("Load weight begin. avail mem=78.50 GB", rank="TP0")
    await trio.sleep(delay / 2)
    if knobs.fail_load is not None:
        console.sglang("Scheduler hit an exception: Traceback (most recent call last):", rank="TP0")
        console.raw(
            '  File "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py", '
            "line 2900, in run_scheduler_process"
        )
        console.raw(
            "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
            f"{knobs.fail_load}"
        )
        console.sglang("Received sigquit from a child process. It usually means the child failed.")
        return 1
    console.sglang(
        "Load weight end. type=LlamaForCausalLM, dtype=torch.bfloat16, avail mem=63.20 GB, "
        "mem usage=15.30 GB.",
        rank="TP0",
    )
    console.sglang(
        "KV Cache is allocated. #tokens: 383872, K size: 23.43 GB, V size: 23.43 GB", rank="TP0"
    )
    await trio.sleep(delay / 2)
    console.sglang(
        "Capture cuda graph end. Time elapsed: 8.04 s. mem usage=0.52 GB. avail mem=15.05 GB.",
        rank="TP0",
    )
    server = await _listen(nursery, fake, knobs)
    if server is None:
        return 1
    fake.state = "warming"
    _uvicorn_started(console, server.url, running_line=True)
    # The warm-up: a model-info call, then one short generation, as access-log lines.
    await trio.sleep(options.warmup / 2)
    console.access("GET", "/get_model_info", 200, "OK")
    await trio.sleep(options.warmup / 2)
    if options.fail_warmup is not None:
        console.sglang("Initialization failed. warmup error: Traceback (most recent call last):")
        console.raw(f"RuntimeError: {options.fail_warmup}")
        return 1
    console.access("POST", "/generate", 200, "OK")
    fake.state = "ready"
    console.sglang("The server is fired up and ready to roll!")
    return None


async def _start_llamacpp(nursery: trio.Nursery, fake: OpenAIFake, knobs: Knobs) -> int | None:
    console, options = fake.console, fake.options
    gguf = _GGUF.format(model=options.model.rsplit("/", 1)[-1])
    delay = knobs.load_delay
    console.raw("build: 6500 (1d0125bc) with cc (GCC) 13.3.0 for x86_64-linux-gnu")
    console.raw("system info: n_threads = 2, n_threads_batch = 2, total_threads = 2")
    console.srv("start", "binding port with default address family")
    # llama-server listens before it loads, answering 503 meanwhile.
    server = await _listen(nursery, fake, knobs)
    if server is None:
        return 1
    console.srv("init", "using 1 threads for HTTP server")
    console.srv("llama_server", "loading model")
    console.srv("load_model", f"loading model '{gguf}'")
    console.raw(
        "llama_model_loader: loaded meta data with 29 key-value pairs and 291 tensors from "
        f"{gguf} (version GGUF V3 (latest))"
    )
    await trio.sleep(delay / 2)
    if knobs.fail_load is not None:
        console.raw(f"llama_model_load: error loading model: {knobs.fail_load}")
        console.raw("llama_model_load_from_file_impl: failed to load model")
        console.srv("load_model", f"failed to load model, '{gguf}'")
        console.srv("llama_server", "exiting due to model loading error")
        return 1
    console.raw("load_tensors: loading model tensors, this can take a while... (mmap = true)")
    await trio.sleep(delay / 2)
    console.raw(f"llama_context: n_ctx         = {options.max_model_len}")
    fake.state = "ready"
    console.srv("llama_server", "model loaded")
    console.srv("llama_server", "chat template, chat_template: llama3")
    console.srv("llama_server", f"server is listening on {server.url}")
    console.srv("update_slots", "all slots are idle")
    return None


_STARTERS = {"vllm": _start_vllm, "sglang": _start_sglang, "llamacpp": _start_llamacpp}


def _log_shutdown(console: Console) -> None:
    if console.flavor == "llamacpp":
        console.srv("operator()", "operator(): cleaning up before exit...")
    else:
        console.uvicorn("Shutting down")
        console.uvicorn("Waiting for application shutdown.")
        console.uvicorn("Application shutdown complete.")
        console.uvicorn(f"Finished server process [{os.getpid()}]")


async def serve(fake: OpenAIFake, knobs: Knobs) -> int:
    """Start as the flavor does and serve until SIGTERM/SIGINT; returns the exit status."""
    code = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    if fake.state == "ready":
                        _log_shutdown(fake.console)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            failed = await _STARTERS[fake.options.flavor](nursery, fake, knobs)
            if failed is not None:
                code = failed
                nursery.cancel_scope.cancel()
    return code


def _parser(flavor: str) -> argparse.ArgumentParser:
    parser = knob_parser(
        f"fake {flavor} OpenAI-compatible server",
        port=DEFAULT_PORTS[flavor],
        load_delay=1.0,
        token_rate=500.0,
    )
    add = parser.add_argument
    add("--flavor", choices=FLAVORS, default="vllm", help="the server to imitate (default: vllm)")
    add("--model", default=DEFAULT_MODEL, help="the served model name (default: %(default)s)")
    add(
        "--max-model-len",
        type=int,
        default=DEFAULT_MAX_MODEL_LEN,
        metavar="N",
        help="context window in tokens (default: %(default)s)",
    )
    add(
        "--warmup",
        type=float,
        default=0.5,
        metavar="S",
        help="sglang: seconds of warm-up after listening, /health 503 meanwhile",
    )
    add("--fail-warmup", metavar="REASON", help="sglang: fail the warm-up; exit 1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server; returns the exit status."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--flavor", choices=FLAVORS, default="vllm")
    known, _ = probe.parse_known_args(argv)
    parser = _parser(known.flavor)
    namespace = parser.parse_args(argv)
    knobs = Knobs.parse(parser, argv)
    options = Options(
        flavor=namespace.flavor,
        model=namespace.model,
        max_model_len=namespace.max_model_len,
        warmup=namespace.warmup,
        fail_warmup=namespace.fail_warmup,
    )
    _redirect_output(knobs.log)
    fake = OpenAIFake(knobs=knobs, options=options, console=Console(options.flavor))
    return trio.run(serve, fake, knobs)


if __name__ == "__main__":
    sys.exit(main())
