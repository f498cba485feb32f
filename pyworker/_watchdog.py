"""The forward-progress watchdog: notices a model server that takes work and stops answering.

A wedged engine (a hung GPU kernel, a deadlocked scheduler) usually leaves the model server's
HTTP front end running: its health route still answers 200 while every request sent to it waits
forever. Health checks cannot see that; the requests can. The watchdog follows every request
sent to the model server and notes when each byte of its answer arrives.

**Stalled** means: some request is waiting for the model server, and nothing has arrived on
*any* request for longer than the stall limit, which is the larger of ``--stall-timeout``
(30 s) and ``k`` times the predicted service time of the oldest waiting request. The
prediction (:meth:`Pace.predict`) is the longer of two figures from the benchmark: the
request's workload plus the workload already in flight when it was sent, at the measured
capacity (``max_perf``, all requests together), and its own workload at the speed of one
request served alone (a model that batches serves each request far slower than its total
throughput). A long non-streamed generation on schedule has a long prediction, so it is not a
stall.

``k`` comes from the benchmark's spread (:attr:`~pyworker._benchmark.BenchmarkResult.spread`:
the slowest benchmark request's time per unit of workload over the median one's): twice that,
and never below 3. A healthy model under the benchmark's own load was at worst ``spread``
times slower than typical; live traffic mixes longer and shorter requests than the benchmark's
and arrives in bursts, so the watchdog allows twice the worst it saw, and the floor of 3 covers
a capacity measured on short payloads being applied to long ones.

Time a request spends being written to a slow client does not count: its clock starts again
when the worker next waits on the model server for it.

On a stall, the worker moves to ``stalled`` (the lifecycle table), and every request sent to the
model server is ended at once: a 504 when its answer had not started, otherwise a cut stream;
either way its upstream connection is closed. In ``stalled``, the ``stall_probe`` service
(:func:`pyworker._probe.probe`) sends the benchmark request until one is answered.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

from ._benchmark import BenchmarkResult
from ._model import Answer, WholeAnswer
from ._typing import Headers

log = logging.getLogger("pyworker.watchdog")

MIN_MARGIN = 3.0
"""The least ``k``: the stall limit is at least this many times a request's predicted time."""


def margin_for(spread: float) -> float:
    """``k`` for a benchmark's spread (see the module docstring for why)."""
    return max(MIN_MARGIN, 2.0 * spread) if math.isfinite(spread) else MIN_MARGIN


@attrs.frozen(kw_only=True)
class Pace:
    """How fast the model serves, as its benchmark measured it (all 0: not known)."""

    max_perf: float = 0.0
    """Workload units per second, all requests together."""
    request_speed: float = 0.0
    """Workload units per second of one request served alone."""
    margin: float = MIN_MARGIN
    """``k``: how many times its predicted time a request may take (:func:`margin_for`)."""

    @classmethod
    def of(cls, result: BenchmarkResult | None) -> Pace:
        """The pace a benchmark result gives (unknown for None)."""
        if result is None:
            return cls()
        return cls(
            max_perf=result.max_perf,
            request_speed=result.request_speed,
            margin=margin_for(result.spread),
        )

    def predict(self, workload: float, ahead: float = 0.0) -> float:
        """Seconds a request of ``workload`` should take with ``ahead`` units in flight before
        it (0: no prediction)."""
        return max(
            _time_for(ahead + workload, self.max_perf), _time_for(workload, self.request_speed)
        )

    def limit(self, stall_timeout: float, expected: float) -> float:
        """The stall limit for a request predicted to take ``expected`` seconds."""
        return max(stall_timeout, self.margin * expected)


def _time_for(workload: float, speed: float) -> float:
    return workload / speed if math.isfinite(speed) and speed > 0 else 0.0


@attrs.frozen(kw_only=True)
class Stall:
    """What the watchdog saw when it decided the model server stalled."""

    silent_for: float
    """Seconds since anything arrived from the model server on any request."""
    limit: float
    """The stall limit that was passed."""
    waiting: int
    """Requests waiting for the model server then."""

    @property
    def reason(self) -> str:
        """The stall in words, for ``error_msg`` (figures only: no payload, no log line)."""
        return (
            f"no answer from the model server for {_seconds(self.silent_for)} on "
            f"{self.waiting} request(s) (limit {_seconds(self.limit)})"
        )


def _seconds(value: float) -> str:
    return f"{round(value, 1):g} s"


@attrs.define(eq=False, kw_only=True)
class Work:
    """One request sent to the model server, as the watchdog follows it."""

    expected: float
    """Seconds its answer should take (0: no prediction)."""
    sent_at: float
    waiting_since: float | None
    """When the worker began waiting on the model server for it (None: not waiting now)."""
    relaying: bool = False
    """Whether its answer has begun to go to the client (ending it then cuts the stream)."""
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    ended_by: str = ""
    """Why the watchdog ended it ("": it did not)."""

    def end(self, why: str) -> None:
        """End it now (its block is cancelled), for ``why``."""
        self.ended_by = self.ended_by or why
        self.scope.cancel()

    @property
    def ended(self) -> str:
        """Why it was ended early: a stall, or its total time; "" when it was not."""
        if not self.scope.cancelled_caught:
            return ""
        return self.ended_by or "model server did not finish the answer in time (total_timeout)"


@attrs.define(eq=False, kw_only=True)
class Watchdog:
    """Follows the requests sent to the model server (sans-IO: :meth:`check` decides).

    Args:
        stall_timeout: the least stall limit, in seconds; 0 turns the watchdog off.
        pace: the model's pace now (from its benchmark).
        total_timeout: seconds a request may take in all, from sending it to the end of its
            answer, however steadily it progresses (0: no limit).
    """

    stall_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    pace: Callable[[], Pace] = Pace
    total_timeout: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    _work: dict[Work, None] = attrs.field(factory=dict, init=False)
    """The requests followed, oldest first (a dict keeps the order they were sent in, which
    a tie in :attr:`Work.sent_at` under a coarse or mock clock would not)."""
    _ahead: float = attrs.field(default=0.0, init=False)
    """The workload of the requests followed now (a running sum: O(1) per request)."""
    last_progress: float = attrs.field(default=-math.inf, init=False)
    """When anything last arrived from the model server on any request."""

    def limit_alone(self, workload: float) -> float:
        """The stall limit of a request of ``workload`` sent alone (a probe's time)."""
        pace = self.pace()
        return pace.limit(self.stall_timeout or 30.0, pace.predict(workload))

    @property
    def in_flight(self) -> int:
        """Requests sent to the model server and not yet answered in full."""
        return len(self._work)

    @contextmanager
    def track(self, workload: float) -> Iterator[Work]:
        """Follow one request for the length of the block.

        Run the request inside :attr:`Work.scope` (``with watchdog.track(w) as work,
        work.scope:``): a stall or the total timeout cancels that scope, and :attr:`Work.ended`
        then says which.
        """
        now = trio.current_time()
        expected = self.pace().predict(workload, ahead=self._ahead)
        work = Work(expected=expected, sent_at=now, waiting_since=now)
        if self.total_timeout:
            work.scope.deadline = now + self.total_timeout
        self._work[work] = None
        self._ahead += workload
        try:
            yield work
        finally:
            del self._work[work]
            # Reset when nothing is followed, so float rounding never leaves a remainder.
            self._ahead = self._ahead - workload if self._work else 0.0

    def answer(self, work: Work, answer: Answer) -> Answer:
        """``answer`` (which has just arrived) with every chunk it yields noted as progress."""
        self.progressed(work)
        if isinstance(answer, WholeAnswer):
            return answer  # complete already: nothing more to wait for
        return _FollowedAnswer(answer, work, self)

    def progressed(self, work: Work) -> None:
        """Something arrived for ``work``: it is no longer waiting."""
        self.last_progress = trio.current_time()
        work.waiting_since = None

    def check(self, now: float) -> Stall | None:
        """Whether the model server has stalled, as of ``now``."""
        if not self.stall_timeout:
            return None
        waiting = [w for w in self._work if w.waiting_since is not None]
        if not waiting:
            return None
        oldest = waiting[0]
        limit = self.pace().limit(self.stall_timeout, oldest.expected)
        # Silence counts from the last byte, but never from before the longest wait began:
        # an idle model server owes nothing.
        longest_wait = min(w.waiting_since for w in waiting if w.waiting_since is not None)
        silent_for = now - max(self.last_progress, longest_wait)
        if silent_for <= limit:
            return None
        return Stall(silent_for=silent_for, limit=limit, waiting=len(waiting))

    def end_all(self) -> int:
        """End every request sent to the model server (their blocks are cancelled)."""
        for work in list(self._work):
            work.end("model server stalled")
        return len(self._work)

    async def run(self, on_stall: Callable[[Stall], None]) -> None:
        """Check every second (more often for a stall timeout under 4 s); on a stall, call
        ``on_stall``, end every request sent to the model server, and return.

        Run it as the ``watchdog`` service (:func:`pyworker._watch.run_in_states`): one run
        per stay in ``ready``.
        """
        if not self.stall_timeout:
            return
        # Silence before this stay (a benchmark, a stall just recovered from) is not the
        # model server's fault now.
        self.last_progress = trio.current_time()
        tick = min(1.0, self.stall_timeout / 4)
        while True:
            await trio.sleep(tick)
            stall = self.check(trio.current_time())
            if stall is not None:
                log.error("model server stalled: %s", stall.reason)
                on_stall(stall)
                ended = self.end_all()
                log.warning("ended %d request(s) sent to the stalled model server", ended)
                return


@attrs.define(eq=False)
class _FollowedAnswer:
    """An :class:`~pyworker._model.Answer` whose chunks are noted as the model's progress."""

    _answer: Answer
    _work: Work
    _watchdog: Watchdog

    @property
    def status(self) -> int:
        return self._answer.status

    @property
    def headers(self) -> Headers:
        return self._answer.headers

    @property
    def complete(self) -> bool:
        return self._answer.complete

    @property
    def error(self) -> str:
        return self._answer.error

    @property
    def actual(self) -> float | None:
        return self._answer.actual

    async def receive(self) -> bytes:
        work = self._work
        work.waiting_since = trio.current_time()
        chunk = await self._answer.receive()
        self._watchdog.progressed(work)
        return chunk

    async def read(self, limit: int | None = None) -> bytes:
        self._work.waiting_since = trio.current_time()
        body = await self._answer.read(limit)
        self._watchdog.progressed(self._work)
        return body

    async def aclose(self) -> None:
        await self._answer.aclose()
