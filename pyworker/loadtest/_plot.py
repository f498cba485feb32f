"""``--plot FILE.png``: each request's latency over the run, and the throughput second by
second, drawn with matplotlib (its Agg renderer: no display needed). matplotlib comes with
``pyworker[loadtest]``."""

from __future__ import annotations

import math
from pathlib import Path

from ._tally import Outcome, Result, percentile

__all__ = ["PLOT_HINT", "draw", "plot_available"]

PLOT_HINT = "--plot needs matplotlib: pip install 'pyworker[loadtest]'"
SIZE_INCHES = (10.0, 7.0)
DPI = 100


def plot_available() -> bool:
    """Whether matplotlib can be imported (it comes with ``pyworker[loadtest]``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _per_second(times: list[float], seconds: int) -> list[int]:
    counts = [0] * seconds
    for time in times:
        counts[min(int(time), seconds - 1)] += 1
    return counts


def draw(results: list[Result], path: Path, *, title: str) -> None:
    """Draw the run to a PNG file.

    The top panel has each request's latency at the time it ended (successes as dots, errors as
    crosses) and the successes' p50 and p99 second by second; the bottom one the successes and
    errors that ended in each second, and the requests sent in it.

    Blocks for a moment (rendering, writing): call it off the event loop.

    Raises:
        ImportError: matplotlib is not installed (see :data:`PLOT_HINT`).
        OSError: the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ended = [r for r in results if r.outcome is not Outcome.CANCELLED]
    ok = [r for r in ended if r.outcome is Outcome.OK]
    failed = [r for r in ended if r.outcome is not Outcome.OK]
    seconds = max(1, math.ceil(max((r.finished_at for r in results), default=1.0)))

    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    latency_axes, rate_axes = figure.subplots(2, 1, sharex=True)
    figure.suptitle(title)

    latency_axes.scatter(
        [r.finished_at for r in ok],
        [r.latency * 1000 for r in ok],
        s=8,
        alpha=0.5,
        color="tab:blue",
        label="ok",
    )
    if failed:
        latency_axes.scatter(
            [r.finished_at for r in failed],
            [r.latency * 1000 for r in failed],
            s=18,
            marker="x",
            color="tab:red",
            label="error",
        )
    by_second: list[list[float]] = [[] for _ in range(seconds)]
    for r in ok:
        by_second[min(int(r.finished_at), seconds - 1)].append(r.latency * 1000)
    middles = [second + 0.5 for second in range(seconds)]
    for pct, style in ((50, "-"), (99, "--")):
        line = [percentile(sorted(values), pct) for values in by_second]
        latency_axes.plot(middles, line, style, color="black", linewidth=1, label=f"p{pct}")
    latency_axes.set_ylabel("latency (ms)")
    latency_axes.set_ylim(bottom=0)
    latency_axes.grid(alpha=0.3)
    latency_axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))

    starts = list(range(seconds))
    ok_counts = _per_second([r.finished_at for r in ok], seconds)
    error_counts = _per_second([r.finished_at for r in failed], seconds)
    rate_axes.bar(starts, ok_counts, width=1.0, align="edge", color="tab:green", label="ok")
    rate_axes.bar(
        starts,
        error_counts,
        width=1.0,
        align="edge",
        bottom=ok_counts,
        color="tab:red",
        label="errors",
    )
    sent = _per_second([r.sent_at for r in results], seconds)
    rate_axes.stairs(sent, range(seconds + 1), color="black", linewidth=1.2, label="sent")
    rate_axes.set_xlabel("seconds since the start")
    rate_axes.set_ylabel("requests per second")
    rate_axes.set_xlim(0, seconds)
    highest = max(*(o + e for o, e in zip(ok_counts, error_counts, strict=True)), *sent, 1)
    rate_axes.set_ylim(0, highest * 1.1)
    rate_axes.grid(alpha=0.3)
    rate_axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))

    figure.savefig(path, format="png")
