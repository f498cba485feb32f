"""How the fake TGI reads a generation request: axum's extractor, serde's types, TGI's checks.

Three layers, each failing the way TGI's does:

1. axum's ``Json`` extractor, before any handler: wrong ``Content-Type`` → 415, body over the
   payload limit → 413, malformed JSON → 400, JSON of the wrong shape → 422, all as **plain
   text**;
2. serde's types (:func:`deserialize`): a missing ``inputs`` or a mistyped field is that same
   plain-text 422 (axum reports serde's message; the ``at line L column C`` suffix is left out);
3. TGI's validation (:func:`validate`), inside the handler: 422 ``Input validation error: …``
   as JSON, or as one event in a stream.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

from backends._fakekit import Request
from pyworker import estimate_tokens

PLAIN = b"text/plain; charset=utf-8"
"""The content type of axum's rejections."""
GENERATE_PARAMETERS = (
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
    "grammar",
    "adapter_id",
)
"""``GenerateParameters``' fields in their declared order (router/src/lib.rs), the order its
``Debug`` lists them in."""
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_I32 = 2**31 - 1


class PlainError(Exception):
    """An axum rejection: a status and a plain-text message, before the handler runs."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TGIError(Exception):
    """An error TGI answers as ``{"error", "error_type"}`` (JSON, or an event in a stream)."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type

    def body(self) -> dict[str, str]:
        """The JSON object TGI sends."""
        return {"error": self.message, "error_type": self.error_type}


def validation_error(message: str) -> TGIError:
    """TGI's 422 for a request that fails its validation."""
    return TGIError(422, f"Input validation error: {message}", "validation")


def overloaded() -> TGIError:
    """TGI's 429 for a request beyond ``--max-concurrent-requests``."""
    return TGIError(429, "Model is overloaded", "overloaded")


@attrs.frozen(kw_only=True)
class Limits:
    """The router's limits (its launcher flags of the same names)."""

    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    payload_limit: int = 2_000_000


# -- 1. the extractor ----------------------------------------------------------------------
def decode(request: Request, limits: Limits) -> Any:
    """The JSON body of ``request``, as axum's ``Json`` extractor reads it.

    Raises:
        PlainError: 415, 413, 400 (syntax) or 422 (not an object).
    """
    content_type = (request.header(b"content-type") or b"").split(b";")[0].strip().lower()
    if not (content_type == b"application/json" or content_type.endswith(b"+json")):
        raise PlainError(415, "Expected request with `Content-Type: application/json`")
    if len(request.body) > limits.payload_limit:
        raise PlainError(413, "Failed to buffer the request body: length limit exceeded")
    try:
        payload = json.loads(request.body, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        message = f"{exc.msg[:1].lower()}{exc.msg[1:]} at line {exc.lineno} column {exc.colno}"
        raise PlainError(400, f"Failed to parse the request body as JSON: {message}") from None
    except UnicodeDecodeError as exc:
        raise PlainError(400, f"Failed to parse the request body as JSON: {exc}") from None
    return payload


def _not_json(name: str) -> Any:
    # Python reads NaN and Infinity; serde_json (and JSON) does not.
    raise json.JSONDecodeError(f"expected value, found {name}", name, 0)


# -- 2. serde's types ----------------------------------------------------------------------
def _unexpected(value: object) -> str:
    """serde's description of a JSON value it did not expect."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


@attrs.frozen
class _Type:
    """A serde type: what it is called in messages, what it accepts, whether null is allowed."""

    expected: str
    optional: bool
    low: int | None = None  # integer types: the range
    high: int | None = None


_STRING = _Type("a string", optional=False)
_BOOL = _Type("a boolean", optional=False)
_FLOAT = _Type("f32", optional=True)
_PARAMETER_TYPES = {
    "best_of": _Type("usize", optional=True, low=0, high=_U64),
    "temperature": _FLOAT,
    "repetition_penalty": _FLOAT,
    "frequency_penalty": _FLOAT,
    "top_k": _Type("i32", optional=True, low=-_I32 - 1, high=_I32),
    "top_p": _FLOAT,
    "typical_p": _FLOAT,
    "do_sample": _BOOL,
    "max_new_tokens": _Type("u32", optional=True, low=0, high=_U32),
    "return_full_text": _Type("a boolean", optional=True),
    "stop": _Type("a sequence", optional=False),
    "truncate": _Type("usize", optional=True, low=0, high=_U64),
    "watermark": _BOOL,
    "details": _BOOL,
    "decoder_input_details": _BOOL,
    "seed": _Type("u64", optional=True, low=0, high=_U64),
    "top_n_tokens": _Type("u32", optional=True, low=0, high=_U32),
    "grammar": _Type("adjacently tagged enum GrammarType", optional=True),
    "adapter_id": _Type("a string", optional=True),
}


def _type_error(kind: _Type, value: object) -> str | None:
    """serde's message for ``value`` as ``kind``, or None if it fits."""
    if value is None:
        return None if kind.optional else f"invalid type: null, expected {kind.expected}"
    if kind.low is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"invalid type: {_unexpected(value)}, expected {kind.expected}"
        assert kind.high is not None
        if not kind.low <= value <= kind.high:
            return f"invalid value: {_unexpected(value)}, expected {kind.expected}"
        return None
    if kind.expected == "f32":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"invalid type: {_unexpected(value)}, expected f32"
        return None
    if kind.expected == "a boolean":
        fits = isinstance(value, bool)
    elif kind.expected == "a string":
        fits = isinstance(value, str)
    else:
        fits = True
    if not fits:
        return f"invalid type: {_unexpected(value)}, expected {kind.expected}"
    if kind.expected in ("a boolean", "a string"):
        return None
    if kind.expected == "a sequence":
        if not isinstance(value, list):
            return f"invalid type: {_unexpected(value)}, expected a sequence"
        for item in value:
            if not isinstance(item, str):
                return f"invalid type: {_unexpected(item)}, expected a string"
        return None
    return _grammar_error(value)


def _grammar_error(value: object) -> str | None:
    if not isinstance(value, dict):
        return f"invalid type: {_unexpected(value)}, expected adjacently tagged enum GrammarType"
    kind = value.get("type")
    if "type" not in value:
        return "missing field `type`"
    if kind not in ("json", "json_object", "regex"):
        return f"unknown variant `{kind}`, expected `json` or `regex`"
    if "value" not in value:
        return "missing field `value`"
    if kind == "regex" and not isinstance(value["value"], str):
        return f"invalid type: {_unexpected(value['value'])}, expected a string"
    return None


def _data_error(path: str, message: str) -> PlainError:
    where = f"{path}: " if path else ""
    return PlainError(
        422, f"Failed to deserialize the JSON body into the target type: {where}{message}"
    )


@attrs.frozen(kw_only=True)
class Parsed:
    """A request that has the right types (not yet validated).

    Attributes:
        inputs: the prompt.
        parameters: ``parameters``, every known key present (absent ones as their default).
        stream: the compat route's ``stream`` flag (False on the other routes).
    """

    inputs: str
    parameters: dict[str, Any]
    stream: bool = False


_DEFAULTS: dict[str, Any] = {
    "do_sample": False,
    "stop": [],
    "watermark": False,
    "details": False,
    "decoder_input_details": False,
}


def deserialize(payload: Any, *, compat: bool = False) -> Parsed:
    """Read a ``GenerateRequest`` (or the compat route's ``CompatGenerateRequest``).

    Unknown fields are ignored, as serde does by default.

    Raises:
        PlainError: 422, naming the field as serde does.
    """
    target = "CompatGenerateRequest" if compat else "GenerateRequest"
    if not isinstance(payload, dict):
        raise _data_error("", f"invalid type: {_unexpected(payload)}, expected struct {target}")
    if "inputs" not in payload:
        raise _data_error("", "missing field `inputs`")
    inputs = payload["inputs"]
    if not isinstance(inputs, str):
        raise _data_error("inputs", f"invalid type: {_unexpected(inputs)}, expected a string")
    flag = "stream" if compat else "add_special_tokens"
    if flag in payload and (error := _type_error(_BOOL, payload[flag])) is not None:
        raise _data_error(flag, error)
    raw = payload.get("parameters", {})
    if not isinstance(raw, dict):
        raise _data_error(
            "parameters",
            f"invalid type: {_unexpected(raw)}, expected struct GenerateParameters",
        )
    for name, kind in _PARAMETER_TYPES.items():
        if name in raw and (error := _type_error(kind, raw[name])) is not None:
            raise _data_error(f"parameters.{name}", error)
    parameters = dict.fromkeys(_PARAMETER_TYPES) | _DEFAULTS | raw
    return Parsed(inputs=inputs, parameters=parameters, stream=payload.get("stream") is True)


# -- 3. TGI's validation -------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class Generation:
    """A validated request: what to generate and what to report.

    Attributes:
        inputs: the prompt.
        input_length: its tokens (after ``truncate``).
        max_new_tokens: tokens to generate at most.
        best_of: sequences to generate (the best is returned).
        stop: stop sequences.
        sampling: whether the request samples (the answer then reports its seed).
        seed: the seed reported when sampling (None: draw one).
        details: whether to answer with ``details``.
        decoder_input_details: whether ``details`` lists the prompt's tokens.
        return_full_text: whether the answer starts with the prompt.
        top_n_tokens: alternatives reported per token.
    """

    inputs: str
    input_length: int
    max_new_tokens: int
    best_of: int = 1
    stop: tuple[str, ...] = ()
    sampling: bool = False
    seed: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool = False
    top_n_tokens: int = 0


def check_stream(parsed: Parsed) -> None:
    """What a stream refuses before anything else (TGI checks these first).

    Raises:
        TGIError: 422 validation.
    """
    parameters = parsed.parameters
    best_of = parameters["best_of"]
    if best_of is not None and best_of != 1:
        raise validation_error("`best_of` != 1 is not supported when streaming tokens")
    if parameters["decoder_input_details"]:
        raise validation_error(
            "`decoder_input_details` == true is not supported when streaming tokens"
        )


def check_best_of(parsed: Parsed, limits: Limits) -> None:
    """TGI's bound on ``best_of``, checked before a request takes a concurrency permit.

    Raises:
        TGIError: 422 validation.
    """
    best_of = parsed.parameters["best_of"]
    if best_of is not None and best_of > 1:
        if limits.max_best_of == 1:
            raise validation_error("`best_of` != 1 is not allowed for this endpoint")
        if best_of > limits.max_best_of:
            raise validation_error(
                f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}"
            )


def _out_of_unit(value: float | None) -> bool:
    return value is not None and not 0.0 < value < 1.0


def validate(parsed: Parsed, limits: Limits) -> Generation:
    """TGI's checks, in TGI's order (the first failure is the answer).

    Raises:
        TGIError: 422 validation.
    """
    p = parsed.parameters
    best_of = p["best_of"] or 1
    sampling = bool(p["do_sample"]) or any(
        p[name] is not None for name in ("temperature", "top_k", "top_p", "typical_p")
    )
    if best_of > 1 and not sampling:
        raise validation_error("you must use sampling when `best_of` is > 1")
    for name in ("temperature", "repetition_penalty"):
        if p[name] is not None and not p[name] > 0.0:
            raise validation_error(f"`{name}` must be strictly positive")
    frequency_penalty = p["frequency_penalty"]
    if frequency_penalty is not None and not -2.0 <= frequency_penalty <= 2.0:
        raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
    for name in ("top_p", "typical_p"):
        if _out_of_unit(p[name]) or (p[name] is not None and math.isnan(p[name])):
            raise validation_error(f"`{name}` must be > 0.0 and < 1.0")
    if p["top_k"] is not None and p["top_k"] <= 0:
        raise validation_error("`top_k` must be strictly positive")
    if p["max_new_tokens"] == 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    stop = p["stop"]
    if len(stop) > limits.max_stop_sequences:
        raise validation_error(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}"
        )
    if p["seed"] is not None and best_of > 1:
        raise validation_error("`seed` must not be set when `best_of` > 1")
    top_n_tokens = p["top_n_tokens"] or 0
    if top_n_tokens > limits.max_top_n_tokens:
        raise validation_error(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n_tokens}"
        )
    if not parsed.inputs:
        raise validation_error("`inputs` cannot be empty")
    grammar = p["grammar"]
    if (
        grammar is not None
        and grammar["type"] != "regex"
        and not isinstance(grammar["value"], dict | str)
    ):
        raise validation_error("grammar is not supported")  # TGI's words for a bad JSON schema
    truncate = p["truncate"]
    if truncate is not None and not 0 < truncate <= limits.max_input_tokens:
        raise validation_error(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. "
            f"Given: {truncate}"
        )
    # The fake's tokenizer is the worker's estimate; a real one never gives 0 for a non-empty
    # prompt (most add a start token).
    input_length = max(1, estimate_tokens(parsed.inputs))
    if truncate is not None:
        input_length = min(input_length, truncate)
    max_new_tokens = p["max_new_tokens"]
    if max_new_tokens is None:
        # Recent TGI: null (or absent) means "up to the rest of the context window".
        max_new_tokens = max(limits.max_total_tokens - input_length, 0)
    if input_length + max_new_tokens > limits.max_total_tokens:
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise validation_error(
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
        )
    return Generation(
        inputs=parsed.inputs,
        input_length=input_length,
        max_new_tokens=max_new_tokens,
        best_of=best_of,
        stop=tuple(stop),
        sampling=sampling,
        seed=p["seed"],
        details=bool(p["details"]),
        decoder_input_details=bool(p["decoder_input_details"]),
        return_full_text=p["return_full_text"] is True,
        top_n_tokens=top_n_tokens,
    )
