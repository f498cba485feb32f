"""Admission control: refuse what cannot be served in time; serialise what must not overlap."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from ._load import LoadTracker


class Overloaded(Exception):
    """The request would wait longer than the queue-time limit (answered 429).

    Attributes:
        retry_after: whole seconds after which the backlog should have room.
    """

    def __init__(self, expected_wait: float, limit: float) -> None:
        super().__init__(f"expected wait {expected_wait:.1f} s exceeds the {limit:g} s queue limit")
        self.expected_wait = expected_wait
        self.retry_after = max(1, math.ceil(expected_wait - limit))


@attrs.define(eq=False)
class Admission:
    """Decides whether a request may enter, and when it may run.

    Args:
        tracker: the load tracker, for the workload already waiting or running.
        max_queue_time: the longest expected wait (pending workload / capacity) accepted;
            0 disables the check.
        parallel: False runs one request at a time, in arrival order (``trio.Lock`` hands
            ownership over in FIFO order).
    """

    tracker: LoadTracker
    max_queue_time: float = 30.0
    parallel: bool = True
    _serial: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    def check(self, workload: float, max_perf: float) -> None:
        """Raise :class:`Overloaded` when the request's expected wait is over the limit.

        The wait is the workload ahead of it and its own, divided by the benchmarked capacity;
        an idle worker always admits (a single request larger than the limit still runs).
        """
        if self.max_queue_time <= 0 or max_perf <= 0 or self.tracker.in_flight == 0:
            return
        expected = (self.tracker.pending_workload + workload) / max_perf
        if expected > self.max_queue_time:
            raise Overloaded(expected, self.max_queue_time)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this request's turn to use the model server."""
        if self.parallel:
            yield
        else:
            async with self._serial:
                yield
