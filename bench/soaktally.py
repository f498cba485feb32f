"""The fault soak's judgement of its records: which requests were lost or corrupted, and the
signs of each fault.

Pure: the report (``bench/soakreport.py``) and the runner (``bench/soakrunner.py``) hand in the
load's records (one per request, written by ``bench/soakload.py``), the model faults' windows
and the states the ``/status`` poller saw; nothing here runs or reads anything, so
``tests/test_bench_soak.py`` checks the verdicts without running the soak.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs

from bench import soakload
from bench.soakload import KINDS, OK, RETRYABLE


@attrs.define(kw_only=True)
class Tally:
    """Outcomes by kind, and the verdicts."""

    by_kind: dict[str, Counter[str]]
    """Per kind: outcome counts, ``status:N`` counts, ``clean`` and ``lost`` counts."""
    lost: list[dict[str, Any]]
    corrupted: list[dict[str, Any]]
    clean: int
    during_outage: int
    lost_during_outage: int
    not_ready_outside_faults: int


def tally(
    records: Sequence[dict[str, Any]],
    windows: Sequence[tuple[float, float]],
    ready_at: Any,
    outages: Sequence[tuple[float, float]] = (),
) -> Tally:
    """Count outcomes and decide which requests were lost or corrupted.

    Args:
        records: the load's records (``k`` kind, ``s`` sent, ``e`` ended, ``st`` status,
            ``o`` outcome).
        windows: the model faults' windows (injection to recovery).
        ready_at: ``ready_at(t)``: whether the worker's ``/status`` said ready at ``t``.
        outages: the autoscaler's outages (counted apart, never excused).

    A request should have succeeded when it was sent while the worker was ready and its life
    overlaps no window; it is lost when its outcome is neither ``ok`` nor ``retryable``.
    Corrupted: outcome ``corrupt``, at any time.
    """
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    lost, corrupted = [], []
    clean = during = lost_during = not_ready = 0
    for record in records:
        counts = by_kind.setdefault(record["k"], Counter())
        counts["sent"] += 1
        counts[record["o"]] += 1
        if record["st"]:
            counts[f"status:{record['st']}"] += 1
        if record["o"] == soakload.CORRUPT:
            corrupted.append(record)
        sent, ended = record["s"], record["e"]
        if any(sent <= end and ended >= start for start, end in windows):
            continue
        if not ready_at(sent):
            not_ready += 1
            continue
        clean += 1
        counts["clean"] += 1
        in_outage = any(sent <= end and ended >= start for start, end in outages)
        during += in_outage
        if record["o"] not in (OK, RETRYABLE):
            counts["lost"] += 1
            lost.append(record)
            lost_during += in_outage
    return Tally(
        by_kind=by_kind,
        lost=lost,
        corrupted=corrupted,
        clean=clean,
        during_outage=during,
        lost_during_outage=lost_during,
        not_ready_outside_faults=not_ready,
    )


_FAILED = frozenset({soakload.BROKEN, soakload.TIMEOUT, soakload.CONNECT})
_BY_STATUS = frozenset({soakload.RETRYABLE, soakload.STATUS})
"""Outcomes shown by their status (the others by name: broken, timeout, corrupt, ...)."""


def first_sign_in_answers(
    records: Sequence[dict[str, Any]], start: float, end: float
) -> tuple[float, str] | None:
    """The first answer ending in ``[start, end]`` that showed a failure (5xx, broken, none)."""
    best: tuple[float, str] | None = None
    for record in records:
        ended = record["e"]
        if not start <= ended <= end or (best is not None and ended >= best[0]):
            continue
        status = record["st"]
        if record["o"] in _FAILED and record["k"] != "abort":
            best = (ended, f"{record['k']}: {record['o']}")
        elif status >= 500:
            best = (ended, f"{record['k']}: {status}")
    return best


def first_sign_in_status(
    statuses: Sequence[tuple[float, str, str]], start: float, end: float
) -> tuple[float, str] | None:
    """The first ``/status`` change in ``[start, end]`` away from a healthy ``ready``."""
    for at, state, error in statuses:
        if start <= at <= end and (state != "ready" or error):
            return at, state + (f" ({short(error, 60)})" if error else "")
    return None


def short(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def states_seen(statuses: Sequence[tuple[float, str, str]], start: float, end: float) -> str:
    """The states ``/status`` showed from ``start`` to ``end``, in order."""
    seen = []
    for at, state, _ in statuses:
        if at <= start:
            seen = [state]
        elif at <= end and (not seen or seen[-1] != state):
            seen.append(state)
    return " → ".join(seen) or "-"


def answers_in_window(records: Sequence[dict[str, Any]], start: float, end: float) -> str:
    """What the requests whose life overlapped ``[start, end]`` got, and the slowest of them."""
    overlapping = [r for r in records if r["s"] <= end and r["e"] >= start]
    if not overlapping:
        return "-"
    counts: Counter[str] = Counter(
        "right" if r["o"] == OK else str(r["st"]) if r["o"] in _BY_STATUS else r["o"]
        for r in overlapping
    )
    parts = [f"right {counts.pop('right')}"] if "right" in counts else []
    parts += [f"{what} x{n}" for what, n in sorted(counts.items())]
    slowest = max(r["e"] - r["s"] for r in overlapping)
    return ", ".join(parts) + f"; slowest {slowest:.1f} s"
