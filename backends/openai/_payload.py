"""OpenAI payloads: checked field by field, weighed in tokens, forwarded as sent.

``/v1/completions`` and ``/v1/chat/completions`` bodies are checked field by field (a 422 names
each bad field) and then forwarded as they are: fields this module does not know pass through
untouched, and nothing is added. The workload is an estimate, the prompt's tokens plus the
tokens the request may generate; the usage an answer reports replaces it
(:mod:`backends.openai._observe`).
"""

from __future__ import annotations

from typing import Any

from pyworker import Fields, Job, estimate_tokens, json_body, json_type_name

from ._settings import DEFAULT_SETTINGS, Settings

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
