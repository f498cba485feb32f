"""Scenarios 2 and 3: streamed answers relayed event by event.

Scenario 2 (``streams``): 200 concurrent streams whose upstream sends one event every 10 ms,
each stream 100 events long and followed at once by the next on the same connection. Loaded
directly on the upstream (the reference) and through the worker: time to the first event,
events per second, the gaps between events of a stream (coalescing would show as gaps near 0,
added jitter as a wider spread) and the worker's CPU per relayed event.

Scenario 3 (``slow-streams``): 1,000 streams of one event per second held open for a minute.
The worker's resident memory before and at the peak gives the memory per stream; its event-loop
lag is observed from outside, as the latency of a ``GET /ping`` sent every 100 ms on its own
connection, compared with the same probe on the idle worker: a blocked or overloaded loop
answers late.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from bench.procs import Procs, rss_kib, wait_status
from bench.report import Row, Section, check
from bench.stack import run_load, signed_body, start_upstream, start_worker

STREAMS = 200
LIGHT_STREAMS = 50
EVENTS_PER_STREAM = 100
EVENT_INTERVAL = 0.01
SLOW_STREAMS = 1000
SLOW_INTERVAL = 1.0
PROBE_INTERVAL = 0.1


def _stream_spec(port: int, duration: float, streams: int, **extra: Any) -> dict[str, Any]:
    return {
        "mode": "stream",
        "port": port,
        "path": "/generate_stream",
        "connections": streams,
        "ramp": 1.0,
        "warmup": 2.0,
        "duration": duration,
        **extra,
    }


def _ms(result: dict[str, Any], key: str, pct: str) -> float | None:
    value = result[key].get(pct)
    return None if value is None else float(value)


def run_streams(procs: Procs, quick: bool) -> Section:
    """Scenario 2: 200 (then 50) streams at 100 events/s each, direct and through the worker."""
    duration = 4.0 if quick else 10.0
    payload = {"prompt": "hi", "max_response_tokens": EVENTS_PER_STREAM}
    upstream = start_upstream(procs, EVENT_INTERVAL)
    worker = start_worker(procs, upstream)
    wait_status(worker.port, "ready", 60)
    results = {}
    for streams in (STREAMS, LIGHT_STREAMS):
        results[f"direct{streams}"] = run_load(
            procs,
            f"load-direct-streams{streams}",
            _stream_spec(
                upstream.port,
                duration,
                streams,
                body=json.dumps(payload),
                pids={"upstream": upstream.pid},
            ),
        )
        results[f"worker{streams}"] = run_load(
            procs,
            f"load-worker-streams{streams}",
            _stream_spec(
                worker.port,
                duration,
                streams,
                signed=signed_body(worker.url, payload),
                pids={"worker": worker.pid, "upstream": upstream.pid},
            ),
        )
    section = _streams_section(results[f"direct{STREAMS}"], results[f"worker{STREAMS}"])
    light = _light_rows(results[f"direct{LIGHT_STREAMS}"], results[f"worker{LIGHT_STREAMS}"])
    return attrs.evolve(section, rows=(*section.rows, *light))


def _light_rows(direct: dict[str, Any], relayed: dict[str, Any]) -> list[Row]:
    """The main figures again at a quarter of the load, which the worker sustains."""
    tag = f"{LIGHT_STREAMS} streams"
    w99, d99 = _ms(relayed, "ttfb_ms", "p99"), _ms(direct, "ttfb_ms", "p99")
    added = None if w99 is None or d99 is None else w99 - d99
    return [
        Row(
            metric=f"{tag}: added time to first event p99",
            value=added,
            unit="ms",
            target="<= 2",
            met=check(added, at_most=2.0),
        ),
        Row(
            metric=f"{tag}: inter-event gap p99",
            value=_ms(relayed, "gap_ms", "p99"),
            unit="ms",
            baseline=_ms(direct, "gap_ms", "p99"),
            baseline_label="direct",
        ),
        Row(
            metric=f"{tag}: worker CPU per relayed event",
            value=_per_event_us(relayed, "worker"),
            unit="us",
            target="<= 40",
            met=check(_per_event_us(relayed, "worker"), at_most=40.0),
        ),
        Row(
            metric=f"{tag}: worker CPU busy",
            value=relayed["cpu_s"].get("worker", 0.0) / relayed["window_s"] * 100,
            unit="% of core",
        ),
    ]


def _per_event_us(result: dict[str, Any], name: str) -> float | None:
    cpu = result["cpu_s"].get(name)
    return None if cpu is None or not result["events"] else cpu / result["events"] * 1e6


def _streams_section(direct: dict[str, Any], relayed: dict[str, Any]) -> Section:
    added_ttfb = None
    w99, d99 = _ms(relayed, "ttfb_ms", "p99"), _ms(direct, "ttfb_ms", "p99")
    if w99 is not None and d99 is not None:
        added_ttfb = w99 - d99
    cpu_event = _per_event_us(relayed, "worker")
    offered = STREAMS / EVENT_INTERVAL
    rows = [
        Row(
            metric="time to first event p50",
            value=_ms(relayed, "ttfb_ms", "p50"),
            unit="ms",
            baseline=_ms(direct, "ttfb_ms", "p50"),
            baseline_label="direct",
        ),
        Row(
            metric="time to first event p99",
            value=w99,
            unit="ms",
            baseline=d99,
            baseline_label="direct",
        ),
        Row(
            metric="added time to first event p99",
            value=added_ttfb,
            unit="ms",
            target="<= 2",
            met=check(added_ttfb, at_most=2.0),
        ),
        Row(
            metric="events relayed per second",
            value=relayed["events_per_s"],
            unit="events/s",
            baseline=direct["events_per_s"],
            baseline_label="direct",
        ),
        Row(
            metric="worker CPU per relayed event",
            value=cpu_event,
            unit="us",
            target="<= 40",
            met=check(cpu_event, at_most=40.0),
        ),
        Row(
            metric="worker CPU busy",
            value=relayed["cpu_s"].get("worker", 0.0) / relayed["window_s"] * 100,
            unit="% of core",
        ),
        Row(
            metric="inter-event gap p50",
            value=_ms(relayed, "gap_ms", "p50"),
            unit="ms",
            baseline=_ms(direct, "gap_ms", "p50"),
            baseline_label="direct",
        ),
        Row(
            metric="inter-event gap p99",
            value=_ms(relayed, "gap_ms", "p99"),
            unit="ms",
            baseline=_ms(direct, "gap_ms", "p99"),
            baseline_label="direct",
        ),
        Row(
            metric="inter-event gap p99.9",
            value=_ms(relayed, "gap_ms", "p99.9"),
            unit="ms",
            baseline=_ms(direct, "gap_ms", "p99.9"),
            baseline_label="direct",
        ),
        Row(
            metric="gaps under 1 ms (coalesced)",
            value=_share(relayed),
            unit="%",
            baseline=_share(direct),
            baseline_label="direct",
        ),
        Row(
            metric="upstream fake CPU per event (direct)",
            value=_per_event_us(direct, "upstream"),
            unit="us",
        ),
    ]
    notes = (
        f"{STREAMS} streams of {EVENTS_PER_STREAM} events, one every {EVENT_INTERVAL * 1e3:g} ms "
        f"(offered {offered:,.0f} events/s); time to first event = request sent to first "
        f"event received. The last rows repeat the main figures at {LIGHT_STREAMS} streams "
        "(a quarter of the load).",
        _driver_note(direct, relayed),
    )
    return Section(
        key="streams", title="2. Streaming, 200 concurrent streams", rows=tuple(rows), notes=notes
    )


def _share(result: dict[str, Any]) -> float | None:
    count = result["gap_ms"].get("count", 0)
    return None if not count else result["gaps_under_1ms"] / count * 100


def _driver_note(*results: dict[str, Any]) -> str:
    busiest = max(r["cpu_s"].get("loadgen", 0.0) / r["window_s"] for r in results)
    upstream = max(r["cpu_s"].get("upstream", 0.0) / r["window_s"] for r in results)
    errors = [r["errors"] for r in results if r["errors"]]
    text = (
        f"Drivers' core: load generator at most {busiest:.0%}, upstream fake at most "
        f"{upstream:.0%} busy"
    )
    return text + (f"; errors: {errors}." if errors else "; no errors.")


def run_slow_streams(procs: Procs, quick: bool) -> Section:
    """Scenario 3: 1,000 slow streams held open; memory per stream and loop lag."""
    hold = 15.0 if quick else 60.0
    ramp = 3.0 if quick else 5.0
    upstream = start_upstream(procs, SLOW_INTERVAL)
    worker = start_worker(procs, upstream)
    wait_status(worker.port, "ready", 60)
    probe = {"probe_port": worker.port, "probe_path": "/ping", "probe_interval": PROBE_INTERVAL}
    events = int((hold + ramp) / SLOW_INTERVAL) + 30  # longer than the hold: held to the end
    payload = {"prompt": "hi", "max_response_tokens": events}
    # Idle: the probe alone (it also warms the worker up), then the memory at rest.
    idle = run_load(
        procs,
        "load-idle-probe",
        {
            "mode": "closed",
            "port": worker.port,
            "path": "/ping",
            "method": "GET",
            "connections": 0,
            "warmup": 1.0,
            "duration": 5.0,
            **probe,
        },
    )
    rss_idle = rss_kib(worker.pid)
    held = run_load(
        procs,
        "load-slow-streams",
        {
            "mode": "stream",
            "port": worker.port,
            "path": "/generate_stream",
            "connections": SLOW_STREAMS,
            "ramp": ramp,
            "warmup": ramp + 1.0,
            "duration": hold,
            "signed": signed_body(worker.url, payload),
            "pids": {"worker": worker.pid, "upstream": upstream.pid},
            "rss_pid": worker.pid,
            **probe,
        },
    )
    rss_after = rss_kib(worker.pid)
    return _slow_section(idle, held, rss_idle, rss_after, hold)


def _slow_section(
    idle: dict[str, Any], held: dict[str, Any], rss_idle: int, rss_after: int, hold: float
) -> Section:
    per_stream = (held["rss_peak_kib"] - rss_idle) / SLOW_STREAMS * 1.024  # KiB -> kB
    lag99 = _ms(held, "probe_ms", "p99")
    rows = [
        Row(metric="streams held open", value=held["peak_connections"] - 1, unit="streams"),
        Row(
            metric="worker RSS, peak vs idle",
            value=held["rss_peak_kib"] / 1024,
            unit="MiB",
            baseline=rss_idle / 1024,
            baseline_label="idle",
        ),
        Row(
            metric="memory per stream",
            value=per_stream,
            unit="kB",
            target="< 60",
            met=check(per_stream, at_most=60.0),
        ),
        Row(
            metric="worker RSS after the streams closed",
            value=rss_after / 1024,
            unit="MiB",
            baseline=rss_idle / 1024,
            baseline_label="idle",
        ),
        Row(
            metric="/ping latency p50 (loop-lag proxy)",
            value=_ms(held, "probe_ms", "p50"),
            unit="ms",
            baseline=_ms(idle, "probe_ms", "p50"),
            baseline_label="idle worker",
        ),
        Row(
            metric="/ping latency p99 (loop-lag proxy)",
            value=lag99,
            unit="ms",
            baseline=_ms(idle, "probe_ms", "p99"),
            baseline_label="idle worker",
            target="<= 10",
            met=check(lag99, at_most=10.0),
        ),
        Row(
            metric="/ping latency max",
            value=_ms(held, "probe_ms", "max"),
            unit="ms",
            baseline=_ms(idle, "probe_ms", "max"),
            baseline_label="idle worker",
        ),
        Row(metric="events relayed per second", value=held["events_per_s"], unit="events/s"),
        Row(
            metric="worker CPU busy while holding",
            value=held["cpu_s"].get("worker", 0.0) / held["window_s"] * 100,
            unit="% of core",
        ),
    ]
    notes = (
        f"{SLOW_STREAMS} streams, one event per {SLOW_INTERVAL:g} s, held {hold:g} s; RSS from "
        "/proc/PID/status (peak sampled every 100 ms); memory per stream = (peak - idle) / "
        "streams.",
        "Loop lag is measured from outside (pyworker/ is not instrumented): a GET /ping every "
        f"{PROBE_INTERVAL * 1e3:g} ms on its own keep-alive connection; its latency beyond the "
        "idle worker's is time the event loop was busy elsewhere. /ping is served by the "
        "Quart fallback app, so it also includes Quart's own per-request cost.",
        f"Probes skipped because the previous one was still out: {held['probe_skipped']}; "
        f"errors: {held['errors'] or 'none'}.",
    )
    return Section(
        key="slow-streams",
        title="3. Many slow streams held open",
        rows=tuple(rows),
        notes=notes,
    )
