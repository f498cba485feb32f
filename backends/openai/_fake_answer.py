"""How the fake OpenAI-compatible servers shape their answers and stream events, by flavor.

The three flavors answer the same OpenAI shapes with their own details: ids (vLLM's
``cmpl-``/``chatcmpl-``, SGLang's bare hex, llama.cpp's ``chatcmpl-``), key order, vLLM's
``stop_reason`` and ``prompt_tokens_details``, llama.cpp's ``system_fingerprint`` and
``timings``. Streams are ``data: {…}`` events (with a space), ending ``data: [DONE]``.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

import attrs

from ._fake_api import Generation

LLAMACPP_BUILD = "b6500-1d0125bc"
DONE = b"data: [DONE]\n\n"
"""The last event of every stream."""
# A placeholder content whose JSON encoding is split out of a serialised event, so that each
# token's event is two constant byte strings around the token's pre-encoded JSON string.
_SLOT = "\x00token\x00"
_SLOT_JSON = json.dumps(_SLOT).encode()


@attrs.frozen(kw_only=True)
class Answer:
    """Shapes one request's answer and events for the flavor.

    Attributes:
        flavor: the server imitated.
        gen: the request.
        id: the answer's id.
        created: its creation time (Unix seconds).
        started: when it started (``time.monotonic``), for llama.cpp's timings.
    """

    flavor: str
    gen: Generation
    id: str
    created: int
    started: float

    @classmethod
    def start(cls, flavor: str, gen: Generation) -> Answer:
        """The answer to ``gen``, starting now, with a fresh id in the flavor's style."""
        if flavor == "sglang":
            ident = uuid.uuid4().hex
        elif flavor == "llamacpp":
            ident = "chatcmpl-" + secrets.token_hex(16)
        else:
            ident = ("chatcmpl-" if gen.chat else "cmpl-") + uuid.uuid4().hex
        return cls(
            flavor=flavor, gen=gen, id=ident, created=int(time.time()), started=time.monotonic()
        )

    @property
    def object_name(self) -> str:
        """``chat.completion`` or ``text_completion``."""
        return "chat.completion" if self.gen.chat else "text_completion"

    def usage(self, completion: int | None = None) -> dict[str, Any]:
        """The ``usage`` object, after ``completion`` generated tokens (default: all)."""
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
            "cache_n": 0,  # prompt tokens found in the cache: the fake keeps none
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
        finish = self.gen.finish
        choices = [self._choice(i, text, finish, chunk=False) for i, text in enumerate(texts)]
        body = self._envelope(choices, chunk=False)
        body["usage"] = self.usage()
        if self.flavor == "llamacpp":
            body["timings"] = self.timings()
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def event(obj: object) -> bytes:
        """``obj`` as one server-sent event."""
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def role_event(self, index: int) -> bytes:
        """A chat stream's first event for choice ``index``: the assistant's role."""
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
        """A token's event carrying the running usage (vLLM's ``continuous_usage_stats``)."""
        body = self._envelope([self._choice(index, word, None, chunk=True)], chunk=True)
        body["usage"] = self.usage(produced)
        return self.event(body)

    def finish_event(self, index: int, produced: int) -> bytes:
        """Choice ``index``'s last event, with its ``finish_reason``.

        llama.cpp puts its ``timings`` on the stream's last event: this one, unless a usage
        event follows (``include_usage``).
        """
        body = self._envelope([self._choice(index, "", self.gen.finish, chunk=True)], chunk=True)
        if self.gen.continuous_usage:
            body["usage"] = self.usage(produced)
        if self.flavor == "llamacpp" and not self.gen.include_usage:
            body["timings"] = self.timings()
        return self.event(body)

    def usage_event(self) -> bytes:
        """The usage event that ends a stream with ``stream_options.include_usage``."""
        body = self._envelope([], chunk=True)
        body["usage"] = self.usage()
        if self.flavor == "llamacpp":
            body["timings"] = self.timings()
        return self.event(body)
