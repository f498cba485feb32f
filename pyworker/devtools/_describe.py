"""Human lines for what the stand-in autoscaler receives: load reports and finished
requests."""

from __future__ import annotations

import math
from typing import Any


def print_line(line: str) -> None:
    print(line, flush=True)


def _number(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.1f}{unit}"
    return repr(value)


def describe_report(report: dict[str, Any]) -> str:
    """One human line summarising a load report.

    The 2024 report has no state field, so unless the worker sends one, it is inferred: errored
    when there is an error message, ready once benchmarked (``max_perf`` > 0), else loading.
    """
    state = report.get("state")
    if not isinstance(state, str):
        max_perf = report.get("max_perf")
        if report.get("error_msg"):
            state = "error"
        elif isinstance(max_perf, int | float) and max_perf > 0:
            state = "ready"
        else:
            state = "loading"
    return (
        f"report from worker {report.get('id', '?')}: state={state}"
        f" loadtime={_number(report.get('loadtime'), 's')}"
        f" max_perf={_number(report.get('max_perf'))}"
        f" cur_load={_number(report.get('cur_load'))}"
        f" cur_perf={_number(report.get('cur_perf'))}"
        f" in_flight={report.get('num_requests_working', '-')}"
        f" received={report.get('num_requests_recieved', '-')}"
        f" error={report.get('error_msg', '')!r}"
    )


def describe_deletions(body: dict[str, Any]) -> str:
    """One human line summarising a ``/delete_requests/`` body (the 2026 form).

    Each finished request shows as ``request_idx:status``; an older body (a bare
    ``request_idxs`` list and one ``success`` flag) is shown by its indices.
    """
    entries = body.get("requests")
    if isinstance(entries, list):
        finished = " ".join(
            f"{entry.get('request_idx', '?')}:{entry.get('status', '?')}"
            if isinstance(entry, dict)
            else repr(entry)
            for entry in entries
        )
    else:
        finished = f"{body.get('request_idxs', [])!r} success={body.get('success', '-')!r}"
    return f"finished requests from worker {body.get('worker_id', '?')}: {finished or '-'}"
