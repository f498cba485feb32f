"""What the fake TGI generates: tokens with their JSON, and a sequence that stops as TGI's do.

A sequence walks a seed-dependent table of tokens from an offset that depends on the prompt,
and ends at ``max_new_tokens`` (``length``), at a stop sequence (``stop_sequence``) or at the
end-of-sequence token (``eos_token``, with ``--eos-after``).
"""

from __future__ import annotations

import json
import random

import attrs

from backends._fakekit import TABLE_SIZE, VOCABULARY, Job

from ._fake_api import Generation

EOS_ID = 2
EOS_TEXT = "</s>"


def dumps(obj: object) -> bytes:
    """``obj`` as serde_json writes it: compact, non-ASCII as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@attrs.frozen
class Token:
    """A generated token, with its JSON pre-encoded (a streamed token costs no serialising)."""

    id: int
    text: str
    logprob: float
    special: bool = False
    json: bytes = b""

    @classmethod
    def make(cls, token_id: int, text: str, logprob: float, special: bool = False) -> Token:
        """A token and its JSON ``{"id","text","logprob","special"}``."""
        record = {"id": token_id, "text": text, "logprob": logprob, "special": special}
        return cls(token_id, text, logprob, special, dumps(record))

    def record(self) -> dict[str, object]:
        """The token as TGI's JSON object."""
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


EOS = Token.make(EOS_ID, EOS_TEXT, -0.01, special=True)


@attrs.define(eq=False)
class Run:
    """One sequence being generated: its tokens so far and why it stopped.

    Attributes:
        gen: the request.
        table: the tokens it walks, from ``offset`` (the same for the same prompt and seed).
        offset: where in ``table`` it starts.
        eos_after: end with the end-of-sequence token at this token (``--eos-after``).
        tokens: the tokens generated so far.
        finish: why it ended (``length``, ``eos_token``, ``stop_sequence``); None: it goes on.
        admitted_at: when it got a batch slot (``trio.current_time``).
        job: its share of the capacity model while it runs.
    """

    gen: Generation
    table: tuple[Token, ...]
    offset: int
    eos_after: int | None
    tokens: list[Token] = attrs.field(factory=list)
    finish: str | None = None
    admitted_at: float = 0.0
    job: Job | None = None
    _tail: str = ""
    _stop_window: int = 0

    def __attrs_post_init__(self) -> None:
        self._stop_window = max((len(s) for s in self.gen.stop), default=0)
        if self.gen.max_new_tokens == 0:
            self.finish = "length"

    @property
    def done(self) -> bool:
        """Whether the sequence has ended (:attr:`finish` says why)."""
        return self.finish is not None

    @property
    def produced(self) -> int:
        """Tokens generated so far."""
        return len(self.tokens)

    def step(self) -> Token:
        """Generate the next token (the caller checks :attr:`finish` first)."""
        count = len(self.tokens) + 1
        if count == self.eos_after:
            token = EOS
            self.finish = "eos_token"
        else:
            token = self.table[(self.offset + count - 1) % TABLE_SIZE]
            if self._stop_window:
                self._tail = (self._tail + token.text)[-self._stop_window :]
                if any(self._tail.endswith(stop) for stop in self.gen.stop):
                    self.finish = "stop_sequence"
            if self.finish is None and count == self.gen.max_new_tokens:
                self.finish = "length"
        self.tokens.append(token)
        return token

    def text(self) -> str:
        """The generated text (special tokens left out, the prompt first if asked)."""
        text = "".join(t.text for t in self.tokens if not t.special)
        return self.gen.inputs + text if self.gen.return_full_text else text


def token_table(seed: int) -> tuple[Token, ...]:
    """The table of :data:`~backends._fakekit.TABLE_SIZE` tokens for ``seed``."""
    rng = random.Random(seed)
    return tuple(
        Token.make(100 + index, " " + VOCABULARY[index], -round(rng.uniform(0.01, 3), 4))
        for index in (rng.randrange(len(VOCABULARY)) for _ in range(TABLE_SIZE))
    )
