"""The fake-server kit in-process, modelling the work (virtual time: exact): the capacity model,
the knobs that set it, and the faults (a failed request, a hang, a crash). The HTTP server, the
log and a fake's start-up are in ``test_fakekit.py``."""

from __future__ import annotations

import math
from functools import partial
from typing import TypedDict

import pytest
import trio
import trio.testing

from backends._fakekit import CapacityModel, Faults, Knobs, knob_parser

# --- capacity model (virtual time: exact) --------------------------------------------------


async def _run_job(model: CapacityModel, units: float, done: dict[str, float], name: str) -> None:
    async with model.job(units) as job:
        await job.serve(units)
    done[name] = trio.current_time()


async def _jobs(model: CapacityModel, *sizes: float) -> dict[str, float]:
    """Start jobs together (in order); return each one's finishing time."""
    done: dict[str, float] = {}
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index, size in enumerate(sizes):
            nursery.start_soon(_run_job, model, size, done, str(index))
            # trio runs new tasks in random order; arrivals must be in this order (FIFO).
            await trio.testing.wait_all_tasks_blocked()
    return {name: round(at - start, 6) for name, at in sorted(done.items())}


async def test_one_job_is_served_at_token_rate(autojump_clock: trio.testing.MockClock) -> None:
    assert await _jobs(CapacityModel(token_rate=100), 250) == {"0": 2.5}


async def test_capacity_is_shared_equally(autojump_clock: trio.testing.MockClock) -> None:
    # Both at 50/s until the small one ends at 1.0; the big one then runs alone at 100/s.
    model = CapacityModel(token_rate=1000, capacity=100)
    assert await _jobs(model, 50, 150) == {"0": 1.0, "1": 2.0}


async def test_token_rate_caps_each_job(autojump_clock: trio.testing.MockClock) -> None:
    model = CapacityModel(token_rate=10, capacity=100)
    assert await _jobs(model, 10, 10, 10) == {"0": 1.0, "1": 1.0, "2": 1.0}


async def test_max_parallel_queues_fifo(autojump_clock: trio.testing.MockClock) -> None:
    model = CapacityModel(token_rate=100, max_parallel=2)
    assert await _jobs(model, 50, 100, 50, 10) == {"0": 0.5, "1": 1.0, "2": 1.0, "3": 1.1}


async def test_throughput_follows_the_truth(autojump_clock: trio.testing.MockClock) -> None:
    for model in (
        CapacityModel(token_rate=100, capacity=300, max_parallel=8),
        CapacityModel(token_rate=100, capacity=3000, max_parallel=4),
    ):
        finished = await _jobs(model, *[37] * 40)
        throughput = 37 * 40 / max(finished.values())
        assert throughput == pytest.approx(model.throughput_limit)


async def test_leaving_early_frees_capacity(autojump_clock: trio.testing.MockClock) -> None:
    model = CapacityModel(token_rate=1000, capacity=100, max_parallel=2)
    done: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_job, model, 100, done, "a")
        with trio.move_on_after(0.5):
            await _run_job(model, 100, done, "b")
        # b left: a has 25 units and shares with c at 50/s each until c's 50 are done at
        # 1.5 s; a has 75 by then and does its last 25 alone at 100/s.
        nursery.start_soon(_run_job, model, 50, done, "c")
    assert done == {"a": pytest.approx(1.75), "c": pytest.approx(1.5)}
    assert model.active == 0


async def test_cancelled_while_queued_gives_up_the_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    model = CapacityModel(token_rate=100, max_parallel=1)
    done: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_job, model, 100, done, "a")
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.5):
            await _run_job(model, 100, done, "b")
        assert model.queued == 0
        nursery.start_soon(_run_job, model, 100, done, "c")
    assert done == {"a": pytest.approx(1.0), "c": pytest.approx(2.0)}


async def test_serve_some_emits_each_unit_on_time(autojump_clock: trio.testing.MockClock) -> None:
    model = CapacityModel(token_rate=20)
    times = []
    async with model.job(5) as job:
        while count := await job.serve_some(5):
            times.extend([trio.current_time()] * count)
    assert times == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25])


async def test_serve_some_batches_at_high_rates(autojump_clock: trio.testing.MockClock) -> None:
    model = CapacityModel(token_rate=10_000, quantum=0.005)
    counts = []
    async with model.job(1000) as job:
        while count := await job.serve_some(1000):
            counts.append(count)
            # Each unit is late by less than one quantum.
            assert trio.current_time() - job.consumed / 10_000 < 0.005 + 1e-9
    assert sum(counts) == 1000
    assert len(counts) == pytest.approx(20, abs=2)


def test_throughput_limit() -> None:
    assert CapacityModel(token_rate=10).throughput_limit == math.inf
    assert CapacityModel(token_rate=10, max_parallel=3).throughput_limit == 30
    assert CapacityModel(token_rate=10, max_parallel=3, capacity=25).throughput_limit == 25
    assert CapacityModel(token_rate=10, capacity=25).throughput_limit == 25


# --- knobs -----------------------------------------------------------------------------------


def test_knobs_parse() -> None:
    parser = knob_parser("test", port=1234)
    assert Knobs.parse(parser, []) == Knobs(port=1234)
    knobs = Knobs.parse(
        parser, ["--capacity", "500", "--max-parallel", "4", "--hang-after", "0", "--seed", "3"]
    )
    assert (knobs.capacity, knobs.max_parallel, knobs.hang_after, knobs.seed) == (500, 4, 0, 3)
    model = knobs.capacity_model()
    assert model.throughput_limit == 400


@pytest.mark.parametrize(
    "argv", [["--token-rate", "0"], ["--error-rate", "1.5"], ["--max-parallel", "0"]]
)
def test_knobs_reject_nonsense(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Knobs.parse(knob_parser("test", port=1), argv)
    assert "must be" in capsys.readouterr().err


def test_knobs_without_the_capacity_model() -> None:
    parser = knob_parser("test", port=1, capacity=False, unit="steps")
    assert "--token-rate" not in parser.format_help()
    assert "after N steps" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-parallel", "2"])
    namespace = parser.parse_args(["--hang-after", "3", "--error-rate", "0.5", "--seed", "7"])
    faults = Knobs.from_namespace(namespace).faults()
    assert (faults.hang_after, faults.error_rate, faults.seed) == (3, 0.5, 7)


# --- faults --------------------------------------------------------------------------------


def test_fail_request_draws_the_same_requests_for_a_seed() -> None:
    draws = [Faults(error_rate=0.3, seed=5).fail_request() for _ in range(2)]
    assert draws[0] == draws[1]
    faults = Faults(error_rate=0.3, seed=5)
    failed = [faults.fail_request() for _ in range(2000)]
    again = Faults(error_rate=0.3, seed=5)
    assert failed == [again.fail_request() for _ in range(2000)]
    assert sum(failed) / len(failed) == pytest.approx(0.3, abs=0.05)
    assert not any(Faults().fail_request() for _ in range(100))
    assert all(Faults(error_rate=1).fail_request() for _ in range(100))


class _FaultFields(TypedDict, total=False):
    """Some of the fields of :class:`Faults`, with their types."""

    error_rate: float
    hang_after: int
    slow_health: float


@pytest.mark.parametrize("fields", [{"error_rate": 1.5}, {"hang_after": -1}, {"slow_health": -0.1}])
def test_faults_reject_nonsense(fields: _FaultFields) -> None:
    with pytest.raises(ValueError, match="must be"):
        Faults(**fields)


def test_batches_stop_at_failure_points() -> None:
    faults = Faults(hang_after=5, crash_after=8)
    assert faults.until_fault(0, 100) == 5
    assert faults.until_fault(5, 100) == 3
    assert faults.until_fault(8, 100) == 92
    assert faults.until_fault(0, 3) == 3
    assert Faults().until_fault(10, 12) == 2


async def test_a_hang_lasts_until_its_end(autojump_clock: trio.testing.MockClock) -> None:
    faults = Faults(hang_after=2)
    logged: list[str] = []

    def never(done: int) -> None:
        raise AssertionError("no crash was asked for")

    ended = trio.Event()
    await faults.fail_point(1, on_crash=never, on_hang=lambda done: logged.append("hang"))
    assert logged == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                faults.fail_point,
                2,
                on_crash=never,
                on_hang=lambda done: logged.append(f"hang at {done}"),
                hang_until=ended.wait,
            )
        )
        await trio.testing.wait_all_tasks_blocked()
        assert logged == ["hang at 2"]
        ended.set()
    # By default a hang lasts until cancelled.
    with trio.move_on_after(100) as scope:
        await faults.fail_point(2, on_crash=never, on_hang=lambda done: None)
    assert scope.cancelled_caught


async def test_produce_serves_a_job_up_to_the_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = Faults(hang_after=3)
    hung: list[int] = []
    counts: list[int] = []
    async with CapacityModel(token_rate=100).job(10) as job:
        with trio.move_on_after(100):
            done = 0
            while count := await faults.produce(
                job, done, 10, on_crash=lambda done: None, on_hang=hung.append
            ):
                counts.append(count)
                done += count
    assert sum(counts) == 3
    assert hung == [3]
    finished: list[int] = []
    async with CapacityModel(token_rate=100).job(4) as job:
        done = 0
        while count := await Faults().produce(
            job, done, 4, on_crash=lambda done: None, on_hang=lambda done: None
        ):
            finished.append(count)
            done += count
    assert sum(finished) == 4
