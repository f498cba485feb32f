"""Scenario 4: does the worker's benchmark find the model's true capacity, and how fast?

The hello_world fake implements a known capacity model: sustained throughput is
``min(capacity, max_parallel * token_rate)`` workload units per second. For each case a fresh
fake and worker start (no benchmark cache); the worker's measured ``max_perf`` comes from its
``GET /status`` once ready, and the benchmark's duration runs from the fake's ready line (its
log timestamp) to the moment ``/status`` first says ready (polled every 20 ms; it includes the
worker's log-tail latency, up to 0.25 s).
"""

from __future__ import annotations

import calendar
import json
import math
import time
from typing import Any

import attrs

from bench.procs import Procs, http_get, wait_for
from bench.report import Row, Section, check
from bench.stack import start_fake, start_worker

_READY_LINE = "infer server has started"
_TIMEOUT = 90.0


@attrs.frozen
class Case:
    """One capacity configuration of the hello_world fake."""

    label: str
    token_rate: float = 100.0
    capacity: float | None = None
    max_parallel: int | None = None

    @property
    def truth(self) -> float:
        """The fake's sustained throughput with enough requests offered."""
        parallel = math.inf if self.max_parallel is None else self.max_parallel * self.token_rate
        return min(parallel, math.inf if self.capacity is None else self.capacity)

    def knobs(self) -> list[str]:
        """The fake's command-line knobs."""
        args = ["--load-delay", "1", "--token-rate", f"{self.token_rate:g}"]
        if self.capacity is not None:
            args += ["--capacity", f"{self.capacity:g}"]
        if self.max_parallel is not None:
            args += ["--max-parallel", str(self.max_parallel)]
        return args


CASES = (
    Case("capacity 2000, unbounded parallel", capacity=2000),
    Case("capacity 2000, max-parallel 3", capacity=2000, max_parallel=3),
    Case("serial model (max-parallel 1)", max_parallel=1),
)


def _log_time(line: str) -> float:
    """Unix time of a fake's log line (``2026-11-25T16:00:00.123Z INFO ...``)."""
    stamp = line.split(" ", 1)[0].rstrip("Z")
    seconds, _, millis = stamp.partition(".")
    return calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1e3


def measure(procs: Procs, case: Case, index: int) -> dict[str, Any]:
    """Start a fake and a worker for ``case``; the measured capacity and the time it took."""
    fake = start_fake(procs, f"hello{index}", "backends.hello_world.server", *case.knobs())
    worker = start_worker(procs, fake, name=f"worker{index}")

    def ready_line() -> str | None:
        text = fake.log_path.read_text(errors="replace")
        return next((line for line in text.splitlines() if _READY_LINE in line), None)

    loaded_at = _log_time(wait_for(ready_line, "the model's ready line", _TIMEOUT))

    def ready_status() -> dict[str, Any] | None:
        worker.proc.check_alive()
        code, body = http_get(worker.port, "/status", timeout=1.0)
        status: dict[str, Any] = json.loads(body) if code == 200 else {}
        if status.get("state") == "errored":
            raise RuntimeError(f"worker errored: {status}")
        return status if status.get("state") == "ready" else None

    status = wait_for(ready_status, "the worker to be ready", _TIMEOUT, interval=0.02)
    ready_at = time.time()
    procs.stop(worker.proc)
    procs.stop(fake.proc)
    return {"max_perf": status["max_perf"], "seconds": ready_at - loaded_at}


def run(procs: Procs, quick: bool) -> Section:
    """Run scenario 4 for every case."""
    rows = []
    for index, case in enumerate(CASES):
        result = measure(procs, case, index)
        share = result["max_perf"] / case.truth
        rows.append(
            Row(
                metric=f"max_perf: {case.label}",
                value=result["max_perf"],
                unit="units/s",
                baseline=case.truth,
                baseline_label="truth",
                target="0.9-1.1x",
                met=check(share, at_least=0.9, at_most=1.1),
            )
        )
        rows.append(
            Row(
                metric=f"model ready -> worker ready: {case.label}",
                value=result["seconds"],
                unit="s",
                target="<= 30",
                met=check(result["seconds"], at_most=30.0),
            )
        )
    notes = (
        "hello_world fake, token rate 100 units/s per request; benchmark payload ~188 units "
        "(a 100-word prompt + 64 tokens); truth = min(capacity, max_parallel x token_rate).",
    )
    return Section(
        key="capacity", title="4. Capacity benchmark accuracy", rows=tuple(rows), notes=notes
    )
