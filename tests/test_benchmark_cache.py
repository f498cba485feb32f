"""The benchmark's cache: its key (what a capacity depends on) and its file (a round trip,
files it cannot use), and end to end: the next worker reusing a figure, measuring again when
forced, when the file is corrupt or a backend setting changed, and a cache it cannot write that
does not stop the worker. What the benchmark measures is in ``test_benchmark.py``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from harness import eventually, seed_benchmark, start_stack

from pyworker import State, load_backend
from pyworker._benchcache import BenchmarkCache, cache_key
from pyworker._benchmark import BenchmarkResult, BenchmarkSettings

HELLO = "hello_world"
GUARD = 30  # seconds: the absolute bound on each test
BACKEND = load_backend(HELLO)


def _key(**backend_changes: Any) -> str:
    backend = attrs.evolve(BACKEND, **backend_changes)
    return cache_key(backend, "model-a", BenchmarkSettings.for_backend(backend, 2))


# -- cache key and cache file --------------------------------------------------------------------


def test_cache_key_is_stable_and_follows_what_capacity_depends_on() -> None:
    key = _key()
    assert key == _key()
    settings = BenchmarkSettings.for_backend(BACKEND, 2)
    changed = {
        "serial": _key(allow_parallel_requests=False),
        "concurrency": _key(benchmark_concurrency=3),
        "route": _key(benchmark_route="/generate_stream"),
        "name": _key(name="other"),
        "runs": cache_key(BACKEND, "model-a", BenchmarkSettings.for_backend(BACKEND, 3)),
        "model": cache_key(BACKEND, "model-b", settings),
    }
    endpoints = tuple(
        attrs.evolve(e, benchmark_payload=lambda rng: {"prompt": "other", "max_response_tokens": 9})
        for e in BACKEND.endpoints
    )
    changed["payload"] = _key(endpoints=endpoints)
    assert key not in changed.values(), changed
    assert len(set(changed.values())) == len(changed)


def _result(key: str, max_perf: float = 123.0) -> BenchmarkResult:
    return BenchmarkResult(
        max_perf=max_perf, workload=10.0, elapsed=1.0, runs=2, key=key, measured_at=1.0
    )


async def test_cache_round_trip_and_unreadable_files(tmp_path: Path) -> None:
    cache = BenchmarkCache(directory=tmp_path / "state")
    assert await cache.load("k1") is None  # no directory yet
    await cache.store(_result("k1"))
    assert await cache.load("k1") == _result("k1")
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["benchmark-k1.json"]

    path = tmp_path / "state" / "benchmark-k1.json"
    for text in (
        "{corrupt",
        "",
        "[]",
        json.dumps({"max_perf": 1}),
        json.dumps(attrs.asdict(_result("another key"))),
        json.dumps({**attrs.asdict(_result("k1")), "max_perf": 0.0}),
        json.dumps(attrs.asdict(_result("k1"))).replace("123.0", "NaN"),
        json.dumps({**attrs.asdict(_result("k1")), "extra": 1}),
        # Valid JSON of the wrong shape: treated as absent, never a crash at start-up.
        json.dumps({**attrs.asdict(_result("k1")), "max_perf": None}),
        json.dumps({**attrs.asdict(_result("k1")), "max_perf": "fast"}),
        json.dumps({**attrs.asdict(_result("k1")), "runs": 2.5}),
        json.dumps({**attrs.asdict(_result("k1")), "key": None}),
        json.dumps("a string"),
    ):
        path.write_text(text)
        assert await cache.load("k1") is None, text


# -- the cache end to end ------------------------------------------------------------------------


async def _completed_when_ready(
    nursery: trio.Nursery, tmp_path: Path, state_dir: Path, **config: Any
) -> tuple[int, float]:
    """Run a stack until ready; the fake's completed requests and the capacity."""
    await trio.Path(tmp_path).mkdir()
    stack = await start_stack(
        nursery,
        tmp_path,
        HELLO,
        "--load-delay",
        "0.05",
        "--token-rate",
        "2000",
        wait_ready=True,
        state_dir=state_dir,
        benchmark_runs=2,
        **config,
    )

    # The fake counts a request just after sending its answer: wait until it is quiet.
    async def settled() -> dict[str, Any] | None:
        stats: dict[str, Any] = await stack.stats()
        return stats if stats["in_flight"] == 0 else None

    with trio.fail_after(5):
        completed = (await eventually(settled, what="the model server idle"))["completed"]
    max_perf = stack.worker.lifecycle.max_perf
    stack.shutdown.set()
    await stack.wait_state(State.STOPPED)
    return completed, max_perf


async def test_benchmark_is_cached_across_workers(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    with trio.fail_after(GUARD):
        completed, measured = await _completed_when_ready(nursery, tmp_path / "first", state)
        assert completed == 3  # a warm-up and two runs
        [cached] = state.glob("benchmark-*.json")

        # Same backend and settings: ready without a single benchmark request, saying where
        # the figure came from.
        caplog.set_level(logging.INFO, logger="pyworker.benchmark")
        completed, max_perf = await _completed_when_ready(nursery, tmp_path / "second", state)
        assert completed == 0
        assert max_perf == measured
        assert f"cached in {cached}" in caplog.text
        assert "--force-benchmark" in caplog.text

        # force_benchmark measures again (and refreshes the cache).
        completed, _ = await _completed_when_ready(
            nursery, tmp_path / "forced", state, force_benchmark=True
        )
        assert completed == 3
        assert list(state.glob("benchmark-*.json")) == [cached]

        # A corrupt cache file is ignored: measured again, and rewritten.
        cached.write_text("{not json")
        completed, _ = await _completed_when_ready(nursery, tmp_path / "corrupt", state)
        assert completed == 3
        assert json.loads(cached.read_text())["max_perf"] > 0


async def test_changed_backend_setting_is_benchmarked_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    seed_benchmark(state, BACKEND, max_perf=5.0, runs=2)
    serial = attrs.evolve(BACKEND, allow_parallel_requests=False)
    with trio.fail_after(GUARD):
        await trio.Path(tmp_path / "serial").mkdir()
        stack = await start_stack(
            nursery,
            tmp_path / "serial",
            HELLO,
            "--load-delay",
            "0.05",
            "--token-rate",
            "2000",
            wait_ready=True,
            backend=serial,
            state_dir=state,
            benchmark_runs=2,
        )
        assert (await stack.stats())["completed"] == 3
        assert stack.worker.lifecycle.max_perf != 5.0
        assert len(list(state.glob("benchmark-*.json"))) == 2


async def test_unwritable_cache_does_not_stop_the_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with trio.fail_after(GUARD):
        completed, max_perf = await _completed_when_ready(
            nursery, tmp_path / "stack", blocker / "state"
        )
    assert completed == 3
    assert max_perf > 0
    assert await trio.Path(blocker).is_file()


@pytest.mark.parametrize(
    "settings",
    [
        BenchmarkSettings(runs=2, concurrency=1),
        BenchmarkSettings(runs=8, concurrency=1, max_concurrency=1),
    ],
    ids=["fixed-count", "adaptive"],
)
def test_cache_key_follows_the_parallel_flag_alone(settings: BenchmarkSettings) -> None:
    """Same settings, only the flag differs (for_backend would change the settings too): a
    figure measured one at a time is not the capacity of a model taking parallel requests."""
    serial = attrs.evolve(BACKEND, allow_parallel_requests=False)
    assert BACKEND.allow_parallel_requests
    assert cache_key(BACKEND, "model-a", settings) != cache_key(serial, "model-a", settings)
