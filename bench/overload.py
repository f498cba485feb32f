"""Scenario 5: twice the model's capacity offered, with and without admission control.

The hello_world fake serves 2,000 units/s (``--token-rate 1000 --capacity 2000``); requests of
21 units arrive open-loop at twice the rate it can serve, on a fixed schedule whatever the
answers do. With ``--max-queue-time 2`` the worker should refuse the excess at once (429 with
``Retry-After``) and keep the latency of what it admits near 2 s; with ``--max-queue-time 0``
(no admission control, the baseline) every request is admitted and latency grows for as long
as the overload lasts. Requests still unanswered when the run ends count at their age so far
(a lower bound on their latency).
"""

from __future__ import annotations

import json
from typing import Any

from bench.procs import Procs, wait_status
from bench.report import Row, Section, check
from bench.stack import run_load, signed_body, start_fake, start_worker

CAPACITY = 2000.0
PAYLOAD = {"prompt": "hi", "max_response_tokens": 20}
WORKLOAD = 21  # estimate_tokens("hi") + 20
MAX_QUEUE_TIME = 2.0
OVERLOAD = 2.0
DRAIN = 5.0


def _run_one(procs: Procs, name: str, max_queue_time: float, duration: float) -> dict[str, Any]:
    fake = start_fake(
        procs,
        f"hello-{name}",
        "backends.hello_world.server",
        "--load-delay",
        "0.5",
        "--token-rate",
        "1000",
        "--capacity",
        f"{CAPACITY:g}",
    )
    worker = start_worker(
        procs, fake, "--max-queue-time", f"{max_queue_time:g}", name=f"worker-{name}"
    )
    status = wait_status(worker.port, "ready", 90)
    spec = {
        "mode": "open",
        "port": worker.port,
        "path": "/generate",
        "rate": OVERLOAD * CAPACITY / WORKLOAD,
        "warmup": 0.0,
        "duration": duration,
        "drain": DRAIN,
        "signed": signed_body(worker.url, PAYLOAD),
        "pids": {"worker": worker.pid, "model": fake.pid},
    }
    result = run_load(procs, f"load-{name}", spec)
    result["max_perf"] = status["max_perf"]
    procs.stop(worker.proc)
    procs.stop(fake.proc)
    return result


def run(procs: Procs, quick: bool) -> Section:
    """Run scenario 5: admission control on, then off."""
    duration = 6.0 if quick else 15.0
    admitted = _run_one(procs, "admission", MAX_QUEUE_TIME, duration)
    baseline = _run_one(procs, "no-admission", 0.0, duration)
    return _section(admitted, baseline, duration)


def _share(result: dict[str, Any], status: str) -> float:
    """Percentage of arrivals answered ``status`` ("unfinished": not answered in time)."""
    arrivals: int = sum(result["statuses"].values()) + result["unfinished"]
    count: int = (
        result["unfinished"] if status == "unfinished" else result["statuses"].get(status, 0)
    )
    return 100 * count / max(arrivals, 1)


def _lat(result: dict[str, Any], pct: str) -> float | None:
    value = result["latency_with_unfinished_ms"].get(pct)
    return None if value is None else value / 1e3


def _section(admitted: dict[str, Any], baseline: dict[str, Any], duration: float) -> Section:
    refusals = admitted["statuses"].get("429", 0)
    with_retry = 100 * admitted["retry_after"] / refusals if refusals else None
    p99 = _lat(admitted, "p99")
    bound = 1.25 * MAX_QUEUE_TIME
    rows = [
        Row(
            metric="answered 429",
            value=_share(admitted, "429"),
            unit="% of arrivals",
            baseline=_share(baseline, "429"),
            baseline_label="no admission",
            target="about 50",
        ),
        Row(
            metric="429s carrying Retry-After",
            value=with_retry,
            unit="%",
            target="100",
            met=check(with_retry, at_least=100.0),
        ),
        Row(
            metric="admitted latency p50",
            value=_lat(admitted, "p50"),
            unit="s",
            baseline=_lat(baseline, "p50"),
            baseline_label="no admission",
        ),
        Row(
            metric="admitted latency p99",
            value=p99,
            unit="s",
            baseline=_lat(baseline, "p99"),
            baseline_label="no admission",
            target=f"<= {bound:g}",
            met=check(p99, at_most=bound),
        ),
        Row(
            metric="admitted latency max",
            value=_lat(admitted, "max"),
            unit="s",
            baseline=_lat(baseline, "max"),
            baseline_label="no admission",
        ),
        Row(
            metric="429 answer latency p99",
            value=(admitted["latency_429_ms"].get("p99") or 0.0) or None,
            unit="ms",
        ),
        Row(
            metric="answered 200",
            value=_share(admitted, "200"),
            unit="% of arrivals",
            baseline=_share(baseline, "200"),
            baseline_label="no admission",
        ),
        Row(
            metric="unanswered when the run ended",
            value=_share(admitted, "unfinished"),
            unit="% of arrivals",
            baseline=_share(baseline, "unfinished"),
            baseline_label="no admission",
        ),
    ]
    rate = OVERLOAD * CAPACITY / WORKLOAD
    notes = (
        f"hello_world fake at {CAPACITY:g} units/s; requests {json.dumps(PAYLOAD)} "
        f"({WORKLOAD} units) arriving at {rate:.0f}/s ({OVERLOAD:g}x capacity) for "
        f"{duration:g} s, then {DRAIN:g} s to finish; worker --max-queue-time "
        f"{MAX_QUEUE_TIME:g} vs 0. Benchmarked max_perf: {admitted['max_perf']:.0f} and "
        f"{baseline['max_perf']:.0f} units/s.",
        "Latency counts from each request's scheduled arrival (no coordinated omission); "
        "requests unanswered at the end count at their age then (a lower bound).",
        f"Errors: {admitted['errors'] or 'none'} / {baseline['errors'] or 'none'}.",
    )
    return Section(
        key="overload",
        title="5. Overload at 2x capacity",
        rows=tuple(rows),
        notes=notes,
    )
