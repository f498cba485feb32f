"""The fault soak's section of the results: its verdict rows, its tables and its notes.

:func:`analyse` turns what the runner observed (the faults, the ``/status`` timeline, the
worker's resources) and the load's records into the rows, the tables of outcomes, faults and
resources, and the notes that explain them; the verdicts themselves come from
``bench/soaktally.py``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bench import soakload
from bench.procs import http_get
from bench.report import Row, Section, Table, check
from bench.soakload import KINDS, OK
from bench.soakplan import (
    ABORT_TOKENS,
    CLIENTS,
    FAKE_ARGS,
    FLAT,
    PROBE_INTERVAL,
    STATUS_INTERVAL,
    THINK,
    TOKENS,
)
from bench.soakprocfs import Sample, fd_limit
from bench.soaktally import (
    Tally,
    answers_in_window,
    first_sign_in_answers,
    first_sign_in_status,
    short,
    states_seen,
    tally,
)
from bench.stats import fmt, ratio

if TYPE_CHECKING:
    from bench.soakrunner import Soak


def _after(value: float | None, origin: float) -> str:
    return "-" if value is None else f"{value - origin:.2f} s"


def _fault_rows(soak: Soak, records: Sequence[dict[str, Any]], end: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for fault in soak.faults:
        until = fault.window_end(end)
        status_sign = first_sign_in_status(soak.statuses, fault.injected, until)
        answer_sign = first_sign_in_answers(records, fault.injected, until)
        log_sign = next(
            (
                (at, line)
                for at, line in soak.log_lines
                if fault.injected <= at <= until and "accepted by no address" in line
            ),
            None,
        )
        signs = [(at, f"/status: {what}") for at, what in ([status_sign] if status_sign else [])]
        signs += [(at, f"answers: {what}") for at, what in ([answer_sign] if answer_sign else [])]
        if not fault.model and log_sign:
            what = log_sign[1].split(": ", 1)[-1].split(" (", 1)[0]
            signs.append((log_sign[0], f"worker log: {what}"))
        signs.sort()
        detected = f"{signs[0][0] - fault.injected:.2f} s" if signs else "not detected"
        first = "; ".join(f"{what} (+{at - fault.injected:.2f} s)" for at, what in signs[:2])
        recovered = _after(fault.recovered, fault.injected)
        if fault.recovered is None:
            recovered = "not recovered"
        if fault.repaired:
            recovered += f" ({fault.repaired})"
        rows.append(
            (
                fault.label,
                f"{fault.injected - soak.t0:.1f} s"
                + (f" (late {fault.late:.1f} s)" if fault.late > 0.5 else ""),
                _after(fault.lifted, fault.injected),
                detected,
                first or "-",
                states_seen(soak.statuses, fault.injected, until),
                answers_in_window(records, fault.injected, until),
                recovered,
                _after(fault.recovered, fault.lifted or fault.injected)
                if fault.recovered is not None
                else "-",
            )
        )
    return rows


def _outcome_rows(result: Tally) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    totals: Counter[str] = Counter()
    for kind in KINDS:
        counts = result.by_kind.get(kind, Counter())
        totals.update(counts)
        rows.append(_outcome_row(kind, counts))
    rows.append(_outcome_row("all", totals))
    return rows


def _outcome_row(kind: str, counts: Counter[str]) -> tuple[str, ...]:
    others = sorted(
        (int(key.split(":")[1]), n)
        for key, n in counts.items()
        if key.startswith("status:")
        and key.split(":")[1] not in ("200", "401", "422", "429", "503")
    )
    expected_status = {"bad-payload": "422", "bad-signature": "401"}.get(kind)
    wrong_expected = [
        (s, n)
        for key, n in counts.items()
        if key.startswith("status:")
        and (s := key.split(":")[1]) in ("200", "401", "422")
        and expected_status is not None
        and s != expected_status
    ]
    other = " ".join(f"{s} x{n}" for s, n in [*others, *sorted(wrong_expected)]) or "0"
    return (
        kind,
        str(counts["sent"]),
        str(counts[OK]),
        str(counts["status:429"]),
        str(counts["status:503"]),
        other,
        str(counts[soakload.BROKEN]),
        str(counts[soakload.TIMEOUT]),
        str(counts[soakload.CONNECT]),
        str(counts[soakload.CORRUPT]),
        str(counts["clean"]),
        str(counts["lost"]),
    )


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _resource_rows(soak: Soak) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    marks = [soak.idle, soak.start, soak.half, soak.end, soak.after]
    window = [s for s in soak.samples if soak.start is not None and s.at >= soak.start.at]
    readings: tuple[tuple[str, Callable[[Sample], float], float], ...] = (
        ("RSS (MiB)", lambda s: s.rss_kib, 1 / 1024),
        ("open descriptors", lambda s: s.fds, 1.0),
        ("sockets in CLOSE-WAIT", lambda s: s.close_wait, 1.0),
    )
    for name, get, scale in readings:
        idle, start, half, end, after = (None if m is None else get(m) * scale for m in marks)
        peak = max((get(s) * scale for s in window), default=None)
        growth = "-" if not start or end is None else f"{end / start:.2f}x"
        cell = fmt if scale != 1.0 else _count
        rows.append(
            (
                name,
                cell(idle),
                cell(start),
                cell(half),
                cell(peak),
                cell(end),
                growth,
                cell(after),
            )
        )
    return rows


def _record_text(record: dict[str, Any], t0: float) -> str:
    return (
        f"{record['k']} sent at {record['s'] - t0:.2f} s, {record['o']}"
        + (f" {record['st']}" if record["st"] else "")
        + (f": {record['d'][:140]}" if record.get("d") else "")
    )


def analyse(
    soak: Soak,
    records: list[dict[str, Any]],
    probe: dict[str, Any],
    idle: dict[str, Any],
    fake_stats: dict[str, Any] | None,
    load_summary: str,
) -> Section:
    """The soak's section: verdict rows, outcomes, faults, resources and notes."""
    s = soak.schedule
    end = soak.t0 + s.duration + s.timeout + 10
    windows = [(f.injected, f.window_end(end)) for f in soak.faults if f.model]
    outages = [(f.injected, f.lifted or end) for f in soak.faults if not f.model]
    result = tally(records, windows, lambda t: soak.state_at(t) == "ready", outages)
    start, stop = soak.start, soak.end
    rss = [None if m is None else m.rss_kib / 1024 for m in (start, stop)]
    fds = [None if m is None else m.fds for m in (start, stop)]
    lag99 = probe["probe_ms"].get("p99")
    after_in_flight = soak.in_flight()
    rows = [
        Row(metric="requests sent", value=len(records), unit="requests"),
        Row(
            metric="should have succeeded (ready, outside fault windows)",
            value=result.clean,
            unit="requests",
        ),
        Row(
            metric="lost or corrupted among those",
            value=len(result.lost),
            unit="requests",
            target="0",
            met=len(result.lost) == 0,
        ),
        Row(
            metric="corrupted answers (200 with wrong content, any time)",
            value=len(result.corrupted),
            unit="requests",
            target="0",
            met=not result.corrupted,
        ),
        Row(
            metric="worker RSS, end vs start",
            value=rss[1],
            unit="MiB",
            baseline=rss[0],
            baseline_label="start",
            target=f"<= {FLAT:g}x",
            met=check(ratio(rss[1], rss[0]), at_most=FLAT),
        ),
        Row(
            metric="worker open descriptors, end vs start",
            value=fds[1],
            unit="fds",
            baseline=fds[0],
            baseline_label="start",
            target=f"<= {FLAT:g}x",
            met=check(ratio(fds[1], fds[0]), at_most=FLAT),
        ),
        Row(
            metric="/ping latency p99 over the soak (loop-lag proxy)",
            value=lag99,
            unit="ms",
            baseline=idle["probe_ms"].get("p99"),
            baseline_label="idle worker",
            target="<= 10",
            met=check(lag99, at_most=10.0),
        ),
        Row(
            metric="/ping latency max over the soak",
            value=probe["probe_ms"].get("max"),
            unit="ms",
            baseline=idle["probe_ms"].get("max"),
            baseline_label="idle worker",
        ),
        Row(
            metric="requests in flight in the worker after the load stopped",
            value=after_in_flight,
            unit="requests",
            target="0",
            met=None if after_in_flight is None else after_in_flight == 0,
        ),
        Row(
            metric="requests in flight in the model after the load stopped",
            value=None if fake_stats is None else fake_stats.get("in_flight"),
            unit="requests",
            target="0",
            met=None if fake_stats is None else fake_stats.get("in_flight") == 0,
        ),
        Row(metric="worker CPU busy over the soak", value=soak.worker_cpu * 100, unit="% of core"),
    ]
    outcome_table = Table(
        caption="Outcomes by kind of request (whole run; last two columns: outside fault windows)",
        header=(
            "kind",
            "sent",
            "as expected (200 right, 422, 401)",
            "429",
            "503",
            "other status",
            "broken",
            "timed out",
            "no connection",
            "corrupted",
            "should succeed",
            "lost",
        ),
        rows=tuple(_outcome_rows(result)),
    )
    fault_table = Table(
        caption="Faults: detection and recovery (times after the injection)",
        header=(
            "fault",
            "injected at",
            "lifted after",
            "detected after",
            "first signs",
            "/status during the window",
            "answers overlapping the window",
            "ready and serving after",
            "after lifting",
        ),
        rows=tuple(_fault_rows(soak, records, end)),
    )
    resource_table = Table(
        caption="Worker process (/proc): idle (before the load), start (after a "
        f"{s.warmup:g} s warm-up), half-way, peak, end (as the load stops)",
        header=(
            "resource",
            "idle",
            "start",
            "half-way",
            "peak",
            "end",
            "end/start",
            "2 s after the load",
        ),
        rows=tuple(_resource_rows(soak)),
    )
    clients = ", ".join(f"{n} {k}" for k, n in CLIENTS.items())
    notes = [
        f"{s.duration:g} s of load: {clients} client(s), each pausing about "
        + ", ".join(f"{THINK[k]:g}" for k in CLIENTS)
        + f" s between requests; {TOKENS[0]}-{TOKENS[1]} tokens per answer ({ABORT_TOKENS[0]}-"
        f"{ABORT_TOKENS[1]} for aborted streams, left after up to a quarter of them, half with "
        f"a reset); client timeout {s.timeout:g} s. hello_world fake: {' '.join(FAKE_ARGS)}; "
        "the worker with its defaults (--health-interval 10, --read-timeout 600) plus "
        "--report-addr to the stand-in autoscaler.",
        f"Clients opened {_new_connections(records) / s.duration:.1f} connections per second "
        "(one per request for conn-per-request and abort, whose sockets the client closes); "
        "the worker's descriptor limit is "
        f"{fd_limit(soak.worker.pid)} (1024 is a common default).",
        "Lost: a request sent while /status said ready, whose life overlaps no model fault's "
        "window (injection until /status ready and a canary answered exactly right), that did "
        "not get its expected answer (a 200 exactly right, the 422 naming the bad field, the "
        "401) nor a 429/503. The autoscaler's outage is not a window: "
        f"{result.during_outage} requests overlapped it, {result.lost_during_outage} lost. "
        "Corrupted: a 200 (or 422) with wrong content, at any time; broken answers whose "
        "received part was wrong count as corrupted too.",
        _worker_exit(soak)
        + f"Requests sent while /status did not say ready outside every fault window: "
        f"{result.not_ready_outside_faults}. Canary requests: {soak.canaries}. Model server "
        f"started {soak.model_starts} times. Load: {load_summary}.",
        f"/ping every {PROBE_INTERVAL * 1e3:g} ms: {probe['probe_ms'].get('count', 0)} probes, "
        f"p50 {fmt(probe['probe_ms'].get('p50'))} ms, skipped (previous still out) "
        f"{probe['probe_skipped']}; errors {probe['errors'] or 'none'}. /status polled every "
        f"{STATUS_INTERVAL * 1e3:g} ms. The machine's {os.cpu_count()} cores were busy "
        f"{soak.machine_busy:.2f} cores on average over the load, every process included "
        "(the worker, the fake, the load, the probes, this monitor, and anything else).",
    ]
    for label, items in (("Lost", result.lost), ("Corrupted", result.corrupted)):
        if items:
            shown = "; ".join(_record_text(r, soak.t0) for r in items[:5])
            notes.append(f"{label} ({len(items)}), first ones: {shown}.")
    timeline = ", ".join(
        f"{at - soak.t0:.1f} s {state}" + (f" ({short(error, 90)})" if error else "")
        for at, state, error in soak.statuses
    )
    notes.append(f"/status states as they changed: {timeline}.")
    return Section(
        key="soak",
        title="6. Fault soak",
        rows=tuple(rows),
        tables=(outcome_table, fault_table, resource_table),
        notes=tuple(notes),
    )


def _new_connections(records: Sequence[dict[str, Any]]) -> int:
    """Connections the clients opened and closed themselves (one per request)."""
    return sum(1 for r in records if r["k"] in ("conn-per-request", "abort"))


def _worker_exit(soak: Soak) -> str:
    code = soak.worker.proc.popen.poll()
    return "" if code is None else f"THE WORKER EXITED (status {code}) during the soak. "


def fake_stats(port: int) -> dict[str, Any] | None:
    """The fake model's ``GET /stats`` (None if it does not answer)."""
    try:
        code, body = http_get(port, "/stats", timeout=2.0)
        stats: dict[str, Any] = json.loads(body)
        return stats if code == 200 else None
    except (OSError, ValueError):
        return None
