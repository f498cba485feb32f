"""Run the worker with its event loop watched from inside: slow task steps and GC pauses.

``python -m bench.lagprobe REPORT.json -- [python -m pyworker arguments]``, with ``BENCH_GC``
optionally set to try a garbage-collector setting (see :func:`_tune_gc`).

For diagnosis only (the scenarios measure the unmodified ``python -m pyworker``): it runs the
same CLI, with ``trio.run`` given an instrument that times every task step, and ``gc.callbacks``
timing every garbage collection. On exit it writes the steps over 1 ms (by task), the
collections by generation and the distribution of step times to ``REPORT.json``.
"""

from __future__ import annotations

import collections
import functools
import gc
import json
import os
import runpy
import sys
import time
from typing import Any

import trio

from bench.stats import summary_ms

_SLOW_NS = 1_000_000


class StepTimer(trio.abc.Instrument):
    """Times each task step; keeps the slow ones, by task name."""

    def __init__(self) -> None:
        self.started = 0
        self.slow: collections.Counter[str] = collections.Counter()
        self.slow_ns: list[int] = []
        self.worst: list[tuple[int, str]] = []
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.started = time.perf_counter_ns()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter_ns() - self.started
        self.steps += 1
        if took > _SLOW_NS:
            self.slow[task.name] += 1
            self.slow_ns.append(took)
            self.worst.append((took, task.name))
            self.worst = sorted(self.worst, reverse=True)[:10]


class GCTimer:
    """Times each garbage collection, by generation."""

    def __init__(self) -> None:
        self.started = 0
        self.pauses: dict[int, list[int]] = collections.defaultdict(list)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter_ns()
        else:
            self.pauses[info["generation"]].append(time.perf_counter_ns() - self.started)


def _tune_gc(how: str) -> None:
    """Try a GC setting the worker could adopt (``BENCH_GC``, e.g. ``freeze,50000``).

    ``freeze``: move everything alive after the imports to the permanent generation, so full
    collections stop re-scanning it; a number: the generation-0 threshold (default 700).
    """
    for part in filter(None, how.split(",")):
        if part == "freeze":
            from pyworker import Worker  # noqa: F401  (loads what the worker imports, frozen too)

            gc.collect()
            gc.freeze()
        else:
            gc.set_threshold(int(part), *gc.get_threshold()[1:])


def main() -> int:
    """Run the worker CLI under the probes; write the report on exit."""
    report, _, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    steps, collections_ = StepTimer(), GCTimer()
    gc.callbacks.append(collections_)
    original = trio.run
    trio.run = functools.partial(original, instruments=[steps])  # type: ignore[assignment]
    _tune_gc(os.environ.get("BENCH_GC", ""))
    sys.argv = ["pyworker", *args]
    try:
        runpy.run_module("pyworker", run_name="__main__", alter_sys=True)
    finally:
        trio.run = original
        summary = {
            "task_steps": steps.steps,
            "slow_steps_by_task": dict(steps.slow.most_common(15)),
            "slow_step_ms": summary_ms(steps.slow_ns),
            "worst_steps_ms": [(ns / 1e6, name) for ns, name in steps.worst],
            "gc_pause_ms": {str(g): summary_ms(p) for g, p in collections_.pauses.items()},
        }
        with open(report, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
