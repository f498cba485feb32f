"""The request counters a fake LLM server serves on its fake-only ``GET /stats``, for tests."""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class Stats:
    """Counters served by ``GET /stats`` (``attrs.asdict`` of this).

    Attributes:
        in_flight: generation requests being served now.
        completed: generation requests that produced all their tokens.
        cancelled: generation requests stopped because the client went away.
        errors: answers with an error status (4xx or 5xx), or an error event in a stream.
        max_concurrent: the most generation requests in flight at once.
        tokens_generated: tokens produced, by finished and unfinished requests alike.
    """

    in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    max_concurrent: int = 0
    tokens_generated: int = 0

    def started(self) -> None:
        """Count a generation request in flight."""
        self.in_flight += 1
        self.max_concurrent = max(self.max_concurrent, self.in_flight)

    def ended(self, *, finished: bool, client_gone: bool) -> bool:
        """Count a generation request out of flight; returns whether it was cancelled.

        Args:
            finished: it produced all its tokens (it is then completed).
            client_gone: its client went away (it is then cancelled, unless finished); a
                request stopped for any other reason (the server stopping) is neither.
        """
        self.in_flight -= 1
        if finished:
            self.completed += 1
        elif client_gone:
            self.cancelled += 1
            return True
        return False
