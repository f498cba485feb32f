"""Load accounting: what is in flight, what arrived, how it ended (sans-IO).

Admission (:mod:`pyworker._admission`) opens a :class:`Ticket` for every request it accepts and
closes it with the request's :class:`Outcome`; sessions (:mod:`pyworker._sessions`) hold one
ticket each while open; refused requests are only counted. Everything received, cancelled,
refused or completed adds to running :class:`LoadTotals` that never go down: a report is the
difference between the totals now and those of the last report the autoscaler accepted, so a
report that is lost is never lost from the figures, and none is counted twice. Times are plain
floats from whatever clock the caller uses.
"""

from __future__ import annotations

import collections
import enum
import itertools
from collections.abc import Iterator

import attrs

_CUR_PERF_WINDOW = 60.0
"""Seconds of finished requests that the 2024 ``cur_perf`` averages over."""


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
    def answered(cls, status: int, actual: float | None = None, *, failed: bool = False) -> Outcome:
        """The model server's answer, relayed in full: completed below 400, else failed (or
        when ``failed``: the answer reported an error inside it)."""
        if status < 400 and not failed:
            return cls(kind=OutcomeKind.COMPLETED, status=status, actual=actual)
        return cls(kind=OutcomeKind.FAILED, status=status)

    @classmethod
    def failed(cls, status: int, error: str) -> Outcome:
        """The worker could not get an answer (or a whole one) from the model server."""
        return cls(kind=OutcomeKind.FAILED, status=status, error=error)


CANCELLED = Outcome(kind=OutcomeKind.CANCELLED)
"""The outcome of a request whose client left first."""


class TicketKind(enum.Enum):
    """What a ticket stands for, which decides where it counts."""

    REQUEST = "request"
    """A proxied request outside any session: in flight, in the queue estimate, reported."""
    SESSION = "session"
    """An open session: one unit of its cost in flight until it closes (reported as one
    request), outside the queue estimate."""
    IN_SESSION = "in_session"
    """A request inside a session: counted in the load totals only (the router tracks the
    session, not its requests)."""


@attrs.define(eq=False)
class Ticket:
    """One admitted request (or open session), until its outcome is recorded."""

    id: int
    kind: TicketKind
    workload: float
    idx: int
    """The router's ``request_idx`` (or ``reqnum`` from an older router)."""
    opened_at: float
    outcome: Outcome | None = None
    """How it ended, once it has (see :meth:`end`)."""
    closed: bool = False
    """Whether the tracker has accounted for it."""

    def end(self, outcome: Outcome) -> None:
        """Record how the request ended (the first outcome given wins)."""
        if self.outcome is None:
            self.outcome = outcome

    @property
    def reported(self) -> bool:
        """Whether it appears in the reports' in-flight figures."""
        return self.kind is not TicketKind.IN_SESSION


@attrs.frozen(kw_only=True)
class LoadTotals:
    """Running totals since the tracker started; they only grow. Subtract an earlier reading to
    get the figures of the time between."""

    received: float = 0.0
    """Workload admitted (requests, sessions, requests in sessions)."""
    cancelled: float = 0.0
    """Workload whose client left first."""
    rejected: float = 0.0
    """Workload refused (401, 429, session limit)."""
    completed: float = 0.0
    """Work done: completed requests (at their actual workload where known) and closed
    sessions."""
    completed_estimated: float = 0.0
    """The same work at the backends' estimates (for comparison with ``completed``)."""
    accepted: int = 0
    """Requests and sessions accepted (requests in sessions aside)."""
    at: float = 0.0
    """The clock reading of these totals."""

    def __sub__(self, earlier: LoadTotals) -> LoadTotals:
        return LoadTotals(
            received=self.received - earlier.received,
            cancelled=self.cancelled - earlier.cancelled,
            rejected=self.rejected - earlier.rejected,
            completed=self.completed - earlier.completed,
            completed_estimated=self.completed_estimated - earlier.completed_estimated,
            accepted=self.accepted - earlier.accepted,
            at=self.at - earlier.at,
        )


@attrs.define(eq=False)
class LoadTracker:
    """Counts requests, sessions and workload for reports and admission.

    Args:
        now: the clock reading at creation.
    """

    now: float
    _tickets: dict[int, Ticket] = attrs.field(factory=dict, init=False)
    _ids: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _queued: float = attrs.field(default=0.0, init=False)
    _queued_count: int = attrs.field(default=0, init=False)
    _requests: int = attrs.field(default=0, init=False)
    _totals: LoadTotals = attrs.field(init=False)
    _completions: collections.deque[tuple[float, float]] = attrs.field(
        factory=collections.deque, init=False
    )
    changed: bool = attrs.field(default=False, init=False)
    """Set by every event, cleared by the reporter: tells it to send soon."""

    def __attrs_post_init__(self) -> None:
        self._totals = LoadTotals(at=self.now)

    # -- events ----------------------------------------------------------------------------
    def open(
        self, workload: float, now: float, *, idx: int = 0, kind: TicketKind = TicketKind.REQUEST
    ) -> Ticket:
        """A request (or session) was accepted."""
        ticket = Ticket(id=next(self._ids), kind=kind, workload=workload, idx=idx, opened_at=now)
        self._tickets[ticket.id] = ticket
        if kind is TicketKind.REQUEST:
            self._queued += workload
            self._queued_count += 1
        if kind is not TicketKind.SESSION:
            self._requests += 1
        self._add(
            now,
            received=workload,
            accepted=0 if kind is TicketKind.IN_SESSION else 1,
        )
        return ticket

    def close(self, ticket: Ticket, outcome: Outcome, now: float) -> None:
        """Record how ``ticket``'s request ended (once; later calls are ignored).

        Only a completed one counts as work done (at its actual workload when the model
        server reported one); a cancelled one is taken off the received load.
        """
        if ticket.closed:
            return
        ticket.closed = True
        ticket.end(outcome)
        del self._tickets[ticket.id]
        if ticket.kind is TicketKind.REQUEST:
            # A running sum keeps admission O(1); reset it when nothing is queued so float
            # rounding never leaves a phantom remainder behind.
            self._queued_count -= 1
            self._queued = self._queued - ticket.workload if self._queued_count else 0.0
        if ticket.kind is not TicketKind.SESSION:
            self._requests -= 1
        if outcome.kind is OutcomeKind.COMPLETED:
            done = ticket.workload if outcome.actual is None else outcome.actual
            self._completions.append((now, done))
            self._add(now, completed=done, estimated=ticket.workload)
        elif outcome.kind is OutcomeKind.CANCELLED:
            self._add(now, cancelled=ticket.workload)
        else:
            self._add(now)

    def rejected(self, workload: float, now: float) -> None:
        """A request was refused (401, 429) or a session turned away (limit reached)."""
        self._add(now, rejected=workload)

    def _add(
        self,
        now: float,
        *,
        received: float = 0.0,
        cancelled: float = 0.0,
        rejected: float = 0.0,
        completed: float = 0.0,
        estimated: float = 0.0,
        accepted: int = 0,
    ) -> None:
        totals = self._totals
        self._totals = LoadTotals(
            received=totals.received + received,
            cancelled=totals.cancelled + cancelled,
            rejected=totals.rejected + rejected,
            completed=totals.completed + completed,
            completed_estimated=totals.completed_estimated + estimated,
            accepted=totals.accepted + accepted,
            at=now,
        )
        self.changed = True

    # -- queries ---------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """HTTP requests admitted and not yet ended (in sessions or not; sessions aside)."""
        return self._requests

    @property
    def pending_workload(self) -> float:
        """Workload of the requests in flight outside sessions (the queue estimate's)."""
        return self._queued

    def reported(self) -> Iterator[Ticket]:
        """The tickets the reports count as in flight: requests outside sessions, sessions."""
        return (ticket for ticket in self._tickets.values() if ticket.reported)

    def totals(self, now: float) -> LoadTotals:
        """The running totals, read at ``now``."""
        return attrs.evolve(self._totals, at=now)

    def recent_completions(self, now: float) -> float:
        """Workload per second completed over the last minute (the 2024 ``cur_perf``)."""
        horizon = now - _CUR_PERF_WINDOW
        while self._completions and self._completions[0][0] < horizon:
            self._completions.popleft()
        window = min(_CUR_PERF_WINDOW, max(now - self.now, 1e-9))
        return sum(w for _, w in self._completions) / window
