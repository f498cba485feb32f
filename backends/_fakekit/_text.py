"""Generated text for fakes: a small vocabulary and a seed-dependent table of tokens."""

from __future__ import annotations

import random

_WORDS = (
    "the a model server token stream answer prompt worker load request queue batch light "
    "river stone cloud garden window paper music quiet bright swift gentle ancient green "
    "blue golden silver morning evening winter summer story bridge mountain ocean forest "
    "city road friend voice dream idea number letter signal engine circuit"
)
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())
"""Words that fakes generate text from."""

TABLE_SIZE = 4096
"""Generated text walks a seed-dependent table of this many tokens from an offset that depends
on the prompt: deterministic per (seed, prompt), with no random draws on the request path."""


def word_table(seed: int) -> tuple[str, ...]:
    """The table of :data:`TABLE_SIZE` words for ``seed``, each with its leading space."""
    rng = random.Random(seed)
    return tuple(" " + rng.choice(VOCABULARY) for _ in range(TABLE_SIZE))
