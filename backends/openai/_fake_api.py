"""How the fake OpenAI-compatible servers read a generation request, and word their errors.

:func:`parse_generation` validates ``POST /v1/completions`` and ``POST /v1/chat/completions``
bodies as the flavor's server does (vLLM and SGLang through pydantic, llama.cpp through
nlohmann::json), failing with :class:`ApiError`; :func:`error_body` shapes an error as the
flavor answers it: vLLM's nested ``{"error": {"message", "type", "param", "code"}}``, SGLang's
flat ``{"object": "error", …}``, llama.cpp's ``{"error": {"code", "message", "type"}}``.

The fake's "tokenizer" is the worker's estimate plus what a real one adds: a BOS token per
prompt, and Llama 3 chat-template tokens (5 per message, 4 to prime the answer). So the
``usage`` it reports differs from the worker's estimate the way a real server's does. Every
choice generates exactly ``max_tokens`` tokens; without ``max_tokens`` a completion gets 16
(vLLM, SGLang) and everything else the rest of the context window (``--max-model-len``). With
``--eos-after N`` the model reaches its end-of-sequence token after N tokens and stops there
(``finish_reason`` ``stop``), unless the request sets ``ignore_eos``, which vLLM, SGLang and
llama.cpp honour.
"""

from __future__ import annotations

import json
import types
from typing import Any

import attrs

from pyworker import estimate_tokens

FLAVORS = ("vllm", "sglang", "llamacpp")
DEFAULT_MODEL = "fake-org/Fake-Llama-3-8B-Instruct"
DEFAULT_MAX_MODEL_LEN = 4096
COMPLETION_DEFAULT_MAX_TOKENS = 16

# The fake tokenizer's additions to the worker's estimate (see the module docstring).
BOS_TOKENS = 1
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_TOKENS_PER_REPLY = 4
NON_TEXT_PART_TOKENS = 576


@attrs.frozen(kw_only=True)
class Options:
    """The fake's own knobs, beside the kit's :class:`~backends._fakekit.Knobs`.

    Attributes:
        flavor: which server to imitate, one of :data:`FLAVORS`.
        model: the served model name.
        max_model_len: the context window, in tokens.
        warmup: SGLang only: seconds of warm-up between listening and the ready line.
        fail_warmup: SGLang only: fail the warm-up with this reason (exit 1).
        log_requests: log each request as the flavor's request logger does, the client's
            text quoted (vLLM's ``--enable-log-requests``, SGLang's ``--log-requests``,
            llama.cpp's ``--verbose``).
        eos_after: every choice stops after this many tokens (its end-of-sequence token),
            unless the request sets ``ignore_eos``; None: never early.
    """

    flavor: str = attrs.field(default="vllm", validator=attrs.validators.in_(FLAVORS))
    model: str = DEFAULT_MODEL
    max_model_len: int = attrs.field(
        default=DEFAULT_MAX_MODEL_LEN, validator=attrs.validators.ge(1)
    )
    warmup: float = attrs.field(default=0.5, validator=attrs.validators.ge(0.0))
    fail_warmup: str | None = None
    log_requests: bool = False
    eos_after: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )


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
        finish: why each choice ends: ``length`` (at ``max_tokens`` as asked), or ``stop``
            (at the end-of-sequence token, before it).
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
    finish: str
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
    finish = "length"
    eos_after = options.eos_after
    if eos_after is not None and eos_after < limit and data.get("ignore_eos") is not True:
        limit, finish = eos_after, "stop"
    return Generation(
        chat=chat,
        model=model or options.model,
        prompt_tokens=counts,
        max_tokens=limit,
        n=n,
        stream=stream,
        finish=finish,
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


LOADING = ApiError(503, "Loading model", "unavailable")
"""llama.cpp's answer to every request while it loads."""
