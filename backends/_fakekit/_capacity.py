"""A model server's capacity: processor sharing under a rate cap and a parallelism limit.

The truth this model implements, so that benchmarks can check a worker against it:

* an admitted request is served at ``min(token_rate, capacity / active)`` units per second,
  where ``active`` is the number of admitted requests not yet fully served (processor
  sharing; the rate is recomputed whenever a request arrives, finishes or leaves);
* at most ``max_parallel`` requests are admitted at once; the others wait in FIFO order;
* so with enough requests offered, sustained throughput is
  ``min(capacity, max_parallel * token_rate)`` units per second.

The model is an exact, lazily evaluated event simulation in *virtual service* time: ``V``
grows at the per-request rate, a request admitted at ``V0`` with ``W`` units finishes when
``V`` reaches ``V0 + W``. Completions and the admissions they allow are computed at their
exact instants whenever anyone looks, so late-waking tasks never distort the schedule; tasks
only sleep until the instant they care about (their next unit or the next completion).
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from types import TracebackType

import attrs
import trio

# Floating-point slack when turning virtual service into whole units.
_EPSILON = 1e-9


class _Phase(enum.Enum):
    NEW = "new"
    QUEUED = "queued"
    ACTIVE = "active"
    DONE = "done"
    LEFT = "left"


# Validated at construction only: a validating __setattr__ would tax every simulation step.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class CapacityModel:
    """Shares a model server's service rate among concurrent requests.

    Attributes:
        token_rate: units per second one request is served at, at most.
        capacity: units per second shared by all active requests; None is unbounded.
        max_parallel: requests served at once; None is unbounded. Extra requests wait FIFO.
        quantum: at rates above one unit per ``quantum`` seconds, :meth:`Job.serve_some`
            hands out units in batches every ``quantum`` seconds instead of waking per unit
            (each unit is then late by less than ``quantum``).
    """

    token_rate: float = attrs.field(validator=attrs.validators.gt(0))
    capacity: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    max_parallel: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    quantum: float = attrs.field(default=0.005, validator=attrs.validators.ge(0))

    # Simulation state, as of real time _t0.
    _t0: float = attrs.field(init=False, default=0.0)
    _v: float = attrs.field(init=False, default=0.0)
    _active: int = attrs.field(init=False, default=0)
    # (finish V, sequence, job); entries of jobs that left early are skipped lazily.
    _finishes: list[tuple[float, int, Job]] = attrs.field(init=False, factory=list)
    _queue: deque[Job] = attrs.field(init=False, factory=deque)
    _sequence: int = attrs.field(init=False, default=0)
    # Set (and replaced) when service speeds up unpredictably: an active job left early.
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)

    @property
    def throughput_limit(self) -> float:
        """Sustained units per second with enough requests offered (``inf`` if unbounded)."""
        parallel = math.inf if self.max_parallel is None else self.max_parallel * self.token_rate
        capacity = math.inf if self.capacity is None else self.capacity
        return min(parallel, capacity)

    @property
    def active(self) -> int:
        """Requests being served now."""
        self._catch_up(trio.current_time())
        return self._active

    @property
    def queued(self) -> int:
        """Requests waiting for a free slot."""
        self._catch_up(trio.current_time())
        return len(self._queue)

    def job(self, units: float) -> Job:
        """A request of ``units`` units, to use as ``async with model.job(w) as job:``.

        Entering waits for a slot (FIFO); the job is then served until its units are done or
        the block exits, whichever comes first. Exiting early (cancellation, a client that
        went away) frees the slot and the capacity at once.
        """
        if units < 0:
            raise ValueError(f"units must be >= 0, not {units}")
        return Job(model=self, total=units)

    def _rate(self) -> float:
        if self.capacity is None:
            return self.token_rate
        return min(self.token_rate, self.capacity / self._active)

    def _catch_up(self, now: float) -> None:
        """Advance the simulation to ``now``, completing and admitting jobs on the way."""
        while self._active:
            rate = self._rate()
            finishes = self._finishes
            while finishes[0][2].phase is not _Phase.ACTIVE:
                heapq.heappop(finishes)
            finish_v, _, job = finishes[0]
            # max(): rounding must not move the clock backwards.
            finish_t = max(self._t0, self._t0 + (finish_v - self._v) / rate)
            if finish_t > now:
                self._v += (now - self._t0) * rate
                break
            heapq.heappop(finishes)
            self._t0 = finish_t
            self._v = finish_v
            job.phase = _Phase.DONE
            self._active -= 1
            self._admit_waiting()
        self._t0 = now

    def _admit_waiting(self) -> None:
        limit = self.max_parallel
        while self._queue and (limit is None or self._active < limit):
            self._admit(self._queue.popleft())

    def _admit(self, job: Job) -> None:
        job.phase = _Phase.ACTIVE
        job.start_v = self._v
        self._active += 1
        self._sequence += 1
        heapq.heappush(self._finishes, (self._v + job.total, self._sequence, job))

    def _next_completion(self) -> float:
        """Real time of the next completion at today's rate (call right after a catch-up)."""
        if not self._active:
            return math.inf
        finishes = self._finishes
        while finishes[0][2].phase is not _Phase.ACTIVE:
            heapq.heappop(finishes)
        return self._t0 + (finishes[0][0] - self._v) / self._rate()

    async def _sleep_until(self, deadline: float) -> None:
        # Arrivals only slow service down, so a sleeper wakes early and re-plans; an early
        # leave speeds it up, so that one wakes everybody through _changed.
        with trio.move_on_at(deadline):
            await self._changed.wait()

    def _enter(self, job: Job) -> None:
        self._catch_up(trio.current_time())
        limit = self.max_parallel
        if not self._queue and (limit is None or self._active < limit):
            self._admit(job)
        else:
            job.phase = _Phase.QUEUED
            self._queue.append(job)

    def _leave(self, job: Job) -> None:
        self._catch_up(trio.current_time())
        if job.phase is _Phase.QUEUED:
            self._queue.remove(job)
        elif job.phase is _Phase.ACTIVE:
            self._active -= 1
            self._admit_waiting()
            self._changed.set()
            self._changed = trio.Event()
        else:
            return
        job.phase = _Phase.LEFT


@attrs.define(eq=False)
class Job:
    """One request's share of a :class:`CapacityModel` (made by :meth:`CapacityModel.job`).

    Attributes:
        total: the units this request costs.
        consumed: units handed out so far by :meth:`serve` and :meth:`serve_some`.
    """

    _model: CapacityModel
    total: float
    consumed: float = attrs.field(init=False, default=0.0)
    phase: _Phase = attrs.field(init=False, default=_Phase.NEW)
    start_v: float = attrs.field(init=False, default=0.0)

    async def __aenter__(self) -> Job:
        model = self._model
        model._enter(self)
        try:
            while self.phase is _Phase.QUEUED:
                await model._sleep_until(model._next_completion())
                model._catch_up(trio.current_time())
        except BaseException:
            # Cancelled while queued: give the place up (re-raised untouched).
            model._leave(self)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: this runs from async generators being closed.
        self._model._leave(self)

    @property
    def served(self) -> float:
        """Units served so far (fractional)."""
        model = self._model
        model._catch_up(trio.current_time())
        if self.phase is _Phase.ACTIVE:
            return min(self.total, model._v - self.start_v)
        if self.phase is _Phase.DONE:
            return self.total
        return 0.0

    async def serve(self, units: float) -> None:
        """Wait until ``units`` more units are served (clamped to the job's total)."""
        target = min(self.total, self.consumed + units)
        await self._wait_for(target, not_before=0.0)
        self.consumed = target

    async def serve_some(self, limit: int) -> int:
        """Wait for the next whole units and return how many were served (1 to ``limit``).

        At low rates this returns each unit as it completes; at high rates it waits at most
        :attr:`CapacityModel.quantum` to hand out a batch, so a caller that emits one token
        per unit keeps to the schedule within a quantum without a wake-up per token.
        Returns 0 only when the job has no units left.
        """
        ceiling = min(self.total, self.consumed + limit)
        if ceiling - self.consumed < 1 - _EPSILON:
            return 0
        served = self.served
        if served < self.consumed + 1 - _EPSILON:
            # Behind schedule callers get what is ready at once; others wait for one unit
            # and, when units are quicker than a quantum, a quantum's worth.
            await self._wait_for(
                self.consumed + 1, not_before=trio.current_time() + self._model.quantum
            )
            served = self.served
        done = min(ceiling, math.floor(served + _EPSILON))
        count = int(done - self.consumed)
        self.consumed = done
        return count

    async def _wait_for(self, target: float, *, not_before: float) -> None:
        model = self._model
        while True:
            now = trio.current_time()
            model._catch_up(now)
            if self.phase is _Phase.ACTIVE:
                needed = self.start_v + target - model._v
                if needed <= _EPSILON:
                    return
                ready = now + needed / model._rate()
                deadline = max(not_before, min(ready, model._next_completion()))
            elif self.phase is _Phase.DONE:
                return
            else:
                raise RuntimeError(f"job is {self.phase.value}, not being served")
            await model._sleep_until(deadline)
