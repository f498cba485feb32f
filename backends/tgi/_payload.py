"""TGI payloads: checked field by field (as TGI's router would), weighed, forwarded as sent.

The checks mirror TGI's own (``router/src/validation.rs`` and the serde types of its request),
so that a request TGI would refuse is refused here with a 422 that names the field, before it
takes a place in the queue, and a request TGI accepts is never refused. Fields this module does
not know pass through untouched: newer TGI versions add parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import attrs

from pyworker import Fields, Job, env_int, estimate_tokens, json_body

from ._observe import GenerateCounts, StreamCounts

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MAX = 2**31 - 1
# TGI refuses bodies over --payload-limit (2,000,000 bytes by default), so no real prompt is
# longer; the bound also keeps the token estimate off the event loop for absurd inputs.
MAX_INPUTS_CHARS = 2_000_000

_GRAMMAR_TYPES = ("json", "json_object", "regex")
_SAMPLING = ("temperature", "top_k", "top_p", "typical_p")


@attrs.frozen(kw_only=True)
class Settings:
    """The limits requests are checked against, and the workload default.

    TGI's launcher reads its limits from the environment (``MAX_BEST_OF`` for ``--max-best-of``
    and so on); on a Vast instance the worker shares that environment, so it checks requests
    against the limits the model server was started with. Unset, TGI's defaults apply;
    ``max_input_tokens`` and ``max_total_tokens`` then depend on the model and are left to TGI.

    Attributes:
        default_max_new_tokens: tokens charged for a request without ``max_new_tokens`` (or
            with null). TGI's own default has changed across versions: 20 in 1.x, 100 for an
            absent field in 2.x, and for null (in recent versions also for absent) "up to the
            rest of the context window", stopping at the end-of-sequence token, which is no
            estimate at all. 100 is a middling guess; ``TGI_DEFAULT_MAX_NEW_TOKENS`` sets
            another. The answer's counts replace the guess (see :mod:`._observe`).
        max_stop_sequences: ``MAX_STOP_SEQUENCES`` (TGI default 4).
        max_best_of: ``MAX_BEST_OF`` (TGI default 2).
        max_top_n_tokens: ``MAX_TOP_N_TOKENS`` (TGI default 5).
        max_input_tokens: ``MAX_INPUT_TOKENS`` (or the older ``MAX_INPUT_LENGTH``): bounds
            ``truncate``.
        max_total_tokens: ``MAX_TOTAL_TOKENS``: bounds ``max_new_tokens``.
    """

    default_max_new_tokens: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    max_stop_sequences: int = attrs.field(default=4, validator=attrs.validators.ge(0))
    max_best_of: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    max_top_n_tokens: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read the settings from ``env``.

        Raises:
            ValueError: a variable is not a number of the right range (the message names it).
        """
        max_input_tokens = env_int(env, "MAX_INPUT_TOKENS", minimum=1)
        if max_input_tokens is None:
            max_input_tokens = env_int(env, "MAX_INPUT_LENGTH", minimum=1)
        return cls(
            default_max_new_tokens=env_int(env, "TGI_DEFAULT_MAX_NEW_TOKENS", 100, minimum=1),
            max_stop_sequences=env_int(env, "MAX_STOP_SEQUENCES", 4, minimum=0),
            max_best_of=env_int(env, "MAX_BEST_OF", 2, minimum=1),
            max_top_n_tokens=env_int(env, "MAX_TOP_N_TOKENS", 5, minimum=0),
            max_input_tokens=max_input_tokens,
            max_total_tokens=env_int(env, "MAX_TOTAL_TOKENS", minimum=2),
        )


# -- field checks that Fields does not have ----------------------------------------------------
def _flag(fields: Fields, name: str) -> bool:
    """A boolean that TGI does not let be null (``do_sample``, ``details``, …)."""
    if fields.data.get(name, False) is None:
        fields.errors[name] = "must be a boolean, not null"
        return False
    return fields.boolean(name, default=False) is True


def _positive(fields: Fields, name: str) -> Any:
    value = fields.number(name, default=None)
    if name not in fields.errors and value is not None and value <= 0:
        fields.errors[name] = "must be greater than 0"
    return value


def _open_unit(fields: Fields, name: str) -> Any:
    value = fields.number(name, default=None)
    if name not in fields.errors and value is not None and not 0 < value < 1:
        fields.errors[name] = "must be greater than 0 and less than 1"
    return value


def _stop(fields: Fields, limit: int) -> None:
    value = fields.data.get("stop", [])
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        fields.errors["stop"] = "must be a list of strings"
    elif len(value) > limit:
        fields.errors["stop"] = f"must have at most {limit} stop sequences, not {len(value)}"


def _grammar(fields: Fields) -> None:
    grammar = fields.obj("grammar", default=None)
    if "grammar" in fields.errors or grammar is None:
        return
    kind, value = grammar.get("type"), grammar.get("value")
    if kind not in _GRAMMAR_TYPES:
        fields.errors["grammar"] = {"type": "must be 'json' or 'regex'"}
    elif "value" not in grammar or value is None:
        fields.errors["grammar"] = {"value": "missing parameter"}
    elif kind == "regex" and not isinstance(value, str):
        fields.errors["grammar"] = {"value": "must be a string (a regular expression)"}
    elif kind != "regex" and not isinstance(value, dict | str):
        fields.errors["grammar"] = {"value": "must be a JSON schema (an object or a string)"}


@attrs.frozen
class _Parameters:
    """The parameters that decide what a request costs."""

    max_new_tokens: int | None = None
    truncate: int | None = None
    best_of: int | None = None


def _check_parameters(
    data: dict[str, Any], settings: Settings, *, stream: bool
) -> tuple[_Parameters, dict[str, Any]]:
    """Check ``parameters``; returns what the workload needs and the errors by field."""
    fields = Fields(data)
    max_new_tokens = fields.integer(
        "max_new_tokens", default=None, minimum=1, maximum=settings.max_total_tokens or U32_MAX
    )
    _positive(fields, "temperature")
    _positive(fields, "repetition_penalty")
    fields.number("frequency_penalty", default=None, minimum=-2, maximum=2)
    fields.integer("top_k", default=None, minimum=1, maximum=I32_MAX)
    _open_unit(fields, "top_p")
    _open_unit(fields, "typical_p")
    do_sample = _flag(fields, "do_sample")
    fields.boolean("return_full_text", default=None)
    _stop(fields, settings.max_stop_sequences)
    truncate = fields.integer(
        "truncate", default=None, minimum=1, maximum=settings.max_input_tokens or U32_MAX
    )
    _flag(fields, "watermark")
    _flag(fields, "details")
    decoder_input_details = _flag(fields, "decoder_input_details")
    seed = fields.integer("seed", default=None, minimum=0, maximum=U64_MAX)
    fields.integer("top_n_tokens", default=None, minimum=0, maximum=settings.max_top_n_tokens)
    # TGI takes 0 as 1 (it only treats best_of > 1 specially), so this does too.
    best_of = fields.integer("best_of", default=None, minimum=0, maximum=settings.max_best_of)
    _grammar(fields)
    fields.string("adapter_id", default=None)

    errors = fields.errors
    # TGI's rules across fields, reported on the field to change (once that field is valid).
    if "best_of" not in errors and stream and best_of is not None and best_of != 1:
        errors["best_of"] = "must be 1 or null when streaming"
    elif "best_of" not in errors and best_of is not None and best_of > 1:
        sampling = do_sample or any(data.get(name) is not None for name in _SAMPLING)
        if not sampling:
            errors["best_of"] = (
                "needs sampling: set do_sample, temperature, top_k, top_p or typical_p"
            )
        elif seed is not None and "seed" not in errors:
            errors["seed"] = "must be null when best_of is more than 1"
    if stream and decoder_input_details and "decoder_input_details" not in errors:
        errors["decoder_input_details"] = "must be false when streaming"
    if errors:
        return _Parameters(), errors
    return _Parameters(max_new_tokens=max_new_tokens, truncate=truncate, best_of=best_of), {}


def parse_generate(payload: object, settings: Settings, *, stream: bool) -> Job:
    """Check a TGI ``/generate`` (or ``/generate_stream``) payload and weigh it.

    The workload is in tokens: the prompt's estimated tokens (at most ``truncate``, which makes
    TGI keep only the last tokens) plus ``max_new_tokens`` (``settings.default_max_new_tokens``
    when absent or null), times ``best_of`` (TGI generates that many sequences and returns the
    best). The job's observer replaces it with what TGI reports it did (see
    :mod:`backends.tgi._observe`). The body goes upstream exactly as the client sent it,
    unknown fields included.

    Args:
        payload: the envelope's ``payload``.
        settings: the limits and the workload default.
        stream: whether the request is for ``/generate_stream`` (no ``best_of``, no
            ``decoder_input_details``).

    Raises:
        PayloadError: naming every bad field, ``parameters``' nested under it.
    """
    fields = Fields(payload)
    fields.check()  # not even an object: nothing else to say
    inputs = fields.string("inputs", max_length=MAX_INPUTS_CHARS)
    if inputs == "":
        fields.errors["inputs"] = "must not be empty"
    _flag(fields, "add_special_tokens")
    parameters = _Parameters()
    data = fields.data.get("parameters", {})
    if not isinstance(data, dict):
        fields.obj("parameters")  # records the type error
    else:
        parameters, errors = _check_parameters(data, settings, stream=stream)
        fields.nested("parameters", errors)
    fields.check()
    prompt_tokens = estimate_tokens(inputs)
    if parameters.truncate is not None:
        prompt_tokens = min(prompt_tokens, parameters.truncate)
    new_tokens = parameters.max_new_tokens or settings.default_max_new_tokens
    sequences = max(parameters.best_of or 1, 1)
    # What TGI reports it did replaces the estimate (see ._observe): its own counts, or the
    # prompt's estimate beside the tokens a stream without details shows; none for several
    # sequences.
    observe = partial(StreamCounts, prompt_tokens) if stream else partial(GenerateCounts, sequences)
    return Job(
        workload=(prompt_tokens + new_tokens) * sequences,
        body=json_body(payload),
        upstream_path="/generate_stream" if stream else "/generate",
        observe=observe,
    )
