"""Scenario 1: small JSON requests to an instant upstream — latency, throughput, CPU.

Three servers are loaded the same way, one after the other, each alone on the worker's core:

* bare Hypercorn answering a constant (the reference for throughput and server overhead);
* the upstream fake directly (the reference for latency: what the worker adds);
* the worker in front of that upstream, with signed requests.

Each at concurrency 1 and 32 (closed loop, keep-alive connections). ``wrk`` (when installed)
loads the bare server once more, to show the Python load generator is not the limit.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

from bench.procs import DRIVER_CPU, Procs, pinned, wait_status
from bench.report import Row, Section, check
from bench.stack import (
    run_load,
    signed_body,
    start_baseline,
    start_upstream,
    start_worker,
)

PAYLOAD = {"prompt": "hi", "max_response_tokens": 16}
CONCURRENCY = (1, 32)


def _spec(port: int, connections: int, duration: float, **extra: Any) -> dict[str, Any]:
    return {
        "mode": "closed",
        "port": port,
        "path": "/generate",
        "connections": connections,
        "warmup": 1.0,
        "duration": duration,
        **extra,
    }


def _wrk(port: int, body: str, duration: float, procs: Procs) -> float | None:
    """Requests per second wrk gets from the server at 32 connections (None without wrk)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = procs.directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{body}]]\n"
    )
    argv = [wrk, "-t1", "-c32", f"-d{duration:g}s", "-s", str(script), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(
        pinned(argv, DRIVER_CPU), capture_output=True, text=True, timeout=duration + 30
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


def _lat(result: dict[str, Any], key: str) -> float | None:
    value = result["latency_ms"].get(key)
    return None if value is None else float(value)


def _cpu_ms(result: dict[str, Any], name: str) -> float | None:
    cpu = result["cpu_s"].get(name)
    return None if cpu is None or not result["completed"] else cpu / result["completed"] * 1e3


def run(procs: Procs, quick: bool) -> Section:
    """Run scenario 1 and return its rows.

    The three servers stay up together (each idle while another is loaded) and are loaded in
    turn, round after round; each figure comes from a server's best round (highest
    throughput), so a slow spell of this shared machine does not land on one side only.
    """
    duration = 2.0 if quick else 5.0
    rounds = 1 if quick else 2
    baseline = start_baseline(procs)
    upstream = start_upstream(procs)
    worker = start_worker(procs, upstream)
    wait_status(worker.port, "ready", 60)
    bare_body = json.dumps({"payload": PAYLOAD})
    specs = {
        "bare": _spec(baseline.port, 0, duration, pids={"server": baseline.pid}, body=bare_body),
        "direct": _spec(
            upstream.port, 0, duration, pids={"upstream": upstream.pid}, body=json.dumps(PAYLOAD)
        ),
        "worker": _spec(
            worker.port, 0, duration, pids={"worker": worker.pid, "upstream": upstream.pid}
        ),
    }
    results: dict[str, dict[str, Any]] = {}
    for index in range(rounds):
        for c in CONCURRENCY:
            for name, spec in specs.items():
                spec = {**spec, "connections": c}
                if name == "worker":
                    spec["signed"] = signed_body(worker.url, PAYLOAD)
                result = run_load(procs, f"load-{name}-c{c}-{index}", spec)
                best = results.get(f"{name}{c}")
                if best is None or result["throughput"] > best["throughput"]:
                    results[f"{name}{c}"] = result
    wrk_rps = _wrk(baseline.port, bare_body, duration, procs)
    signed = signed_body(worker.url, PAYLOAD)
    return _section(results, wrk_rps, len(signed["prefix"] + "1" + signed["suffix"]), rounds)


def _section(
    r: dict[str, dict[str, Any]], wrk_rps: float | None, body_bytes: int, rounds: int
) -> Section:
    w1, w32, d1, d32, b1, b32 = (
        r["worker1"],
        r["worker32"],
        r["direct1"],
        r["direct32"],
        r["bare1"],
        r["bare32"],
    )
    added_p50 = _diff(_lat(w1, "p50"), _lat(d1, "p50"))
    added_p99 = _diff(_lat(w1, "p99"), _lat(d1, "p99"))
    share = None
    if b32["throughput"]:
        share = w32["throughput"] / b32["throughput"]
    rows = [
        Row(
            metric="throughput, c=32",
            value=w32["throughput"],
            unit="req/s",
            baseline=b32["throughput"],
            baseline_label="bare hypercorn",
            target=">= 0.65x",
            met=check(share, at_least=0.65),
        ),
        Row(
            metric="throughput, c=1",
            value=w1["throughput"],
            unit="req/s",
            baseline=b1["throughput"],
            baseline_label="bare hypercorn",
        ),
        Row(
            metric="throughput, c=32 (vs upstream direct)",
            value=w32["throughput"],
            unit="req/s",
            baseline=d32["throughput"],
            baseline_label="direct",
        ),
        Row(
            metric="p50 latency, c=1",
            value=_lat(w1, "p50"),
            unit="ms",
            baseline=_lat(d1, "p50"),
            baseline_label="direct",
        ),
        Row(
            metric="p99 latency, c=1",
            value=_lat(w1, "p99"),
            unit="ms",
            baseline=_lat(d1, "p99"),
            baseline_label="direct",
        ),
        Row(
            metric="added p50 latency, c=1",
            value=added_p50,
            unit="ms",
            target="<= 0.5",
            met=check(added_p50, at_most=0.5),
        ),
        Row(
            metric="added p99 latency, c=1",
            value=added_p99,
            unit="ms",
            target="<= 2",
            met=check(added_p99, at_most=2.0),
        ),
        Row(
            metric="p50 latency, c=1 (vs bare)",
            value=_lat(w1, "p50"),
            unit="ms",
            baseline=_lat(b1, "p50"),
            baseline_label="bare hypercorn",
        ),
        Row(
            metric="p50 latency, c=32",
            value=_lat(w32, "p50"),
            unit="ms",
            baseline=_lat(d32, "p50"),
            baseline_label="direct",
        ),
        Row(
            metric="p99 latency, c=32",
            value=_lat(w32, "p99"),
            unit="ms",
            baseline=_lat(d32, "p99"),
            baseline_label="direct",
        ),
        Row(
            metric="worker CPU per request, c=32",
            value=_cpu_ms(w32, "worker"),
            unit="ms",
            baseline=_cpu_ms(b32, "server"),
            baseline_label="bare hypercorn",
        ),
        Row(
            metric="worker CPU per request, c=1",
            value=_cpu_ms(w1, "worker"),
            unit="ms",
            baseline=_cpu_ms(b1, "server"),
            baseline_label="bare hypercorn",
        ),
        Row(
            metric="upstream fake CPU per request (direct, c=32)",
            value=_cpu_ms(d32, "upstream"),
            unit="ms",
        ),
    ]
    notes = [
        f"Requests: signed envelopes of {body_bytes} bytes (2025 signature, increasing reqnum), "
        "payload {prompt: hi, max_response_tokens: 16}; the upstream answers a 67-byte JSON. "
        f"Each figure: the best of {rounds} interleaved round(s) of {r['worker1']['window_s']:g} "
        "s per server and concurrency.",
        _generator_note(r, wrk_rps),
        _status_note(r),
    ]
    return Section(
        key="latency",
        title="1. Small JSON, instant upstream",
        rows=tuple(rows),
        notes=tuple(n for n in notes if n),
    )


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _generator_note(r: dict[str, dict[str, Any]], wrk_rps: float | None) -> str:
    busiest = max(
        (res["cpu_s"].get("loadgen", 0.0) / res["window_s"], name) for name, res in r.items()
    )
    text = (
        f"Load generator: at most {busiest[0]:.0%} of its core ({busiest[1]}), so it was not "
        "the bottleneck"
        if busiest[0] < 0.8
        else f"Load generator used {busiest[0]:.0%} of its core ({busiest[1]}): may be a limit"
    )
    if wrk_rps is not None:
        ours = r["bare32"]["throughput"]
        text += f"; wrk on the bare server, c=32: {wrk_rps:,.0f} req/s (ours {ours:,.0f})"
    return text + "."


def _status_note(r: dict[str, dict[str, Any]]) -> str:
    bad = {
        name: {k: v for k, v in res["statuses"].items() if k != "200"} | res["errors"]
        for name, res in r.items()
    }
    bad = {name: v for name, v in bad.items() if v}
    return f"Non-200 answers or errors: {bad}" if bad else "Every answer was 200."
