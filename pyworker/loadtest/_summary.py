"""The load test's figures at the end: one JSON-ready dictionary (``--json``), shown as a table.

The dictionary's keys:

========================  ======================================================================
``requests``              requests sent (``planned``: asked for; ``cancelled``: stopped by Ctrl-C)
``ok``                    2xx answers received in full
``errors``                requests that failed, of any kind; ``error_rate`` = errors / (ok +
                          errors)
``route_errors``          the router refused, answered no route, or could not be reached
``inference_errors``      the worker answered another status: ``{status: count}``
``connection_errors``     the last worker could not be reached or broke off: ``{url: count}``
``timeouts``              no answer within ``--timeout``
``status_counts``         every final status from a worker: ``{status: count}``
``retries``               re-routes, by cause: ``{"429": n, "503": n, "connection": n}``
``latency_ms``            successes, from arrival (the schedule's time with ``--rps``) to the end:
                          ``{p50, p90, p99, max}``
``queued_ms``             successes, waiting for a slot under ``--concurrency`` before being sent
                          (part of the latency)
``routing_ms``            successes, from sending until the router named a worker
``ttfb_ms``               streamed successes, from arrival to the first body byte (else null)
``chunk_gap_ms``          streamed successes, between chunks (else null)
``throughput_rps``        successes per second over ``elapsed_s``
``workload_per_s``        the successes' workload (as the backend weighs it) per second
``workers``               distinct workers routed to (``worker_counts``: successes per worker)
========================  ======================================================================
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from ._tally import Outcome, Tally, percentile

if TYPE_CHECKING:
    from rich.console import Group

__all__ = ["render_plain", "render_rich", "summarize"]

_PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99))


def _figures(seconds: list[float]) -> dict[str, float] | None:
    """p50, p90, p99 and max of durations, in milliseconds; None when there are none."""
    if not seconds:
        return None
    values = sorted(value * 1000 for value in seconds)
    figures = {name: round(percentile(values, pct), 3) for name, pct in _PERCENTILES}
    figures["max"] = round(values[-1], 3)
    return figures


def summarize(
    tally: Tally,
    *,
    elapsed: float,
    target: str,
    backend: str,
    route: str,
    interrupted: bool = False,
) -> dict[str, Any]:
    """The load's figures (see the module's documentation for each key).

    Args:
        tally: what happened.
        elapsed: seconds from the load's start to its last request's end.
        target: where the load went, for the reader.
        backend: the backend whose payloads were sent.
        route: the worker's route.
        interrupted: the load was stopped before its end (Ctrl-C).
    """
    results = tally.results
    ok = [r for r in results if r.outcome is Outcome.OK]
    counts = collections.Counter(r.outcome for r in results)
    finished = len(results) - counts[Outcome.CANCELLED]
    errors = finished - len(ok)
    streams = [r for r in ok if r.ttfb is not None]
    span = max(elapsed, 1e-9)
    return {
        "target": target,
        "backend": backend,
        "route": route,
        "planned": tally.planned,
        "requests": tally.sent,
        "ok": len(ok),
        "errors": errors,
        "error_rate": errors / finished if finished else 0.0,
        "route_errors": counts[Outcome.ROUTE_ERROR],
        "inference_errors": {str(s): n for s, n in sorted(tally.http_errors.items())},
        "connection_errors": dict(tally.connection_errors.most_common()),
        "timeouts": counts[Outcome.TIMEOUT],
        "cancelled": counts[Outcome.CANCELLED],
        "interrupted": interrupted,
        "status_counts": {
            str(status): n
            for status, n in sorted(
                collections.Counter(r.status for r in results if r.status).items()
            )
        },
        "retries": dict(tally.retries.most_common()),
        "latency_ms": _figures([r.latency for r in ok]),
        "queued_ms": _figures([r.queued for r in ok]),
        "routing_ms": _figures([r.routing for r in ok if r.routing is not None]),
        "ttfb_ms": _figures([r.ttfb for r in streams if r.ttfb is not None]),
        "chunk_gap_ms": _figures([gap for r in streams for gap in r.gaps]),
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(len(ok) / span, 3),
        "workload_per_s": round(sum(r.workload for r in ok) / span, 3),
        "workers": len(tally.workers),
        "worker_counts": dict(collections.Counter(r.worker for r in ok).most_common()),
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counts.items()) or "none"


def _lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary's counts as (label, value) rows."""
    rate = summary["error_rate"]
    rows = [
        ("requests", f"{summary['requests']} of {summary['planned']} planned"),
        ("ok", str(summary["ok"])),
        ("errors", f"{summary['errors']} ({rate:.2%})"),
        ("  routing", str(summary["route_errors"])),
        ("  inference", _counts(summary["inference_errors"])),
        ("  connection", _counts(summary["connection_errors"])),
        ("  timeouts", str(summary["timeouts"])),
    ]
    if summary["cancelled"] or summary["interrupted"]:
        rows.append(("cancelled", f"{summary['cancelled']} (interrupted)"))
    rows += [
        ("statuses", _counts(summary["status_counts"])),
        ("re-routes", _counts(summary["retries"])),
        ("workers", f"{summary['workers']} ({_counts(summary['worker_counts'])} ok)"),
        (
            "throughput",
            f"{summary['throughput_rps']:.2f} requests/s, "
            f"{summary['workload_per_s']:.1f} workload units/s over {summary['elapsed_s']:.1f} s",
        ),
    ]
    return rows


_TIMINGS = (
    ("latency", "latency_ms"),
    ("queued in the tester", "queued_ms"),
    ("routing", "routing_ms"),
    ("time to first byte", "ttfb_ms"),
    ("gap between chunks", "chunk_gap_ms"),
)


def _timings(summary: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The summary's durations as (label, [p50, p90, p99, max]) rows, in ms."""
    rows = []
    for label, key in _TIMINGS:
        figures = summary[key]
        if figures is not None:
            rows.append((label, [f"{figures[name]:.1f}" for name in ("p50", "p90", "p99", "max")]))
    return rows


def _title(summary: dict[str, Any]) -> str:
    return f"Load test: {summary['backend']} {summary['route']} via {summary['target']}"


def render_plain(summary: dict[str, Any]) -> str:
    """The summary as plain text, for any terminal or file."""
    lines = [_title(summary)]
    width = max(len(label) for label, _ in _lines(summary)) + 2
    lines += [f"  {label:<{width}}{value}" for label, value in _lines(summary)]
    timings = _timings(summary)
    if timings:
        label_width = max(len(label) for label, _ in timings) + 2
        header = "".join(f"{name:>10}" for name in ("p50", "p90", "p99", "max"))
        lines.append(f"  {'ms':<{label_width}}{header}")
        for label, values in timings:
            lines.append(f"  {label:<{label_width}}" + "".join(f"{v:>10}" for v in values))
    return "\n".join(lines)


def render_rich(summary: dict[str, Any]) -> Group:
    """The summary as rich tables: the counts, then the durations (needs rich)."""
    from rich.console import Group
    from rich.table import Table

    counts = Table(title=_title(summary), title_justify="left", show_header=False)
    counts.add_column(style="bold")
    counts.add_column()
    for label, value in _lines(summary):
        failing = label.startswith("  ") and value not in ("0", "none")
        counts.add_row(label, value, style="red" if failing else None)
    durations = Table(show_header=True)
    durations.add_column("ms", style="bold")
    for name in ("p50", "p90", "p99", "max"):
        durations.add_column(name, justify="right")
    for label, values in _timings(summary):
        durations.add_row(label, *values)
    return Group(counts, durations)
