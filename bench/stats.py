"""Small statistics and formatting helpers shared by the load generator and the report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 90, 99, 99.9)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile of already sorted values (nearest rank); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(0, math.ceil(pct / 100 * len(sorted_values)) - 1)
    return float(sorted_values[rank])


def summary_ms(values_ns: list[int]) -> dict[str, Any]:
    """Count, mean, percentiles and max of nanosecond samples, in milliseconds."""
    values = sorted(values_ns)
    result: dict[str, Any] = {"count": len(values)}
    if not values:
        return result
    result["mean"] = sum(values) / len(values) / 1e6
    for pct in PERCENTILES:
        result[f"p{pct:g}"] = percentile(values, pct) / 1e6
    result["max"] = values[-1] / 1e6
    result["min"] = values[0] / 1e6
    return result


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell ("-" for None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing or the base is zero."""
    if value is None or base is None or not base or math.isnan(value) or math.isnan(base):
        return None
    return value / base


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded to line up in a terminal too."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
