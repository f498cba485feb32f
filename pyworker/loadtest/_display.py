"""The live progress display: a rich table redrawn four times a second on a terminal, or one
plain line a second when stdout is not one (a pipe, a file, CI) or rich is not installed."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from ._tally import Phase, Snapshot, Tally

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["progress_line", "progress_table", "rich_available", "show_progress"]

RICH_INTERVAL = 0.25
PLAIN_INTERVAL = 1.0
MAX_WORKERS_SHOWN = 5
"""Connection errors are listed for this many workers at most (the most failing)."""


def rich_available() -> bool:
    """Whether rich can be imported (it comes with ``pyworker[loadtest]``)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}ms"


def _counts(counts: dict[int, int] | dict[str, int]) -> str:
    shown = list(counts.items())[:MAX_WORKERS_SHOWN]
    text = " ".join(f"{key}:{n}" for key, n in shown)
    if len(counts) > len(shown):
        text += f" +{len(counts) - len(shown)} more"
    return text


def progress_line(snap: Snapshot) -> str:
    """The counts in one line."""
    parts = [
        f"{snap.elapsed:6.1f}s",
        f"sent {snap.sent}/{snap.planned}",
        f"queued {snap.phases[Phase.QUEUED]}",
        f"routing {snap.phases[Phase.ROUTING]}",
        f"fetching {snap.phases[Phase.FETCHING]}",
        f"ok {snap.ok}",
        f"route_err {snap.route_errors}",
        f"http_err {sum(snap.http_errors.values())}",
        f"conn_err {sum(snap.connection_errors.values())}",
        f"timeouts {snap.timeouts}",
        f"workers {snap.workers}",
        f"p50 {_ms(snap.latency_p50)}",
        f"p99 {_ms(snap.latency_p99)}",
        f"rate {snap.rate:.1f}/s",
    ]
    if snap.http_errors:
        parts.append(f"[http {_counts(snap.http_errors)}]")
    if snap.connection_errors:
        parts.append(f"[conn {_counts(snap.connection_errors)}]")
    return " ".join(parts)


def progress_table(snap: Snapshot) -> Table:
    """The counts as a rich table (needs rich)."""
    from rich.table import Table

    table = Table(title=f"load test, {snap.elapsed:.1f} s", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="bold")
    table.add_column(justify="right")
    errors = "red" if snap.errors else "green"
    table.add_row("sent", f"{snap.sent} / {snap.planned}", "ok", f"[green]{snap.ok}")
    table.add_row(
        "queued", str(snap.phases[Phase.QUEUED]), "routing errors", f"[{errors}]{snap.route_errors}"
    )
    table.add_row(
        "routing",
        str(snap.phases[Phase.ROUTING]),
        "inference errors",
        f"[{errors}]{_counts(snap.http_errors) or 0}",
    )
    table.add_row(
        "fetching",
        str(snap.phases[Phase.FETCHING]),
        "connection errors",
        f"[{errors}]{sum(snap.connection_errors.values())}",
    )
    table.add_row("in flight", str(snap.in_flight), "timeouts", f"[{errors}]{snap.timeouts}")
    table.add_row(
        "workers",
        str(snap.workers),
        "re-routes",
        _counts(snap.retries) or "0",
    )
    table.add_row(
        "latency p50 / p99",
        f"{_ms(snap.latency_p50)} / {_ms(snap.latency_p99)}",
        "rate",
        f"{snap.rate:.1f} ok/s",
    )
    for url, count in list(snap.connection_errors.items())[:MAX_WORKERS_SHOWN]:
        table.add_row("", "", f"  {url}", f"[red]{count}")
    return table


async def show_progress(tally: Tally, *, console: Console | None, stop: trio.Event) -> None:
    """Show the tally's progress until ``stop`` is set, then its last state once more.

    It goes on when cancelled (shielded), so that the last state shown is the one after the
    requests in flight were cancelled: set ``stop`` once they are.

    Args:
        tally: what to show.
        console: a rich console to redraw a table on; None prints a plain line a second.
        stop: set it to stop.
    """
    with trio.CancelScope(shield=True):
        if console is None:
            await _show_plain(tally, stop)
        else:
            await _show_rich(tally, console, stop)


async def _show_plain(tally: Tally, stop: trio.Event) -> None:
    shown = ""
    while not stop.is_set():
        with trio.move_on_after(PLAIN_INTERVAL):
            await stop.wait()
        line = progress_line(tally.snapshot(trio.current_time()))
        if line != shown:  # a tick and the stop at the same moment
            print(line, flush=True)
            shown = line


async def _show_rich(tally: Tally, console: Console, stop: trio.Event) -> None:
    from rich.live import Live

    # Redrawn from this task only (no refresh thread): the tally is not for other threads.
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while not stop.is_set():
            live.update(progress_table(tally.snapshot(trio.current_time())), refresh=True)
            with trio.move_on_after(RICH_INTERVAL):
                await stop.wait()
        live.update(progress_table(tally.snapshot(trio.current_time())), refresh=True)
