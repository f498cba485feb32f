"""Measure the model's capacity (workload units per second) once it has loaded.

A warm-up request first (the first request after a load pays for lazy initialisation, CUDA
graph capture, cache fills), then the backend's benchmark payload in a closed loop, concurrent
when the model server takes parallel requests. Two methods:

* **adaptive** (the default): the loop starts at the backend's concurrency and doubles it while
  requests still run at nearly their single-request speed (the model has room left), up to
  ``max_concurrency``. At the chosen concurrency, capacity follows from Little's law over
  requests in the steady state: concurrency x their workload / their latency. Nothing waits
  for the loop to drain (the requests still running are abandoned), so there is no start-up or
  tail effect, whether or not the model's parallelism divides anything.
* **fixed count** (``runs`` given explicitly, e.g. ``--benchmark-runs``): exactly ``runs``
  requests; capacity is their workload divided by the wall time, drain included. Quick, and
  exact for serial models, but it reads low when the model's parallelism does not divide
  ``runs`` (the last round runs part-empty) or when ``concurrency`` cannot saturate the model.

Either way a request's workload is the one its answer reports (the endpoint's observer, or a
``run``'s :attr:`~pyworker.Reply.actual`), the estimate only where the answer says nothing: a
model that stops early (an end-of-sequence token before ``max_new_tokens``) did less work than
estimated, and counting the estimate would inflate its capacity by as much.

The result is cached (:mod:`pyworker._benchcache`), so a restarted worker does not measure
again.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from ._backend import Backend, Endpoint, Job
from ._model import ModelServer, actual_workload, observe, reported_error, send_job
from ._upstream import UpstreamError

log = logging.getLogger("pyworker.benchmark")

METHOD_VERSION = 4
"""Bumped when the measuring method changes, so old cached figures are not trusted (4: the
actual workload answers report, not the estimate)."""
SEED = 20240501
# The adaptive method raises concurrency up to this many times the backend's (at most
# _MAX_CONCURRENCY), while requests keep at least _MIN_EFFICIENCY of their single-request speed.
_RAMP_FACTOR = 8
_MAX_CONCURRENCY = 256
_MIN_EFFICIENCY = 0.8


class BenchmarkError(Exception):
    """The benchmark could not measure the model (requests failed)."""


@attrs.frozen(kw_only=True)
class BenchmarkSettings:
    """How to benchmark.

    Attributes:
        runs: timed requests (after one warm-up request); for the adaptive method, the fewest
            completions a measurement may rest on.
        concurrency: requests in flight at once (1 when the backend is serial); for the
            adaptive method, where the ramp starts.
        request_timeout: seconds one benchmark request may take.
        max_failures: failed requests tolerated before the benchmark fails.
        max_concurrency: None for the fixed-count method; else the adaptive method, raising
            concurrency up to this.
        ramp_seconds: the adaptive method stops raising concurrency after this long.
        duration: past this long, the adaptive method settles for fewer than ``runs``
            steady-state requests (at least two).
        min_efficiency: the adaptive method raises concurrency while requests keep this
            share of their single-request speed.
    """

    runs: int = attrs.field(validator=attrs.validators.ge(1))
    concurrency: int = attrs.field(validator=attrs.validators.ge(1))
    request_timeout: float = 300.0
    max_failures: int = 3
    max_concurrency: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    ramp_seconds: float = 15.0
    duration: float = 20.0
    min_efficiency: float = _MIN_EFFICIENCY

    @classmethod
    def for_backend(cls, backend: Backend, runs: int | None = None) -> BenchmarkSettings:
        """The backend's settings: adaptive, or fixed-count when ``runs`` is given."""
        parallel = backend.allow_parallel_requests
        concurrency = backend.benchmark_concurrency if parallel else 1
        if runs:
            return cls(runs=runs, concurrency=concurrency)
        top = min(_MAX_CONCURRENCY, max(concurrency, concurrency * _RAMP_FACTOR))
        return cls(
            runs=max(backend.benchmark_runs, concurrency),
            concurrency=concurrency,
            max_concurrency=top if parallel else 1,
        )


def _number(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{attribute.name} must be a finite number, not {value!r}")


@attrs.frozen(kw_only=True)
class BenchmarkResult:
    """A measured capacity (validated: a cache file of the wrong shape is refused on load)."""

    max_perf: float = attrs.field(
        validator=attrs.validators.and_(_number, attrs.validators.gt(0.0))
    )
    """Workload units per second."""
    workload: float = attrs.field(validator=_number)
    elapsed: float = attrs.field(validator=_number)
    runs: int = attrs.field(validator=attrs.validators.instance_of(int))
    key: str = attrs.field(validator=attrs.validators.instance_of(str))
    measured_at: float = attrs.field(validator=_number)
    """Unix time of the measurement."""
    request_speed: float = attrs.field(default=0.0, validator=[_number, attrs.validators.ge(0.0)])
    """Workload units per second of one request alone: the fastest measured (0: not measured,
    in a cache written before it was). A model that batches serves many requests at once, each
    far slower than ``max_perf``."""
    spread: float = attrs.field(default=1.0, validator=[_number, attrs.validators.ge(1.0)])
    """The slowest measured request's time per unit of workload over the median one's (1:
    all alike; also in a cache written before it was measured)."""


async def _one(endpoint: Endpoint, job: Job, model: ModelServer) -> float:
    """Send ``job`` and read its whole answer; returns the workload it did.

    That is what the answer reports (as the proxy counts it), else the estimate.
    """
    answer = await send_job(endpoint, job, model)
    try:
        observer = observe(endpoint, job, answer)
        # Read to the end: a streamed answer costs its whole generation.
        body = await answer.read()
    finally:
        await answer.aclose()
    if answer.status >= 400:
        why = answer.error or f"answered HTTP {answer.status}"
        raise BenchmarkError(f"benchmark request failed: {why}")
    if observer is not None:
        observer.feed(body)
        if reported := reported_error(observer):
            raise BenchmarkError(f"benchmark request failed: the answer reported {reported}")
    actual = actual_workload(answer, observer)
    if actual is None:
        return job.workload
    if not actual > 0:
        # Nothing to measure a speed by (a prompt served whole from a cache, say).
        raise BenchmarkError("benchmark request failed: its answer reports no work done")
    return actual


async def run_benchmark(
    backend: Backend,
    settings: BenchmarkSettings,
    *,
    model: ModelServer,
    key: str = "",
) -> BenchmarkResult:
    """Measure the backend's model server (see the module docstring for the two methods).

    Raises:
        BenchmarkError: more than ``settings.max_failures`` requests failed.
    """
    endpoint = backend.endpoint(backend.benchmark_route)
    make_payload = endpoint.benchmark_payload
    assert make_payload is not None
    rng = random.Random(SEED)
    failures = 0
    last_error = ""

    async def attempt(job: Job) -> float | None:
        """The workload ``job`` did, or None when it failed (and that was tolerated)."""
        nonlocal failures, last_error
        try:
            with trio.fail_after(settings.request_timeout):
                return await _one(endpoint, job, model)
        except (BenchmarkError, UpstreamError, trio.TooSlowError) as exc:
            failures += 1
            last_error = str(exc) or type(exc).__name__
            log.warning("benchmark request failed (%d so far): %s", failures, last_error)
            if failures > settings.max_failures:
                raise BenchmarkError(f"benchmark failed: {last_error}") from None
            return None

    log.info("benchmark: warm-up request")
    warmup = endpoint.parse(make_payload(rng))
    started = trio.current_time()
    while (done := await attempt(warmup)) is None:
        started = trio.current_time()
    warmed = _Sample(-1, started, trio.current_time(), done)
    try:
        if settings.max_concurrency is None:
            jobs = [endpoint.parse(make_payload(rng)) for _ in range(settings.runs)]
            samples = await _fixed_count(settings, jobs, attempt)
            workload, elapsed = sum(s.workload for s in samples), _span(samples)
        else:
            loop = _ClosedLoop(attempt=attempt, next_job=lambda: endpoint.parse(make_payload(rng)))
            samples, level = await _adaptive(settings, loop, warmed)
            workload, elapsed = _little(samples, level)
    except* BenchmarkError as group:
        raise group.exceptions[0] from None
    return BenchmarkResult(
        max_perf=workload / elapsed,
        workload=workload,
        elapsed=elapsed,
        runs=len(samples),
        key=key,
        measured_at=time.time(),
        request_speed=max(_speed(sample) for sample in [warmed, *samples]),
        spread=_spread(samples),
    )


async def _fixed_count(
    settings: BenchmarkSettings,
    jobs: list[Job],
    attempt: Callable[[Job], Awaitable[float | None]],
) -> list[_Sample]:
    """Run ``jobs`` at ``settings.concurrency``; one sample per job (its successful try)."""
    queue = list(enumerate(reversed(jobs)))
    samples: list[_Sample] = []

    async def runner() -> None:
        while queue:
            index, job = queue.pop()
            started = trio.current_time()
            while (done := await attempt(job)) is None:
                started = trio.current_time()
            samples.append(_Sample(index, started, trio.current_time(), done))

    log.info("benchmark: %d runs, %d at a time", settings.runs, settings.concurrency)
    async with trio.open_nursery() as nursery:
        for _ in range(settings.concurrency):
            nursery.start_soon(runner)
    return samples


def _span(samples: list[_Sample]) -> float:
    """Seconds from the first request sent to the last one answered (the drain included)."""
    return max(max(s.finished for s in samples) - min(s.started for s in samples), 1e-9)


def _spread(samples: list[_Sample]) -> float:
    """The slowest sample's seconds per unit of workload over the median sample's."""
    per_unit = [(s.finished - s.started) / s.workload for s in samples if s.workload > 0]
    if not per_unit:
        return 1.0
    median = statistics.median(per_unit)
    return max(max(per_unit) / median, 1.0) if median > 0 else 1.0


@attrs.frozen
class _Sample:
    """One completed benchmark request, with the workload it did."""

    index: int
    started: float
    finished: float
    workload: float


@attrs.define(eq=False)
class _ClosedLoop:
    """Runners that each send the next request as soon as their last one is answered."""

    attempt: Callable[[Job], Awaitable[float | None]]
    next_job: Callable[[], Job]
    sent: list[float] = attrs.field(factory=list)
    """Start time of every request sent, in order."""
    finished: dict[int, tuple[float, float]] = attrs.field(factory=dict)
    """(finish time, workload done) of each completed request, by its index in ``sent``."""
    failed: set[int] = attrs.field(factory=set)
    """Indices of the requests that failed."""
    _progress: trio.Event = attrs.field(factory=trio.Event)

    async def runner(self) -> None:
        """Send requests forever (until cancelled), recording each one that succeeds."""
        while True:
            job = self.next_job()
            index = len(self.sent)
            self.sent.append(trio.current_time())
            done = await self.attempt(job)
            if done is not None:
                self.finished[index] = (trio.current_time(), done)
            else:
                self.failed.add(index)
            self._progress.set()
            self._progress = trio.Event()

    def answered(self, indices: range) -> bool:
        """Whether every request of ``indices`` was sent and has succeeded or failed."""
        return len(self.sent) >= indices.stop and all(
            i in self.finished or i in self.failed for i in indices
        )

    def done(self, first: int = 0, *, since: float = -math.inf) -> list[_Sample]:
        """Completed requests sent from index ``first`` on, and at or after ``since``."""
        samples = []
        for index, (finished, workload) in self.finished.items():
            started = self.sent[index]
            if index >= first and started >= since:
                samples.append(_Sample(index, started, finished, workload))
        return samples

    async def wait(self, condition: Callable[[], bool], deadline: float = math.inf) -> None:
        """Wait until ``condition()`` holds after a completion, or until ``deadline``."""
        with trio.move_on_at(deadline):
            while not condition():
                await self._progress.wait()


async def _adaptive(
    settings: BenchmarkSettings, loop: _ClosedLoop, warmup: _Sample
) -> tuple[list[_Sample], int]:
    """Find a saturating concurrency and measure steady throughput there.

    Each level's wave (the first requests of the runners it adds) shows whether requests
    slow each other down: once it is answered, its mean speed is compared with the fastest
    request seen. Below ``min_efficiency`` the model is saturated: measure there (the steady
    state starts at the level's first answer, so waiting for the wave costs nothing).

    Returns:
        The requests the measurement rests on, and the concurrency they ran at (see
        :func:`_little`).
    """
    assert settings.max_concurrency is not None
    top = max(settings.concurrency, settings.max_concurrency)
    reference = _speed(warmup)
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        ramp_ends = started + settings.ramp_seconds
        wrap_up = started + settings.duration
        level = wave_size = settings.concurrency
        running = 0
        while True:
            # The wave: the next requests sent, as many as the runners added. Sent at once by
            # the new runners, they run while the whole level is in flight.
            first = len(loop.sent)
            wave = range(first, first + wave_size)
            for _ in range(level - running):
                nursery.start_soon(loop.runner)
            running = level
            await loop.wait(partial(loop.answered, wave))
            now = trio.current_time()
            reference = max([reference, *(_speed(s) for s in loop.done())])
            speeds = [_speed(s) for s in loop.done(first) if s.index < wave.stop]
            if not speeds:
                continue  # the whole wave failed (and was tolerated): the next one, then
            efficiency = statistics.fmean(speeds) / reference
            log.info(
                "benchmark: %d at a time: requests at %.0f%% of single-request speed",
                level,
                100 * efficiency,
            )
            if efficiency < settings.min_efficiency:
                result = await _steady_rate(settings, loop, level, loop.done(first), wrap_up)
                break
            if level < top and now < ramp_ends:
                wave_size = min(top, 2 * level) - level
                level += wave_size
                continue
            # Never saturated: requests ran at (nearly) full speed, so the throughput is
            # what they show (the model may have even more room).
            await loop.wait(_at_least(partial(loop.done, first), settings.runs))
            result = loop.done(first), level
            why = (
                f"the most tried (8 x the backend's benchmark_concurrency "
                f"{settings.concurrency}, at most {_MAX_CONCURRENCY})"
                if level >= top
                else f"the ramp's {settings.ramp_seconds:g} s ran out"
            )
            log.warning(
                "benchmark: requests still ran at full speed with %d at a time, %s: the "
                "capacity measured is a lower bound (the model can serve more at once), so the "
                "autoscaler will send it less than it could take. To measure higher, raise "
                "the backend's benchmark_concurrency",
                level,
                why,
            )
            break
        nursery.cancel_scope.cancel()  # abandon the requests still running
    return result


def _speed(sample: _Sample) -> float:
    return sample.workload / max(sample.finished - sample.started, 1e-9)


def _at_least(samples: Callable[[], list[_Sample]], count: int) -> Callable[[], bool]:
    return lambda: len(samples()) >= count


def _little(samples: list[_Sample], level: int) -> tuple[float, float]:
    """(workload, seconds) at ``level`` in flight, by Little's law.

    Throughput = level x workload / latency summed over ``samples``; the seconds returned are
    how long their workload takes at that throughput.
    """
    workload = sum(s.workload for s in samples)
    busy = sum(s.finished - s.started for s in samples)
    return workload, max(busy / level, 1e-9)


async def _steady_rate(
    settings: BenchmarkSettings,
    loop: _ClosedLoop,
    level: int,
    wave: list[_Sample],
    wrap_up: float,
) -> tuple[list[_Sample], int]:
    """The requests in the steady state at ``level`` (see :func:`_little`).

    Only requests sent after the level's first answer count: the wave before them was sent
    all at once, to a model whose queue was still forming. It waits for ``settings.runs`` of
    them, or past ``wrap_up`` for at least two (a model serving one request at a time
    answers few requests per latency).
    """
    steady_from = min(s.finished for s in wave)
    sample = partial(loop.done, since=steady_from)
    await loop.wait(_at_least(sample, settings.runs), deadline=wrap_up)
    await loop.wait(_at_least(sample, 2))
    log.info("benchmark: steady state over %d requests", len(sample()))
    return sample(), level
