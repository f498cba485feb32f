"""Load accounting: what is in flight, what arrived, how it ended (sans-IO).

Admission (:mod:`pyworker._admission`) opens a :class:`Ticket` for every request it accepts and
closes it with the request's :class:`Outcome`; refused requests are only counted. The reporter
takes a :class:`LoadSnapshot` each time it builds a report, which closes one reporting interval.
Times are plain floats from whatever clock the caller uses.
"""

from __future__ import annotations

import collections
import enum
import itertools

import attrs

_CUR_PERF_WINDOW = 60.0
"""Seconds of finished requests that ``cur_perf`` averages over."""


class OutcomeKind(enum.Enum):
    """How a request that was admitted ended."""

    COMPLETED = "completed"
    """The model server's successful answer reached the client in full: work was done."""
    FAILED = "failed"
    """The model server refused or failed it, or could not be reached: no work was done."""
    CANCELLED = "cancelled"
    """The client left (or the request was aborted) before its answer was complete."""


@attrs.frozen(kw_only=True)
class Outcome:
    """How one request ended, as a value.

    Attributes:
        kind: completed, failed or cancelled.
        status: the HTTP status the client was sent (0: none was).
        actual: the workload the model server reported doing, when it said (None: the estimate
            stands).
        error: why the worker itself failed the request ("" when the model server answered).
    """

    kind: OutcomeKind
    status: int = 0
    actual: float | None = None
    error: str = ""

    @classmethod
    def answered(cls, status: int, actual: float | None = None) -> Outcome:
        """The model server's answer, relayed in full: completed below 400, else failed."""
        if status < 400:
            return cls(kind=OutcomeKind.COMPLETED, status=status, actual=actual)
        return cls(kind=OutcomeKind.FAILED, status=status)

    @classmethod
    def failed(cls, status: int, error: str) -> Outcome:
        """The worker could not get an answer (or a whole one) from the model server."""
        return cls(kind=OutcomeKind.FAILED, status=status, error=error)


CANCELLED = Outcome(kind=OutcomeKind.CANCELLED)
"""The outcome of a request whose client left first."""


@attrs.define(eq=False)
class Ticket:
    """One admitted request, from admission until its outcome is recorded."""

    id: int
    workload: float
    admitted_at: float
    outcome: Outcome | None = None
    """How the request ended, once it has (see :meth:`end`)."""
    closed: bool = False
    """Whether the tracker has accounted for it."""

    def end(self, outcome: Outcome) -> None:
        """Record how the request ended (the first outcome given wins)."""
        if self.outcome is None:
            self.outcome = outcome


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
    """Workload per second of requests completed in the last minute."""
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
    _completed: collections.deque[tuple[float, float]] = attrs.field(
        factory=collections.deque, init=False
    )
    changed: bool = attrs.field(default=False, init=False)
    """Set by every event, cleared by :meth:`snapshot`: tells the reporter to send soon."""

    def __attrs_post_init__(self) -> None:
        self._interval_start = self.now

    # -- events ----------------------------------------------------------------------------
    def open(self, workload: float, now: float) -> Ticket:
        """A request was accepted and is about to be forwarded."""
        ticket = Ticket(id=next(self._ids), workload=workload, admitted_at=now)
        self._in_flight[ticket.id] = ticket
        self._pending += workload
        self._received += 1
        self._workload_received += workload
        self.changed = True
        return ticket

    def close(self, ticket: Ticket, outcome: Outcome, now: float) -> None:
        """Record how ``ticket``'s request ended (once; later calls are ignored).

        Only a completed request counts as work done (``cur_perf``), at its actual workload
        when the model server reported one; a cancelled one is taken off the received load.
        """
        if ticket.closed:
            return
        ticket.closed = True
        ticket.end(outcome)
        del self._in_flight[ticket.id]
        # A running sum keeps admission O(1); reset it when idle so float rounding never
        # leaves a phantom remainder behind.
        self._pending = self._pending - ticket.workload if self._in_flight else 0.0
        self.changed = True
        if outcome.kind is OutcomeKind.COMPLETED:
            done = ticket.workload if outcome.actual is None else outcome.actual
            self._completed.append((now, done))
        elif outcome.kind is OutcomeKind.CANCELLED:
            self._workload_cancelled += ticket.workload

    def rejected(self, workload: float) -> None:
        """A request was refused for overload (429)."""
        self._workload_rejected += workload
        self.changed = True

    # -- queries ---------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet ended."""
        return len(self._in_flight)

    @property
    def pending_workload(self) -> float:
        """Workload of the requests in flight."""
        return self._pending

    def snapshot(self, now: float) -> LoadSnapshot:
        """Close the current interval and return its figures."""
        interval = max(now - self._interval_start, 1e-9)
        horizon = now - _CUR_PERF_WINDOW
        while self._completed and self._completed[0][0] < horizon:
            self._completed.popleft()
        window = min(_CUR_PERF_WINDOW, max(now - self.now, 1e-9))
        # A cancel can outweigh what arrived in this interval (the request came earlier);
        # carry the excess over so the reported totals still add up, never going negative.
        net = self._workload_received - self._workload_cancelled - self._deficit
        self._deficit = -net if net < 0 else 0.0
        snap = LoadSnapshot(
            cur_load=max(net, 0.0) / interval,
            new_load=self._workload_received / interval,
            rej_load=self._workload_rejected / interval,
            cur_perf=sum(w for _, w in self._completed) / window,
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
