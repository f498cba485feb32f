"""What the hello_world fake must answer in the fault soak, and the checks of its answers.

The fake's answers are deterministic for a prompt and its ``--seed``, so :class:`Expected`
computes each one in full; :class:`EventCheck` follows a stream's events as they arrive, and
:func:`check_json` and :func:`check_refusal` judge a whole answer. Each check says what is wrong
("" when nothing is): the load (``bench/soakload.py``) and the runner's canary
(``bench/soakrunner.py``) turn that into an outcome.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import attrs

from backends._fakekit import TABLE_SIZE, word_table
from pyworker import estimate_tokens


@attrs.frozen
class Expected:
    """The hello_world fake's answers for its ``--seed`` (see ``backends/hello_world/server.py``).

    The fake starts the text of a prompt at ``crc32(prompt) % TABLE_SIZE`` in the word table of
    its seed and takes one word per generated token; the prompt's tokens are counted with the
    same ``estimate_tokens`` the worker uses.
    """

    seed: int
    words: tuple[str, ...] = attrs.field(init=False)

    @words.default
    def _words(self) -> tuple[str, ...]:
        return word_table(self.seed)

    def tokens(self, prompt: str, count: int) -> list[str]:
        """The ``count`` tokens generated for ``prompt``, in order."""
        offset = zlib.crc32(prompt.encode("utf-8", "surrogatepass")) % TABLE_SIZE
        return [self.words[(offset + i) % TABLE_SIZE] for i in range(count)]

    def json(self, prompt: str, count: int) -> dict[str, Any]:
        """The body of ``POST /generate``."""
        return {
            "response": "".join(self.tokens(prompt, count)),
            "prompt_tokens": estimate_tokens(prompt),
            "generated_tokens": count,
        }

    def events(self, prompt: str, count: int) -> list[dict[str, Any]]:
        """The events of ``POST /generate_stream``: one per token, then the final one."""
        done = {"done": True, "prompt_tokens": estimate_tokens(prompt), "generated_tokens": count}
        return [{"token": token} for token in self.tokens(prompt, count)] + [done]


@attrs.define(eq=False)
class EventCheck:
    """Checks server-sent events as they arrive, however they are split into chunks."""

    expected: list[dict[str, Any]]
    received: int = 0
    wrong: str = ""
    _buffer: bytes = b""

    def feed(self, data: bytes) -> None:
        """Take more body bytes; check every complete event in them."""
        self._buffer += data
        *events, self._buffer = self._buffer.split(b"\n\n")
        for raw in events:
            if self.wrong:
                return
            self._check(raw)

    def _check(self, raw: bytes) -> None:
        index = self.received
        self.received += 1
        self.wrong = self._wrong(index, raw)

    def _wrong(self, index: int, raw: bytes) -> str:
        if index >= len(self.expected):
            return f"event {index}: more events than the {len(self.expected)} expected"
        if not raw.startswith(b"data: "):
            return f"event {index}: not a data line: {raw[:80]!r}"
        try:
            event = json.loads(raw[6:])
        except ValueError:
            return f"event {index}: not JSON: {raw[:80]!r}"
        if event != self.expected[index]:
            return f"event {index}: {event!r} instead of {self.expected[index]!r}"
        return ""

    def complete_and_right(self) -> str:
        """What is wrong with the stream as received ("" if it arrived whole and exactly right)."""
        if self.wrong:
            return self.wrong
        if self._buffer.strip():
            return f"unfinished event at the end: {self._buffer[:80]!r}"
        if self.received != len(self.expected):
            return f"{self.received} events instead of {len(self.expected)}"
        return ""


def check_json(body: bytes, expected: dict[str, Any]) -> str:
    """What is wrong with a JSON answer ("" if it is exactly ``expected``)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    if answer == expected:
        return ""
    if not isinstance(answer, dict):
        return f"not an object: {body[:80]!r}"
    fields = sorted(set(answer) | set(expected))
    wrong = [f for f in fields if answer.get(f) != expected.get(f)]
    return "wrong " + ", ".join(
        f"{f} ({str(answer.get(f))[:40]!r} instead of {str(expected.get(f))[:40]!r})" for f in wrong
    )


def check_refusal(body: bytes, fields: list[str]) -> str:
    """What is wrong with a 422 answer ("" if it names each bad payload field)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return f"422 body not JSON: {body[:80]!r}"
    named = answer.get("payload") if isinstance(answer, dict) else None
    if not isinstance(named, dict) or any(f not in named for f in fields):
        return f"422 body does not name {fields}: {body[:120]!r}"
    return ""
