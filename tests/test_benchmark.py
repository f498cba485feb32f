"""The benchmark: what it measures and how it fails, in-process against a model server whose
speed is known, and end to end against the demo's. Its cache (the key, the file, the next worker
reusing a figure) is in ``test_benchmark_cache.py``."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from harness import start_stack

from backends._fakekit import HTTPServer, Request, Response
from pyworker import Backend, UsageObserver, load_backend
from pyworker._benchmark import (
    BenchmarkError,
    BenchmarkResult,
    BenchmarkSettings,
    _Sample,
    _spread,
    run_benchmark,
)
from pyworker._model import ModelServer
from pyworker._upstream import UpstreamPool

HELLO = "hello_world"
GUARD = 30  # seconds: the absolute bound on each test
BACKEND = load_backend(HELLO)


# -- measuring -----------------------------------------------------------------------------------


@attrs.define
class Model:
    """An in-process model server: each request takes workload / rate seconds."""

    rate: float = 2000.0
    fail_first: int = 0
    status: int = 200
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    slots: trio.Semaphore | None = None
    """Requests served at once (None: any number); the rest wait, as in a batch-limited model."""
    eos_after: int | None = None
    """Generate at most this many tokens, and say so as the demo server does (None: all those
    asked for, and say nothing: the estimate stands)."""
    error_inside: bool = False
    """Answer 200 with an error event after the counts (a model failing mid-answer)."""

    async def handle(self, request: Request) -> Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return Response.json({"error": "warming up"}, status=503)
        body = json.loads(request.body)
        tokens = body["max_response_tokens"]
        if self.eos_after is not None:
            tokens = min(tokens, self.eos_after)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.slots is None:
                await trio.sleep(tokens / self.rate)
            else:
                async with self.slots:
                    await trio.sleep(tokens / self.rate)
        finally:
            self.in_flight -= 1
        if self.eos_after is None:
            return Response.json({"ok": True}, status=self.status)
        counts = {"prompt_tokens": 0, "generated_tokens": tokens}
        if self.error_inside:
            body = json.dumps(counts).encode() + b'\n{"error":"engine died"}\n'
            return Response(body=body, status=self.status)
        return Response.json({"response": "…", **counts}, status=self.status)


async def _measure(
    nursery: trio.Nursery, model: Model, settings: BenchmarkSettings, backend: Backend = BACKEND
) -> BenchmarkResult:
    port: int = await nursery.start(HTTPServer(model.handle).serve)
    async with (
        UpstreamPool(host="127.0.0.1", port=port) as upstream,
        httpx.AsyncClient() as http,
    ):
        server = ModelServer(url=f"http://127.0.0.1:{port}", upstream=upstream, http=http)
        return await run_benchmark(backend, settings, model=server, key="k")


async def test_benchmark_measures_workload_per_second(nursery: trio.Nursery) -> None:
    model = Model()
    with trio.fail_after(GUARD):
        result = await _measure(nursery, model, BenchmarkSettings(runs=4, concurrency=2))
    assert model.requests == 5  # a warm-up, then the timed runs
    assert model.max_in_flight == 2
    assert result.runs == 4
    assert result.key == "k"
    # Each run: ~118 prompt tokens + 64 answer tokens; two at a time, 32 ms each.
    assert result.workload == pytest.approx(4 * 182, rel=0.1)
    assert 0 < result.max_perf < result.workload / 0.064
    assert result.max_perf == pytest.approx(result.workload / result.elapsed)


async def test_adaptive_benchmark_finds_a_parallelism_limit_it_does_not_divide(
    nursery: trio.Nursery,
) -> None:
    """The production method ramps concurrency past what the model runs at once and measures
    the saturated rate by Little's law: no tail effect when the model's 3 slots do not divide
    the number of requests. Truth: 3 slots x a request's workload / its 64 ms of service."""
    model = Model(rate=1000.0, slots=trio.Semaphore(3))
    settings = BenchmarkSettings(
        runs=6, concurrency=1, max_concurrency=16, ramp_seconds=3.0, duration=4.0
    )
    with trio.fail_after(GUARD):
        result = await _measure(nursery, model, settings)
    per_request = result.workload / result.runs
    truth = 3 * per_request / 0.064
    # The estimator's accuracy, not a speed: the band is for scheduling noise on a busy host.
    assert result.max_perf == pytest.approx(truth, rel=0.2)
    assert model.max_in_flight > 3  # it did look beyond the model's parallelism
    # One request alone takes its 64 ms: the fastest measured is that speed (the watchdog's
    # prediction for a request alone), a third of the model's total.
    assert result.request_speed == pytest.approx(per_request / 0.064, rel=0.2)
    assert result.spread >= 1.0


@pytest.mark.parametrize(
    "settings",
    [
        BenchmarkSettings(runs=4, concurrency=2),
        BenchmarkSettings(runs=4, concurrency=1, max_concurrency=4, ramp_seconds=1.0),
    ],
    ids=["fixed-count", "adaptive"],
)
async def test_a_model_that_stops_early_is_measured_by_the_work_it_did(
    nursery: trio.Nursery, settings: BenchmarkSettings
) -> None:
    """Asked for 64 tokens, the model generates 16 (a quarter of the time) and says so: the
    capacity is what it did per second, not the estimate's four times (plus the prompt's
    estimate, which this model does not count) as much."""
    model = Model(rate=1000.0, eos_after=16)
    with trio.fail_after(GUARD):
        result = await _measure(nursery, model, settings)
    assert result.workload == 16 * result.runs  # the answers' counts, not the estimates
    # Each request: 16 tokens in 16 ms, at most 1000 tokens/s, whatever it was asked for;
    # the model serves any number at once, and the benchmark ran at most 2 (fixed count) or
    # 4 (adaptive) at a time. The estimates (~118 prompt tokens + 64) would read 11 x that.
    assert result.request_speed <= 1000.0 * 1.2
    most_at_once = settings.max_concurrency or settings.concurrency
    assert 0 < result.max_perf <= most_at_once * 1000.0 * 1.2


async def test_answers_reporting_no_work_fail_the_benchmark(nursery: trio.Nursery) -> None:
    """Nothing to measure a speed by: each such answer is a failed benchmark request."""
    model = Model(eos_after=0)
    settings = BenchmarkSettings(runs=2, concurrency=1, max_failures=1)
    with trio.fail_after(GUARD), pytest.raises(BenchmarkError, match="reports no work done"):
        await _measure(nursery, model, settings)
    assert model.requests == 2


class _ErrorEvents(UsageObserver):
    """hello_world's observer, which also reports an error event (as TGI's and OpenAI's do)."""

    def __init__(self) -> None:
        super().__init__(b'"prompt_tokens"', ("prompt_tokens", "generated_tokens"))
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        super().feed(chunk)
        if b'{"error":' in chunk:
            self.error = "an error event"


async def test_answers_reporting_an_error_inside_fail_the_benchmark(
    nursery: trio.Nursery,
) -> None:
    """A 200 whose body says it failed did no work to measure a speed by."""
    model = Model(eos_after=8, error_inside=True)
    endpoint = attrs.evolve(BACKEND.endpoint(BACKEND.benchmark_route), observe=_ErrorEvents)
    backend = attrs.evolve(BACKEND, endpoints=(endpoint,))
    settings = BenchmarkSettings(runs=2, concurrency=1, max_failures=1)
    with trio.fail_after(GUARD), pytest.raises(BenchmarkError, match="reported an error event"):
        await _measure(nursery, model, settings, backend)


def test_spread_is_the_slowest_time_per_unit_over_the_median() -> None:
    samples = [
        _Sample(0, 0.0, 1.0, 10.0),  # 0.1 s per unit
        _Sample(1, 0.0, 2.0, 20.0),  # 0.1
        _Sample(2, 0.0, 1.5, 10.0),  # 0.15
        _Sample(3, 0.0, 4.0, 10.0),  # 0.4: the slowest, 3.2 x the median 0.125
    ]
    assert _spread(samples) == pytest.approx(3.2)
    assert _spread(samples[:2]) == 1.0
    assert _spread([_Sample(0, 0.0, 1.0, 0.0)]) == 1.0  # no workload: nothing to compare


async def test_serial_backend_is_benchmarked_one_at_a_time(nursery: trio.Nursery) -> None:
    serial = attrs.evolve(BACKEND, allow_parallel_requests=False)
    settings = BenchmarkSettings.for_backend(serial, 3)
    assert settings.concurrency == 1
    model = Model()
    with trio.fail_after(GUARD):
        await _measure(nursery, model, settings, serial)
    assert model.max_in_flight == 1
    assert model.requests == 4


async def test_benchmark_tolerates_a_few_failures(nursery: trio.Nursery) -> None:
    model = Model(fail_first=2)
    with trio.fail_after(GUARD):
        result = await _measure(nursery, model, BenchmarkSettings(runs=2, concurrency=1))
    assert model.requests == 5
    assert result.max_perf > 0


async def test_benchmark_fails_after_too_many_failures(nursery: trio.Nursery) -> None:
    model = Model(status=500)
    settings = BenchmarkSettings(runs=2, concurrency=2, max_failures=2)
    with trio.fail_after(GUARD), pytest.raises(BenchmarkError, match="HTTP 500"):
        await _measure(nursery, model, settings)
    assert model.requests == 3


async def test_benchmark_request_timeout_counts_as_a_failure(nursery: trio.Nursery) -> None:
    model = Model(rate=1.0)  # 64 s per request
    settings = BenchmarkSettings(runs=1, concurrency=1, request_timeout=0.05, max_failures=1)
    with trio.fail_after(GUARD), pytest.raises(BenchmarkError):
        await _measure(nursery, model, settings)


async def test_adaptive_benchmark_measures_after_the_start_up_wave(
    nursery: trio.Nursery,
) -> None:
    """The level's first wave arrives all at once at an empty model: with 2 slots and 8 sent,
    its requests finish after 1, 2, 3 and 4 service times, whereas every later request waits
    behind 7 others (4 service times). Little's law over the wave would read 8 x 8 / (2 x
    (1+2+3+4)) = 3.2 requests per service time, 1.6 x the truth of 2 (the slots); over the
    requests sent after the first answer it reads the truth."""
    model = Model(rate=1000.0, slots=trio.Semaphore(2))  # 64 ms per request
    settings = BenchmarkSettings(
        runs=8, concurrency=8, max_concurrency=8, ramp_seconds=0.0, duration=20.0
    )
    with trio.fail_after(GUARD):
        result = await _measure(nursery, model, settings)
    truth = 2 * (result.workload / result.runs) / 0.064
    # Saturated at once (the wave ran at about half speed), so measured at 8 in flight.
    assert model.max_in_flight == 8
    assert result.runs >= settings.runs
    # The estimator's accuracy, not a speed: the band is for scheduling noise on a busy host.
    assert result.max_perf == pytest.approx(truth, rel=0.2)


async def test_a_model_never_saturated_is_a_lower_bound_and_says_so(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    model = Model(rate=1000.0)  # any number of requests at once, each at full speed
    settings = BenchmarkSettings(runs=4, concurrency=1, max_concurrency=4, ramp_seconds=5.0)
    with trio.fail_after(GUARD):
        result = await _measure(nursery, model, settings)
    assert result.max_perf > 0
    assert "with 4 at a time, the most tried" in caplog.text
    assert "lower bound" in caplog.text
    assert "benchmark_concurrency" in caplog.text


# -- end to end, against the demo ----------------------------------------------------------------


async def test_a_demo_model_that_stops_early_is_benchmarked_at_its_true_capacity(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The demo server stops every answer after 8 of the 64 tokens the benchmark asks for, and
    its answers say so; its capacity model serves 4000 units (prompt and generated tokens) a
    second. Measured by the estimate (~118 + 64 units a request), the capacity would read
    about 1.4 times that; measured by the answers' counts, it reads the truth at most."""
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery,
            tmp_path,
            HELLO,
            "--load-delay",
            "0.05",
            "--token-rate",
            "1000",
            "--capacity",
            "4000",
            "--eos-after",
            "8",
            wait_ready=True,
            benchmark_runs=8,
        )
        stats = await stack.stats()
    assert stats["tokens_generated"] == 8 * 9  # the warm-up and eight runs, each stopped early
    # Never above the truth (the estimates would read 1.4 times it); below it only as far as
    # a busy machine slows the fake down.
    assert 1000 < stack.worker.lifecycle.max_perf <= 4000 * 1.15
