"""Measure the model's capacity (workload units per second) once it has loaded.

A warm-up request first (the first request after a load pays for lazy initialisation, CUDA
graph capture, cache fills), then timed runs of the backend's benchmark payload, concurrent
when the model server takes parallel requests. Capacity is the workload completed divided by
the wall time of the timed phase.

The result is cached under a key that changes whenever the backend, the model, the benchmark
payload or the benchmark settings change, so a restarted worker does not benchmark again, and
a changed one does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path

import attrs
import trio

from ._backend import Backend, Endpoint, Job, RunContext
from ._upstream import UpstreamError, UpstreamPool

log = logging.getLogger("pyworker.benchmark")

# Bump when the measuring method changes, so old cached figures are not trusted.
_METHOD_VERSION = 2
_SEED = 20240501


class BenchmarkError(Exception):
    """The benchmark could not measure the model (requests failed)."""


@attrs.frozen(kw_only=True)
class BenchmarkSettings:
    """How to benchmark.

    Attributes:
        runs: timed requests (after one warm-up request).
        concurrency: requests in flight at once (1 when the backend is serial).
        request_timeout: seconds one benchmark request may take.
        max_failures: failed requests tolerated before the benchmark fails.
    """

    runs: int = attrs.field(validator=attrs.validators.ge(1))
    concurrency: int = attrs.field(validator=attrs.validators.ge(1))
    request_timeout: float = 300.0
    max_failures: int = 3

    @classmethod
    def for_backend(cls, backend: Backend, runs: int | None = None) -> BenchmarkSettings:
        """The backend's settings; ``runs`` overrides its run count."""
        concurrency = backend.benchmark_concurrency if backend.allow_parallel_requests else 1
        return cls(runs=runs or max(backend.benchmark_runs, concurrency), concurrency=concurrency)


@attrs.frozen(kw_only=True)
class BenchmarkResult:
    """A measured capacity."""

    max_perf: float
    """Workload units per second."""
    workload: float
    elapsed: float
    runs: int
    key: str
    measured_at: float
    """Unix time of the measurement."""


def _payloads(endpoint: Endpoint, count: int) -> list[object]:
    assert endpoint.benchmark_payload is not None
    rng = random.Random(_SEED)
    return [endpoint.benchmark_payload(rng) for _ in range(count)]


def cache_key(backend: Backend, model_id: str, settings: BenchmarkSettings) -> str:
    """A digest of everything the measured capacity depends on."""
    endpoint = backend.endpoint(backend.benchmark_route)
    material = {
        "method": _METHOD_VERSION,
        "backend": backend.name,
        "model": model_id,
        "route": backend.benchmark_route,
        "parallel": backend.allow_parallel_requests,
        "settings": attrs.asdict(settings),
        "payloads": _payloads(endpoint, min(settings.runs, 4)),
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@attrs.define(eq=False)
class BenchmarkCache:
    """Cached results, one small JSON file per key, written atomically."""

    directory: Path

    def _path(self, key: str) -> Path:
        return self.directory / f"benchmark-{key}.json"

    async def load(self, key: str) -> BenchmarkResult | None:
        """The cached result for ``key``; None when absent or unreadable."""
        return await trio.to_thread.run_sync(self._load_sync, key)

    def _load_sync(self, key: str) -> BenchmarkResult | None:
        try:
            data = json.loads(self._path(key).read_text())
            result = BenchmarkResult(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable benchmark cache %s: %s", self._path(key), exc)
            return None
        if result.key != key or not (math.isfinite(result.max_perf) and result.max_perf > 0):
            return None
        return result

    async def store(self, result: BenchmarkResult) -> None:
        """Write ``result`` so that a crash never leaves a half-written file."""
        await trio.to_thread.run_sync(self._store_sync, result)

    def _store_sync(self, result: BenchmarkResult) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".benchmark-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(attrs.asdict(result), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(result.key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


async def _one(endpoint: Endpoint, job: Job, upstream: UpstreamPool, context: RunContext) -> None:
    if endpoint.run is not None:
        reply = await endpoint.run(job, context)
        status = reply.status
    else:
        async with await upstream.request(b"POST", job.upstream_path.encode(), job.body) as resp:
            status = resp.status
            # Read to the end: a streamed answer costs its whole generation.
            await resp.read()
    if status >= 400:
        raise BenchmarkError(f"benchmark request answered HTTP {status}")


async def run_benchmark(
    backend: Backend,
    settings: BenchmarkSettings,
    *,
    upstream: UpstreamPool,
    context: RunContext,
    key: str = "",
) -> BenchmarkResult:
    """Measure the backend's model server.

    Raises:
        BenchmarkError: more than ``settings.max_failures`` requests failed.
    """
    endpoint = backend.endpoint(backend.benchmark_route)
    jobs = [endpoint.parse(p) for p in _payloads(endpoint, settings.runs + 1)]
    failures = 0
    last_error = ""

    async def attempt(job: Job) -> bool:
        nonlocal failures, last_error
        try:
            with trio.fail_after(settings.request_timeout):
                await _one(endpoint, job, upstream, context)
        except (BenchmarkError, UpstreamError, trio.TooSlowError) as exc:
            failures += 1
            last_error = str(exc) or type(exc).__name__
            log.warning("benchmark request failed (%d so far): %s", failures, last_error)
            if failures > settings.max_failures:
                raise BenchmarkError(f"benchmark failed: {last_error}") from None
            return False
        return True

    log.info("benchmark: warm-up request")
    while not await attempt(jobs[0]):
        pass

    queue = list(reversed(jobs[1:]))
    done_workload = 0.0

    async def runner() -> None:
        nonlocal done_workload
        while queue:
            job = queue.pop()
            while not await attempt(job):
                pass
            done_workload += job.workload

    log.info("benchmark: %d runs, %d at a time", settings.runs, settings.concurrency)
    started = trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(settings.concurrency):
                nursery.start_soon(runner)
    except* BenchmarkError as group:
        raise group.exceptions[0] from None
    elapsed = max(trio.current_time() - started, 1e-9)
    return BenchmarkResult(
        max_perf=done_workload / elapsed,
        workload=done_workload,
        elapsed=elapsed,
        runs=settings.runs,
        key=key,
        measured_at=time.time(),
    )
