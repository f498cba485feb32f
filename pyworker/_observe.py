"""Watching relayed answers for the actual workload a model server reports."""

from __future__ import annotations

from collections.abc import Callable

_MAX_OPEN_BYTES = 64 * 1024
"""How much of an unfinished report is kept while waiting for the rest of it."""


class UsageObserver:
    """An :class:`~pyworker.Observer` that parses whatever follows the last ``marker`` seen.

    Reads and stream events can split anything anywhere, so a report (OpenAI's ``usage``
    object, TGI's final ``details``) may arrive in two pieces, and so may the marker itself.
    The observer carries over the few bytes that could start a marker, and, once a marker is
    seen whose report is unfinished, the report so far (bounded): the next chunk completes it.
    Chunks without the marker cost one substring search.

    Args:
        marker: the bytes that start a report, e.g. ``b'"usage"'``.
        parse: reads the workload from bytes starting with ``marker``; None when the report is
            absent (``"usage": null``) or not complete yet.
    """

    __slots__ = ("_carry", "_marker", "_parse", "actual")

    def __init__(self, marker: bytes, parse: Callable[[bytes], float | None]) -> None:
        self._marker = marker
        self._parse = parse
        self._carry = b""
        self.actual: float | None = None

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk."""
        data = self._carry + chunk if self._carry else chunk
        start = data.rfind(self._marker)
        if start < 0:
            # A marker may be split across this chunk and the next: keep what could start one.
            self._carry = data[-(len(self._marker) - 1) :] if len(self._marker) > 1 else b""
            return
        value = self._parse(data[start:])
        if value is not None:
            self.actual = value
            self._carry = b""
        else:
            # Unfinished (or null): keep it, bounded, so the next chunk can complete it.
            self._carry = data[start : start + _MAX_OPEN_BYTES]
