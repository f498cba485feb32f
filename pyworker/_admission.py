"""Admission: refuse what cannot be served in time, order what must not overlap, and account
for every request admitted, however it ends."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from ._load import CANCELLED, LoadTracker, Outcome, OutcomeKind, Ticket


class Overloaded(Exception):
    """The request would wait longer than the queue-time limit (answered 429).

    Attributes:
        expected_wait: seconds the request would wait, its own service included.
        retry_after: whole seconds until the backlog is back under the limit (the excess, not
            the whole wait: by then a retry would be admitted).
    """

    def __init__(self, expected_wait: float, limit: float) -> None:
        super().__init__(f"expected wait {expected_wait:.1f} s exceeds the {limit:g} s queue limit")
        self.expected_wait = expected_wait
        self.retry_after = max(1, math.ceil(expected_wait - limit))


@attrs.define(eq=False)
class Admission:
    """Decides whether a request may enter and when it may run, and records how it ended.

    Args:
        tracker: the load tracker, for the workload already waiting or running.
        capacity: the benchmarked capacity (workload per second) now.
        max_queue_time: the longest expected wait (pending workload / capacity) accepted;
            0 disables the check.
        parallel: False runs one request at a time, in arrival order (``trio.Lock`` hands
            ownership over in FIFO order).
    """

    tracker: LoadTracker
    capacity: Callable[[], float]
    max_queue_time: float = 30.0
    parallel: bool = True
    _serial: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no admitted request is in flight."""
        while self.tracker.in_flight:
            await self._idle.wait()

    def check(self, workload: float) -> None:
        """Raise :class:`Overloaded` when a request of ``workload`` would wait over the limit.

        The wait is the workload ahead of it and its own, divided by the benchmarked capacity;
        an idle worker always admits (a single request larger than the limit still runs).
        """
        max_perf = self.capacity()
        if self.max_queue_time <= 0 or max_perf <= 0 or self.tracker.in_flight == 0:
            return
        expected = (self.tracker.pending_workload + workload) / max_perf
        if expected > self.max_queue_time:
            raise Overloaded(expected, self.max_queue_time)

    @asynccontextmanager
    async def admit(
        self, workload: float, *, on_admit: Callable[[], None] | None = None
    ) -> AsyncIterator[Ticket]:
        """Admit a request of ``workload``, wait for its turn, and account for its end.

        Everything before the first checkpoint is atomic with respect to other requests: the
        429 decision, the ticket and ``on_admit`` (e.g. remembering the request's signature),
        so two identical requests cannot both be admitted. Set the ticket's outcome with
        :meth:`Ticket.end` before leaving the block; a block left without one was cancelled
        (the client went away), or failed if it raised.

        Raises:
            Overloaded: refused (its workload is counted as rejected; nothing else changes).
        """
        tracker = self.tracker
        try:
            self.check(workload)
        except Overloaded:
            tracker.rejected(workload)
            raise
        ticket = tracker.open(workload, trio.current_time())
        if self._idle.is_set():
            self._idle = trio.Event()
        outcome: Outcome | None = None
        try:
            if on_admit is not None:
                on_admit()
            if self.parallel:
                yield ticket
            else:
                async with self._serial:
                    yield ticket
        except Exception as exc:
            outcome = Outcome(kind=OutcomeKind.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            # Cancellation (the client left, or shutdown's deadline) ends here without an
            # outcome of its own.
            tracker.close(ticket, ticket.outcome or outcome or CANCELLED, trio.current_time())
            if not tracker.in_flight:
                self._idle.set()
