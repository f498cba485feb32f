"""Load accounting: what is in flight, what arrived, what finished (sans-IO).

The proxy tells the tracker when a request is admitted, finishes, is cancelled or is refused;
the reporter takes a :class:`LoadSnapshot` each time it builds a report, which closes one
reporting interval. Times are plain floats from whatever clock the caller uses.
"""

from __future__ import annotations

import collections
import itertools

import attrs

_CUR_PERF_WINDOW = 60.0
"""Seconds of finished requests that ``cur_perf`` averages over."""


@attrs.define(eq=False)
class Ticket:
    """One admitted request, from admission until it finishes or is cancelled."""

    id: int
    workload: float
    admitted_at: float
    done: bool = False


@attrs.frozen(kw_only=True)
class LoadSnapshot:
    """The load figures of one reporting interval (the report's fields, before formatting)."""

    cur_load: float
    """Workload received minus cancelled, per second of the interval."""
    new_load: float
    """Workload received in the interval (2025 field)."""
    rej_load: float
    """Workload refused with 429 in the interval."""
    cur_perf: float
    """Workload per second of requests finished in the last minute."""
    num_requests_working: int
    num_requests_received: int
    working_request_idxs: tuple[int, ...]
    interval: float


@attrs.define(eq=False)
class LoadTracker:
    """Counts requests and workload for load reports and admission.

    Args:
        now: the clock reading at creation (the start of the first interval).
    """

    now: float
    _in_flight: dict[int, Ticket] = attrs.field(factory=dict, init=False)
    _ids: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _interval_start: float = attrs.field(init=False)
    _pending: float = attrs.field(default=0.0, init=False)
    _received: int = attrs.field(default=0, init=False)
    _workload_received: float = attrs.field(default=0.0, init=False)
    _workload_cancelled: float = attrs.field(default=0.0, init=False)
    _workload_rejected: float = attrs.field(default=0.0, init=False)
    _deficit: float = attrs.field(default=0.0, init=False)
    """Cancelled workload not yet subtracted (it arrived in an earlier interval)."""
    _finished: collections.deque[tuple[float, float]] = attrs.field(
        factory=collections.deque, init=False
    )
    changed: bool = attrs.field(default=False, init=False)
    """Set by every event, cleared by :meth:`snapshot`: tells the reporter to send soon."""

    def __attrs_post_init__(self) -> None:
        self._interval_start = self.now

    # -- events ----------------------------------------------------------------------------
    def admitted(self, workload: float, now: float) -> Ticket:
        """A request was accepted and is about to be forwarded."""
        ticket = Ticket(id=next(self._ids), workload=workload, admitted_at=now)
        self._in_flight[ticket.id] = ticket
        self._pending += workload
        self._received += 1
        self._workload_received += workload
        self.changed = True
        return ticket

    def finished(self, ticket: Ticket, now: float, *, actual_workload: float | None = None) -> None:
        """The request's answer was delivered (or failed upstream: the work was still done)."""
        if self._close(ticket):
            workload = ticket.workload if actual_workload is None else actual_workload
            self._finished.append((now, workload))

    def cancelled(self, ticket: Ticket) -> None:
        """The client went away (or the request was aborted) before its answer was complete."""
        if self._close(ticket):
            self._workload_cancelled += ticket.workload

    def rejected(self, workload: float) -> None:
        """A request was refused for overload (429)."""
        self._workload_rejected += workload
        self.changed = True

    def _close(self, ticket: Ticket) -> bool:
        if ticket.done:
            return False
        ticket.done = True
        del self._in_flight[ticket.id]
        # A running sum keeps admission O(1); reset it when idle so float rounding never
        # leaves a phantom remainder behind.
        self._pending = self._pending - ticket.workload if self._in_flight else 0.0
        self.changed = True
        return True

    # -- queries ---------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet finished or cancelled."""
        return len(self._in_flight)

    @property
    def pending_workload(self) -> float:
        """Workload of the requests in flight."""
        return self._pending

    def snapshot(self, now: float) -> LoadSnapshot:
        """Close the current interval and return its figures."""
        interval = max(now - self._interval_start, 1e-9)
        horizon = now - _CUR_PERF_WINDOW
        while self._finished and self._finished[0][0] < horizon:
            self._finished.popleft()
        window = min(_CUR_PERF_WINDOW, max(now - self.now, 1e-9))
        # A cancel can outweigh what arrived in this interval (the request came earlier);
        # carry the excess over so the reported totals still add up, never going negative.
        net = self._workload_received - self._workload_cancelled - self._deficit
        self._deficit = -net if net < 0 else 0.0
        snap = LoadSnapshot(
            cur_load=max(net, 0.0) / interval,
            new_load=self._workload_received / interval,
            rej_load=self._workload_rejected / interval,
            cur_perf=sum(w for _, w in self._finished) / window,
            num_requests_working=len(self._in_flight),
            num_requests_received=self._received,
            working_request_idxs=tuple(self._in_flight),
            interval=interval,
        )
        self._interval_start = now
        self._received = 0
        self._workload_received = 0.0
        self._workload_cancelled = 0.0
        self._workload_rejected = 0.0
        self.changed = False
        return snap
