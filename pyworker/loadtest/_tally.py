"""What happened to each request of a load test, and the running counts the display shows.

Each request ends in exactly one :class:`Outcome`; a request that re-routed and then succeeded
is a success, its re-routes counted apart (by status, or "connection" for a worker that could
not be reached).
"""

from __future__ import annotations

import bisect
import collections
import enum
import math

import attrs

from ..devtools import Retry

__all__ = ["Outcome", "Phase", "Result", "Snapshot", "Tally", "percentile"]

RATE_WINDOW = 5.0
"""Seconds over which the live rate is measured."""


def percentile(sorted_values: list[float], pct: float) -> float:
    """The ``pct`` percentile of already sorted values (nearest rank); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(0, math.ceil(pct / 100 * len(sorted_values)) - 1)
    return sorted_values[rank]


class Outcome(enum.Enum):
    """How a request ended."""

    OK = "ok"
    """The worker answered 2xx, in full."""
    ROUTE_ERROR = "route_error"
    """The router refused, answered something else than a route, or could not be reached."""
    HTTP_ERROR = "http_error"
    """The worker answered another status (an inference error): one that does not re-route,
    or a retryable one from the last worker tried."""
    CONNECTION_ERROR = "connection_error"
    """The last worker tried could not be reached, or its answer broke off."""
    TIMEOUT = "timeout"
    """No answer within the request's time (``--timeout``)."""
    CANCELLED = "cancelled"
    """Stopped by the user (Ctrl-C): neither a success nor an error."""


class Phase(enum.Enum):
    """Where a request in progress is."""

    QUEUED = "queued"
    """Arrived, waiting for a free slot (``--concurrency``)."""
    ROUTING = "routing"
    """Asking the router for a worker, polling while it says "wait"."""
    FETCHING = "fetching"
    """At a worker."""


@attrs.frozen(kw_only=True)
class Result:
    """One request, once ended.

    Attributes:
        index: its number in the load, from 0.
        arrived_at: when it arrived, in seconds from the load's start: its time on the
            schedule with ``--rps``, else when it was sent.
        latency: seconds from its arrival to its end: waiting for a slot under the
            concurrency cap, routing, re-routes and the answer. Counting from the schedule,
            not from the send, keeps a slow worker from hiding its delay in the requests it
            held back (coordinated omission).
        outcome: how it ended.
        workload: its workload, as the backend weighs it.
        status: the last worker's status (0 if none answered).
        worker: the last worker it went to ("" if none).
        routing: seconds until the router first named a worker (None if it never did).
        streamed: whether the answer was a stream.
        ttfb: for a streamed 2xx answer, seconds from its arrival to its first body byte.
        gaps: for a streamed 2xx answer, the seconds between its chunks.
        retries: the workers that sent it back to the router.
        error: what went wrong, for the errors that have no status.
        queued: seconds it waited for a slot before it was sent (part of ``latency``).
    """

    index: int
    arrived_at: float
    latency: float
    outcome: Outcome
    workload: float
    status: int = 0
    worker: str = ""
    routing: float | None = None
    streamed: bool = False
    ttfb: float | None = None
    gaps: tuple[float, ...] = ()
    retries: tuple[Retry, ...] = ()
    error: str = ""
    queued: float = 0.0

    @property
    def sent_at(self) -> float:
        """When it was sent, in seconds from the load's start."""
        return self.arrived_at + self.queued

    @property
    def finished_at(self) -> float:
        """When it ended, in seconds from the load's start."""
        return self.arrived_at + self.latency


@attrs.frozen(kw_only=True)
class Snapshot:
    """The counts at one moment, for the live display.

    Attributes:
        elapsed: seconds since the load started.
        planned: requests the load will send at most.
        arrived: requests that arrived so far (sent or queued).
        sent: requests sent so far.
        phases: requests in progress, by phase.
        ok: successes.
        route_errors: routing errors.
        http_errors: inference errors, by status.
        connection_errors: connection errors, by worker URL.
        timeouts: requests out of time.
        retries: re-routes, by cause ("429", "503", "connection").
        workers: distinct workers routed to.
        latency_p50: median latency of the successes so far, seconds (NaN: none yet).
        latency_p99: their 99th percentile.
        rate: successes per second over the last few seconds.
    """

    elapsed: float
    planned: int
    arrived: int
    sent: int
    phases: dict[Phase, int]
    ok: int
    route_errors: int
    http_errors: dict[int, int]
    connection_errors: dict[str, int]
    timeouts: int
    retries: dict[str, int]
    workers: int
    latency_p50: float
    latency_p99: float
    rate: float

    @property
    def in_flight(self) -> int:
        """Requests sent and not ended."""
        return self.phases[Phase.ROUTING] + self.phases[Phase.FETCHING]

    @property
    def errors(self) -> int:
        """Requests that ended in an error, of any kind."""
        return (
            self.route_errors
            + sum(self.http_errors.values())
            + sum(self.connection_errors.values())
            + self.timeouts
        )


@attrs.define(eq=False)
class Tally:
    """The load's running counts and its ended requests.

    Args:
        planned: requests the load will send at most.
        started: the load's start, in :func:`trio.current_time`.
    """

    planned: int
    started: float
    arrived: int = 0
    sent: int = 0
    phases: collections.Counter[Phase] = attrs.Factory(collections.Counter)
    results: list[Result] = attrs.Factory(list)
    outcomes: collections.Counter[Outcome] = attrs.Factory(collections.Counter)
    http_errors: collections.Counter[int] = attrs.Factory(collections.Counter)
    connection_errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    retries: collections.Counter[str] = attrs.Factory(collections.Counter)
    workers: set[str] = attrs.Factory(set)
    """Every worker routed to."""
    ok_latencies: list[float] = attrs.Factory(list)
    """The successes' latencies, sorted."""
    _recent_ok: collections.deque[float] = attrs.Factory(collections.deque)

    def arrive(self) -> None:
        """A request arrived; it waits for a slot."""
        self.arrived += 1
        self.phases[Phase.QUEUED] += 1

    def send(self) -> None:
        """A request that arrived got its slot: it asks the router now."""
        self.sent += 1
        self.move(Phase.QUEUED, Phase.ROUTING)

    def move(self, before: Phase, after: Phase) -> None:
        """A request in progress went from one phase to another."""
        self.phases[before] -= 1
        self.phases[after] += 1

    def route_to(self, url: str) -> None:
        """The router named worker ``url`` for a request."""
        self.workers.add(url)

    def retry(self, retry: Retry) -> None:
        """A worker sent a request back to the router."""
        self.retries[str(retry.status) if retry.status else "connection"] += 1

    def end(self, result: Result, phase: Phase, now: float) -> None:
        """A request in ``phase`` ended (``now`` in :func:`trio.current_time`)."""
        self.phases[phase] -= 1
        self.results.append(result)
        self.outcomes[result.outcome] += 1
        if result.outcome is Outcome.OK:
            bisect.insort(self.ok_latencies, result.latency)
            self._recent_ok.append(now)
        elif result.outcome is Outcome.HTTP_ERROR:
            self.http_errors[result.status] += 1
        elif result.outcome is Outcome.CONNECTION_ERROR:
            self.connection_errors[result.worker or "?"] += 1

    def snapshot(self, now: float) -> Snapshot:
        """The counts at ``now`` (in :func:`trio.current_time`)."""
        while self._recent_ok and self._recent_ok[0] < now - RATE_WINDOW:
            self._recent_ok.popleft()
        elapsed = max(now - self.started, 0.0)
        window = min(RATE_WINDOW, elapsed)
        return Snapshot(
            elapsed=elapsed,
            planned=self.planned,
            arrived=self.arrived,
            sent=self.sent,
            phases={phase: self.phases[phase] for phase in Phase},
            ok=self.outcomes[Outcome.OK],
            route_errors=self.outcomes[Outcome.ROUTE_ERROR],
            http_errors=dict(sorted(self.http_errors.items())),
            connection_errors=dict(self.connection_errors.most_common()),
            timeouts=self.outcomes[Outcome.TIMEOUT],
            retries=dict(self.retries.most_common()),
            workers=len(self.workers),
            latency_p50=percentile(self.ok_latencies, 50),
            latency_p99=percentile(self.ok_latencies, 99),
            rate=len(self._recent_ok) / window if window > 0 else 0.0,
        )
