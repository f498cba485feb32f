"""How the fake TGI words a generation's answer: its ``details`` and its stream's last event.

``details`` carry the finish reason, the seed (drawn when sampling without one), the prompt's
tokens (``decoder_input_details``), each position's ``top_tokens`` and the other sequences
``best_of`` generated. Stream events are axum's: ``data:`` with no space after the colon.
"""

from __future__ import annotations

import random

import attrs

from backends._fakekit import TABLE_SIZE

from ._fake_api import Generation
from ._fake_run import Run, Token, dumps


def sse_event(obj: object) -> bytes:
    """``obj`` as one server-sent event."""
    # axum's Sse writes "data:" with no space after the colon.
    return b"data:" + dumps(obj) + b"\n\n"


@attrs.frozen
class Answers:
    """Words one fake server's answers.

    Attributes:
        table: the server's token table (see :func:`~backends.tgi._fake_run.token_table`).
        seed_rng: draws the seed reported for a sampled request that set none.
    """

    table: tuple[Token, ...]
    seed_rng: random.Random

    def _seed(self, gen: Generation) -> int | None:
        if not gen.sampling:
            return None
        return gen.seed if gen.seed is not None else self.seed_rng.getrandbits(64)

    def details(self, run: Run) -> dict[str, object]:
        """The ``details`` of a ``/generate`` answer for ``run``."""
        gen = run.gen
        details: dict[str, object] = {
            "finish_reason": run.finish,
            "generated_tokens": run.produced,
            "seed": self._seed(gen),
            "prefill": self._prefill(run) if gen.decoder_input_details else [],
            "tokens": [t.record() for t in run.tokens],
        }
        if gen.top_n_tokens:
            details["top_tokens"] = [self.top_tokens(run, i) for i in range(run.produced)]
        if gen.best_of > 1:
            details["best_of_sequences"] = [
                self._other_sequence(run, k) for k in range(1, gen.best_of)
            ]
        return details

    def _prefill(self, run: Run) -> list[dict[str, object]]:
        table = self.table
        first = (run.offset + TABLE_SIZE // 2) % TABLE_SIZE
        tokens = [table[(first + i) % TABLE_SIZE] for i in range(run.gen.input_length)]
        return [
            {"id": t.id, "text": t.text, "logprob": None if i == 0 else t.logprob}
            for i, t in enumerate(tokens)
        ]

    def top_tokens(self, run: Run, position: int) -> list[dict[str, object]]:
        """The ``top_tokens`` of ``run``'s token at ``position`` (from 0)."""
        table = self.table
        start = run.offset + position
        return [table[(start + k) % TABLE_SIZE].record() for k in range(run.gen.top_n_tokens)]

    def _other_sequence(self, run: Run, k: int) -> dict[str, object]:
        # The other sequences best_of generated (already paid for): same length, other words.
        other = Run(run.gen, self.table, (run.offset + 7919 * k) % TABLE_SIZE, None)
        while other.finish is None and other.produced < run.produced:
            other.step()
        return {
            "generated_text": other.text(),
            "finish_reason": other.finish or run.finish,
            "generated_tokens": other.produced,
            "seed": self._seed(run.gen),
            "prefill": self._prefill(run) if run.gen.decoder_input_details else [],
            "tokens": [t.record() for t in other.tokens],
        }

    def last_event(self, run: Run) -> bytes:
        """A stream's last event: its last token, the generated text, the details if asked."""
        gen = run.gen
        event: dict[str, object] = {"index": run.produced, "token": run.tokens[-1].record()}
        if gen.top_n_tokens:
            event["top_tokens"] = self.top_tokens(run, run.produced - 1)
        event["generated_text"] = run.text()
        event["details"] = (
            {
                "finish_reason": run.finish,
                "generated_tokens": run.produced,
                "seed": self._seed(gen),
                "input_length": gen.input_length,
            }
            if gen.details
            else None
        )
        return sse_event(event)
