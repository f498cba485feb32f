"""Watching relayed answers for the actual workload a model server reports."""

from __future__ import annotations

import re
from collections.abc import Sequence

_MAX_OPEN_BYTES = 64 * 1024
"""How much of an unfinished report is kept while waiting for the rest of it."""


class UsageObserver:
    """An :class:`~pyworker.Observer` that adds up integer fields of a report in the answer.

    A report (OpenAI's ``usage`` object, TGI's final ``details``) starts with ``marker``; its
    workload is the sum of the JSON integer fields named ``counts`` that follow the last marker
    seen. Reads and stream events can split anything anywhere, so a report may arrive in two
    pieces, and so may the marker itself: the observer carries over the few bytes that could
    start a marker and, once a marker is seen whose report is unfinished, the report so far
    (bounded), which the next chunk completes. Chunks without the marker cost one substring
    search. A marker inside generated text is JSON-escaped (``\\"usage\\"``) and never matches.

    Args:
        marker: the bytes that start a report, e.g. ``b'"usage"'``.
        counts: the names of the integer fields to add up, e.g. ``("prompt_tokens",
            "completion_tokens")``; until all are seen after a marker (or for ``"usage":
            null``), the estimate stands.

    Example::

        Endpoint(..., observe=lambda: UsageObserver(b'"usage"', ("prompt_tokens",
                                                                  "completion_tokens")))
    """

    __slots__ = ("_carry", "_counts", "_marker", "actual")

    def __init__(self, marker: bytes, counts: Sequence[str]) -> None:
        self._marker = marker
        # A number counts once something follows it: a chunk may end inside it ("1" of 12).
        self._counts = tuple(
            re.compile(rb'"' + re.escape(name.encode()) + rb'"\s*:\s*(\d+)(?=\D)')
            for name in counts
        )
        self._carry = b""
        self.actual: float | None = None

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk."""
        data = self._carry + chunk if self._carry else chunk
        start = data.rfind(self._marker)
        if start >= 0:
            value = self._sum(data[start:])
            if value is None:
                # Unfinished (or null): keep it, bounded, so the next chunk can complete it.
                self._carry = data[start : start + _MAX_OPEN_BYTES]
                return
            self.actual = value
        # A (later) marker may be split across this chunk and the next: keep what could
        # start one.
        self._carry = data[-(len(self._marker) - 1) :] if len(self._marker) > 1 else b""

    def _sum(self, report: bytes) -> float | None:
        total = 0
        for pattern in self._counts:
            found = pattern.search(report)
            if found is None:
                return None
            total += int(found.group(1))
        return float(total)
