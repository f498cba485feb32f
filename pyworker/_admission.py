"""Admission: refuse what cannot be served in time, order what must not overlap, and account
for every request admitted, however it ends."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from ._load import CANCELLED, LoadTracker, Outcome, OutcomeKind, Ticket, TicketKind
from ._records import Record, RecordStatus, RequestLog


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
        records: where ended and refused requests are recorded for the router.
        clock: Unix time, for the records (replaceable in tests).
    """

    tracker: LoadTracker
    capacity: Callable[[], float]
    max_queue_time: float = 30.0
    parallel: bool = True
    records: RequestLog = attrs.Factory(RequestLog)
    clock: Callable[[], float] = time.time
    _serial: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    def check(self, workload: float) -> None:
        """Raise :class:`Overloaded` when a request of ``workload`` would wait over the limit.

        The wait is the workload ahead of it and its own, divided by the benchmarked capacity;
        an idle worker always admits (a single request larger than the limit still runs).
        Requests in sessions and the sessions themselves are not in the estimate: the router
        has already committed their clients to this worker.
        """
        max_perf = self.capacity()
        if self.max_queue_time <= 0 or max_perf <= 0 or self.tracker.pending_workload <= 0:
            return
        expected = (self.tracker.pending_workload + workload) / max_perf
        if expected > self.max_queue_time:
            raise Overloaded(expected, self.max_queue_time)

    def refused(self, workload: float, idx: int) -> None:
        """A request refused before admission (401): count and record it."""
        self.tracker.rejected(workload, trio.current_time())
        self.records.add(
            Record(request_idx=idx, status=RecordStatus.REJECTED, entered_queue_at=self.clock())
        )

    async def wait_idle(self) -> None:
        """Return once no admitted request is in flight (open sessions aside)."""
        while self.tracker.in_flight:
            await self._idle.wait()

    @asynccontextmanager
    async def admit(
        self,
        workload: float,
        *,
        idx: int = 0,
        in_session: bool = False,
        on_admit: Callable[[], None] | None = None,
    ) -> AsyncIterator[Ticket]:
        """Admit a request of ``workload``, wait for its turn, and account for its end.

        Everything before the first checkpoint is atomic with respect to other requests: the
        429 decision, the ticket and ``on_admit`` (e.g. remembering the request's signature),
        so two identical requests cannot both be admitted. Set the ticket's outcome with
        :meth:`Ticket.end` before leaving the block; a block left without one was cancelled
        (the client went away), or failed if it raised.

        Args:
            workload: the request's estimated workload.
            idx: the router's identity of the request (for reports and records).
            in_session: the request belongs to a session (no 429, no record of its own).
            on_admit: called once admitted, before any checkpoint.

        Raises:
            Overloaded: refused (counted and recorded as rejected; nothing else changes).
        """
        tracker = self.tracker
        entered = self.clock()
        if not in_session:
            try:
                self.check(workload)
            except Overloaded:
                self.refused(workload, idx)
                raise
        kind = TicketKind.IN_SESSION if in_session else TicketKind.REQUEST
        ticket = tracker.open(workload, trio.current_time(), idx=idx, kind=kind)
        if self._idle.is_set():
            self._idle = trio.Event()
        outcome: Outcome | None = None
        started = 0.0
        try:
            if on_admit is not None:
                on_admit()
            if self.parallel:
                started = self.clock()
                yield ticket
            else:
                async with self._serial:
                    started = self.clock()
                    yield ticket
        except Exception as exc:
            outcome = Outcome(kind=OutcomeKind.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            # Cancellation (the client left, its session ended, or shutdown's deadline) ends
            # here without an outcome of its own.
            final = ticket.outcome or outcome or CANCELLED
            tracker.close(ticket, final, trio.current_time())
            if not in_session:
                self.records.add(
                    Record(
                        request_idx=idx,
                        status=RecordStatus.of(final),
                        entered_queue_at=entered,
                        work_started_at=started,
                        work_completed_at=self.clock(),
                    )
                )
            if not tracker.in_flight:
                self._idle.set()
