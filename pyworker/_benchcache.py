"""The measured capacity, remembered: a restarted worker does not benchmark again.

Results are cached under a key that changes whenever the backend, the model, the benchmark
payload or the benchmark settings (or the measuring method) change, so a changed worker does
measure again. One small JSON file per key, written atomically; a file that cannot be read or
has the wrong shape is ignored, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

import attrs
import trio

from ._backend import Backend, Endpoint
from ._benchmark import METHOD_VERSION, SEED, BenchmarkResult, BenchmarkSettings, run_benchmark
from ._model import ModelServer

log = logging.getLogger("pyworker.benchmark")


def _payloads(endpoint: Endpoint, count: int) -> list[object]:
    assert endpoint.benchmark_payload is not None
    rng = random.Random(SEED)
    return [endpoint.benchmark_payload(rng) for _ in range(count)]


def cache_key(backend: Backend, model_id: str, settings: BenchmarkSettings) -> str:
    """A digest of everything the measured capacity depends on."""
    endpoint = backend.endpoint(backend.benchmark_route)
    material = {
        "method": METHOD_VERSION,
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

    def path(self, key: str) -> Path:
        """The file that holds the result for ``key``."""
        return self.directory / f"benchmark-{key}.json"

    async def load(self, key: str) -> BenchmarkResult | None:
        """The cached result for ``key``; None when absent or unreadable."""
        return await trio.to_thread.run_sync(self._load_sync, key)

    def _load_sync(self, key: str) -> BenchmarkResult | None:
        try:
            data = json.loads(self.path(key).read_text())
            if not isinstance(data, dict):
                raise TypeError(f"a JSON object was expected, not {type(data).__name__}")
            result = BenchmarkResult(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            # Treated as absent, never fatal: a damaged file must not crash-loop the worker.
            log.warning(
                "ignoring unreadable benchmark cache %s (benchmarking again): %s",
                self.path(key),
                exc,
            )
            return None
        return result if result.key == key else None

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
            os.replace(tmp, self.path(result.key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


async def measured_capacity(
    backend: Backend,
    model: ModelServer,
    *,
    cache_dir: Path,
    runs: int | None = None,
    force: bool = False,
) -> BenchmarkResult:
    """The model's capacity: the cached figure for these settings, else a new measurement
    (then cached).

    Args:
        backend: the backend whose benchmark route is measured.
        model: the model server.
        cache_dir: where results are cached.
        runs: a fixed number of benchmark requests (None: the adaptive method).
        force: measure even when a cached figure exists.

    Raises:
        BenchmarkError: the measurement failed.
    """
    settings = BenchmarkSettings.for_backend(backend, runs)
    key = cache_key(backend, backend.model_id, settings)
    cache = BenchmarkCache(directory=cache_dir)
    if not force:
        cached = await cache.load(key)
        if cached is not None:
            measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cached.measured_at))
            log.info(
                "benchmark: using the capacity %.1f/s measured %s, cached in %s "
                "(--force-benchmark measures again)",
                cached.max_perf,
                measured,
                cache.path(key),
            )
            return cached
    result = await run_benchmark(backend, settings, model=model, key=key)
    log.info(
        "benchmark: capacity %.1f workload/s (%d runs, %.1f s, spread %.1f)",
        result.max_perf,
        result.runs,
        result.elapsed,
        result.spread,
    )
    try:
        await cache.store(result)
    except OSError as exc:
        log.warning("could not cache the benchmark result in %s: %s", cache_dir, exc)
    return result
