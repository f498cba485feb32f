"""Scenario 6 (``soak``, run only when asked): a fault soak.

``python -m bench --only soak`` (10 minutes; ``--quick``: 2). A mixed load runs through the
worker the whole time (``bench/soakload.py``: JSON, streams, client aborts, bad payloads, bad
signatures, and clients opening a connection per request), every answer checked against what
the hello_world fake must say, while faults are injected from outside the processes, at
proportional times:

1. **model killed and restarted**: SIGKILL to the fake; after a pause, as Vast's start script
   does, its log is moved to ``MODEL_LOG.old`` and a new fake starts on the same port, writing
   a fresh log;
2. **model hung, then resumed**: SIGSTOP to the fake, SIGCONT later (nothing in its log);
3. **autoscaler down**: the stand-in autoscaler (load reports, finished-request records) is
   stopped, then started again on the same port; the worker reads the router's key from a
   file, so serving must not depend on it;
4. **model log replaced**: the log is moved to ``MODEL_LOG.old`` and an empty one created (as
   log rotation does) while the model keeps running.

Meanwhile ``GET /status`` is polled every 100 ms (each state change printed as it happens),
the worker's log is followed, and its resident memory, open descriptors and sockets in
CLOSE-WAIT are read from ``/proc``; a ``GET /ping`` every 100 ms on its own connection gives
the event-loop lag, as in scenario 3.

A fault's **window** runs from its injection until the worker is ready and serving again: its
``/status`` admits requests and a canary request gets exactly the right answer. A fault is
**detected** at the first sign of it, in ``/status`` (a state other than ``ready``, or an error)
or in the answers (a 5xx, a broken answer), or, for the autoscaler, the worker's log. A fault
not recovered within a bound is repaired by restarting the model (the table says so).

**Lost** and **corrupted** (see :func:`bench.soaktally.tally`): a request that should have
succeeded is one sent while the worker's ``/status`` said ready and whose whole life (sent to
answered) lies outside every model fault's window; the autoscaler's outage is no excuse (serving
must not depend on it). It must get its expected answer (a 200 exactly right, the 422 or 401
due) or a refusal the client can act on (429/503, counted apart); anything else (another status,
a broken or missing answer, a timeout) is **lost**. A 200 (or the 422 due) with wrong content is
**corrupted**, whenever it happened.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from bench import soakload
from bench.procs import (
    DRIVER_CPU,
    Procs,
    cpu_seconds,
    free_port,
    http_get,
    machine_busy_seconds,
    wait_status,
)
from bench.report import Row, Section, Table, check
from bench.soakload import KINDS, OK, Connection, Expected
from bench.soakplan import (
    ABORT_TOKENS,
    CANARY_TIMEOUT,
    CLIENTS,
    FAKE_ARGS,
    FAKE_MODULE,
    FLAT,
    IDLE_PROBE,
    PROBE_INTERVAL,
    SAMPLE_INTERVAL,
    SEED,
    SETTLE,
    STATUS_INTERVAL,
    THINK,
    TOKENS,
    Fault,
    Schedule,
)
from bench.soakprocfs import Sample, fd_limit, sample
from bench.soaktally import (
    Tally,
    answers_in_window,
    first_sign_in_answers,
    first_sign_in_status,
    short,
    states_seen,
    tally,
)
from bench.stack import (
    Server,
    Worker,
    finish_load,
    run_load,
    signer,
    start_autoscaler,
    start_fake,
    start_load,
    start_worker,
)
from bench.stats import fmt, ratio
from pyworker.devtools import RouterSigner

_LOG_SIGNS = (
    "accepted by no address",
    "accepted again",
    "model log was replaced",
    "health check failed",
    "failed mid-response",
    "state ",
    "Traceback",
    "ERROR",
)


def _say(text: str) -> None:
    print(f"  soak: {text}", file=sys.stderr, flush=True)


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: worker\r\n\r\n".encode()


@attrs.define(eq=False)
class Soak:
    """The running soak: its processes, its fault timeline and what it observed."""

    procs: Procs
    schedule: Schedule
    fake: Server = attrs.field(init=False)
    worker: Worker = attrs.field(init=False)
    scaler: Server = attrs.field(init=False)
    t0: float = 0.0
    statuses: list[tuple[float, str, str]] = attrs.Factory(list)
    """(time, state, error_msg) at each change seen by the poller."""
    samples: list[Sample] = attrs.Factory(list)
    log_lines: list[tuple[float, str]] = attrs.Factory(list)
    faults: list[Fault] = attrs.Factory(list)
    idle: Sample | None = None
    """Before the load."""
    start: Sample | None = None
    half: Sample | None = None
    end: Sample | None = None
    after: Sample | None = None
    canaries: int = 0
    model_starts: int = 1
    worker_cpu: float = math.nan
    machine_busy: float = math.nan
    """Cores busy on average over the load, every process (ours included)."""
    interrupted: int = 0
    """The signal that stopped the run early, if one did."""
    _canary_conn: Connection | None = None
    _auth: dict[str, Any] = attrs.Factory(dict)
    _expected: Expected = attrs.Factory(lambda: Expected(SEED))

    # -- processes -----------------------------------------------------------------------
    def start_stack(self) -> None:
        """Start the fake, the stand-in autoscaler and the worker; wait until it is ready."""
        self.fake = start_fake(self.procs, "model", FAKE_MODULE, *FAKE_ARGS)
        self.scaler = start_autoscaler(self.procs, "autoscaler-1", free_port())
        self.worker = start_worker(
            self.procs, self.fake, "--report-addr", f"http://127.0.0.1:{self.scaler.port}"
        )
        wait_status(self.worker.port, "ready", 90)
        self._auth = signer().sign_2025(self.worker.url, reqnum=0)

    @property
    def model_log(self) -> Path:
        return self.fake.log_path

    def _move_log_aside(self) -> None:
        # As Vast's start script does: the old log becomes MODEL_LOG.old.
        if self.model_log.exists():
            os.replace(self.model_log, self.model_log.with_name(self.model_log.name + ".old"))

    async def restart_model(self, *, kill: bool) -> None:
        """Stop the fake (SIGKILL or SIGTERM) if it runs, move its log aside, start it again."""
        old = self.fake.proc
        if old.popen.poll() is None:
            try:
                os.kill(old.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
            except ProcessLookupError:
                pass
            old.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        await trio.to_thread.run_sync(self.procs.stop, old)
        self._move_log_aside()
        port = self.fake.port
        for attempt in range(3):
            try:
                self.fake = await trio.to_thread.run_sync(
                    lambda: start_fake(self.procs, "model", FAKE_MODULE, *FAKE_ARGS, port=port)
                )
                self.model_starts += 1
                return
            except (RuntimeError, TimeoutError) as exc:
                _say(f"model restart {attempt + 1} failed: {exc}")
                await trio.sleep(1.0)
        raise RuntimeError("the model server could not be restarted on its port")

    # -- observers -----------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    async def poll_status(self) -> None:
        """Poll ``GET /status``; record and print each change of state or error."""
        conn: Connection | None = None
        last: tuple[str, str] | None = None
        while True:
            state, error = "unreachable", ""
            with trio.move_on_after(1.0):
                try:
                    if conn is None:
                        conn = await Connection.open(self.worker.port)
                    await conn.send(_get("/status"))
                    await conn.head()
                    body = json.loads(await conn.body())
                    state, error = str(body.get("state")), str(body.get("error_msg") or "")
                    if not body.get("admits_requests") and state == "ready":
                        state = "ready (not admitting)"
                except (OSError, soakload.Closed, ValueError):
                    state = "unreachable"
            if state == "unreachable" and conn is not None:
                with trio.move_on_after(0.5):
                    await conn.aclose()
                conn = None
            if (state, error) != last:
                self.statuses.append((time.monotonic(), state, error))
                shown = f"{last[0] if last else '-'} -> {state}"
                _say(f"{self.now():7.1f} s  /status: {shown}" + (f" ({error})" if error else ""))
                last = (state, error)
            await trio.sleep(STATUS_INTERVAL)

    def state_at(self, when: float) -> str:
        """The state the poller last saw at or before ``when``."""
        state = "unknown"
        for at, value, _ in self.statuses:
            if at > when:
                break
            state = value
        return state

    async def sample_resources(self) -> None:
        """Read the worker's resources every :data:`SAMPLE_INTERVAL`."""
        while True:
            try:
                self.samples.append(sample(self.worker.pid))
            except OSError:
                pass
            await trio.sleep(SAMPLE_INTERVAL)

    async def follow_worker_log(self) -> None:
        """Keep the worker's log lines that tell of a fault, with the time they appeared."""
        offset = 0
        partial = ""
        while True:
            text, offset = await trio.to_thread.run_sync(_read_from, self.worker.log_path, offset)
            lines = (partial + text).split("\n")
            partial = lines.pop()
            now = time.monotonic()
            for line in lines:
                if any(sign in line for sign in _LOG_SIGNS):
                    self.log_lines.append((now, line.strip()))
                    if "accepted" in line or "replaced" in line or "Traceback" in line:
                        _say(f"{self.now():7.1f} s  worker log: {line.strip()[:110]}")
            await trio.sleep(0.1)

    async def canary(self) -> bool:
        """One ``POST /generate``: whether its answer is exactly right."""
        self.canaries += 1
        prompt, count = f"canary {self.canaries}", 4
        body = json.dumps(
            {
                "auth_data": {**self._auth, "reqnum": time.time_ns() // 1000},
                "payload": {"prompt": prompt, "max_response_tokens": count},
            }
        ).encode()
        ok = False
        with trio.move_on_after(CANARY_TIMEOUT):
            try:
                if self._canary_conn is None:
                    self._canary_conn = await Connection.open(self.worker.port)
                await self._canary_conn.send(soakload.frame("/generate", body))
                status, _ = await self._canary_conn.head()
                answer = await self._canary_conn.body()
                ok = status == 200 and not soakload.check_json(
                    answer, self._expected.json(prompt, count)
                )
            except (OSError, soakload.Closed):
                ok = False
        if not ok:
            await self._close_canary()
        return ok

    async def _close_canary(self) -> None:
        if self._canary_conn is not None:
            with trio.move_on_after(0.5):
                await self._canary_conn.aclose()
            self._canary_conn = None

    async def await_recovery(self, fault: Fault, within: float, settle: float = 0.0) -> bool:
        """Wait (at most ``within`` s) until ``/status`` admits requests and a canary passes.

        With ``settle``, first give the worker up to that long to show the fault in
        ``/status`` (it polls the model's log every 0.25 s): a worker still showing ``ready``
        only because it has not looked yet must not count as recovered.
        """
        with trio.move_on_after(within):
            with trio.move_on_after(settle):
                while not first_sign_in_status(self.statuses, fault.injected, math.inf):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            while True:
                if self.statuses and self.statuses[-1][1] == "ready" and await self.canary():
                    fault.recovered = time.monotonic()
                    await self._close_canary()  # the next fault's canary starts afresh
                    fault.recovered_how = fault.recovered_how or "/status ready + canary right"
                    _say(f"{self.now():7.1f} s  {fault.key}: recovered")
                    return True
                await trio.sleep(0.1)
        return False

    async def recover_or_repair(self, fault: Fault, settle: float = 0.0) -> None:
        """Await recovery; if it does not come, restart the model and await it again."""
        within = self.schedule.recover_within
        if await self.await_recovery(fault, within, settle):
            return
        fault.repaired = f"not recovered within {within:g} s: model restarted"
        _say(f"{self.now():7.1f} s  {fault.key}: {fault.repaired}")
        await self.restart_model(kill=False)
        if not await self.await_recovery(fault, within, SETTLE):
            fault.repaired += f", still not recovered {within:g} s later"

    # -- faults --------------------------------------------------------------------------
    def _inject(self, fault: Fault, what: str) -> None:
        fault.injected = time.monotonic()
        self.faults.append(fault)
        _say(f"{self.now():7.1f} s  {fault.key}: {what}")

    async def kill_model(self) -> None:
        s = self.schedule
        fault = Fault(
            key="kill",
            label=f"model killed (SIGKILL), restarted after {s.restart_after:g} s",
            model=True,
        )
        self._inject(fault, "SIGKILL to the model server")
        self.fake.proc.popen.kill()
        await trio.sleep(s.restart_after)
        await self.restart_model(kill=True)
        fault.lifted = time.monotonic()
        _say(f"{self.now():7.1f} s  kill: model restarted (log moved to .old)")
        await self.recover_or_repair(fault, SETTLE)

    async def hang_model(self) -> None:
        s = self.schedule
        fault = Fault(
            key="hang", label=f"model hung (SIGSTOP) {s.hang_for:g} s, then resumed", model=True
        )
        pid = self.fake.pid
        self._inject(fault, "SIGSTOP to the model server")
        os.kill(pid, signal.SIGSTOP)
        try:
            await trio.sleep(s.hang_for)
        finally:
            os.kill(pid, signal.SIGCONT)
            fault.lifted = time.monotonic()
        _say(f"{self.now():7.1f} s  hang: SIGCONT")
        await self.recover_or_repair(fault)

    async def stop_autoscaler(self) -> None:
        s = self.schedule
        fault = Fault(
            key="autoscaler",
            label=f"autoscaler down {s.scaler_down:g} s (stopped, restarted on its port)",
            model=False,
        )
        self._inject(fault, "stand-in autoscaler stopped")
        await trio.to_thread.run_sync(self.procs.stop, self.scaler.proc)
        await trio.sleep(s.scaler_down)
        port = self.scaler.port
        self.scaler = await trio.to_thread.run_sync(
            lambda: start_autoscaler(self.procs, "autoscaler-2", port)
        )
        fault.lifted = time.monotonic()
        _say(f"{self.now():7.1f} s  autoscaler: restarted")
        # Recovered once a report is accepted again (the worker's log says so) and serving is
        # right (it should never have stopped).
        with trio.move_on_after(s.recover_within):
            while not self._reports_accepted_since(fault.lifted):  # noqa: ASYNC110 (a poll)
                await trio.sleep(0.1)
            await self.await_recovery(fault, s.recover_within)
            fault.recovered_how = "worker log: reports accepted again + canary right"
        if fault.recovered is None:
            fault.repaired = f"reports not accepted again within {s.recover_within:g} s"

    def _reports_accepted_since(self, since: float) -> bool:
        return any(
            at >= since and "/worker_status/ is accepted again" in line
            for at, line in self.log_lines
        )

    async def replace_log(self) -> None:
        fault = Fault(
            key="log",
            label="model log replaced (moved to .old, new empty file), model still running",
            model=True,
        )
        self._inject(fault, "model log moved to .old, an empty one created")
        self._move_log_aside()
        self.model_log.touch()
        fault.lifted = fault.injected
        await self.recover_or_repair(fault, SETTLE)

    # -- the run -------------------------------------------------------------------------
    async def run(self) -> None:
        """Observe, inject the faults on schedule, until the end of the load."""
        s = self.schedule
        plan = [
            (s.kill_at, self.kill_model),
            (s.hang_at, self.hang_model),
            (s.scaler_at, self.stop_autoscaler),
            (s.log_at, self.replace_log),
        ]
        cpu_start = cpu_seconds(self.worker.pid)
        busy_start = machine_busy_seconds()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on_signal, nursery.cancel_scope)
            nursery.start_soon(self.poll_status)
            nursery.start_soon(self.sample_resources)
            nursery.start_soon(self.follow_worker_log)
            await _sleep_until(self.t0 + s.warmup)
            self.start = self._sample()
            nursery.start_soon(self._sample_half_way)
            for at, inject in plan:
                late = time.monotonic() - (self.t0 + at)
                await _sleep_until(self.t0 + at)
                await inject()
                if late > 0:
                    self.faults[-1].late = late
            await _sleep_until(self.t0 + s.duration)
            self.end = self._sample()
            elapsed = time.monotonic() - self.t0
            with contextlib.suppress(OSError):
                self.worker_cpu = (cpu_seconds(self.worker.pid) - cpu_start) / elapsed
            self.machine_busy = (machine_busy_seconds() - busy_start) / elapsed
            # The load stops now; its last requests finish (bounded by the client timeout).
            with trio.move_on_after(s.timeout + 5.0):
                while await trio.to_thread.run_sync(self._in_flight) != 0:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            await trio.sleep(2.0)
            self.after = self._sample()
            nursery.cancel_scope.cancel()

    async def _sample_half_way(self) -> None:
        await _sleep_until(self.t0 + self.schedule.duration / 2)
        self.half = self._sample()

    def _sample(self) -> Sample | None:
        """The worker's resources now; None if it has exited (the soak goes on regardless)."""
        try:
            return sample(self.worker.pid)
        except OSError:
            return None

    async def _stop_on_signal(self, scope: trio.CancelScope) -> None:
        # Ctrl-C or SIGTERM: stop everything cleanly here (a stopped model resumed on the way
        # out), then the caller raises, and the Procs stop every process.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self.interrupted = signum
                scope.cancel()
                return

    def _in_flight(self) -> int | None:
        try:
            code, body = http_get(self.worker.port, "/status", timeout=1.0)
            return int(json.loads(body)["in_flight"]) if code == 200 else None
        except (OSError, ValueError, KeyError):
            return None


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    """The text of ``path`` from ``offset`` on, and where it ends."""
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return f.read(), f.tell()
    except OSError:
        return "", offset


async def _sleep_until(when: float) -> None:
    await trio.sleep(max(0.0, when - time.monotonic()))


# -- the analysis --------------------------------------------------------------------------
def _after(value: float | None, origin: float) -> str:
    return "-" if value is None else f"{value - origin:.2f} s"


def _fault_rows(soak: Soak, records: Sequence[dict[str, Any]], end: float) -> list[tuple[str, ...]]:
    rows = []
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
    rows = []
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


def _resource_rows(soak: Soak) -> list[tuple[str, ...]]:
    rows = []
    marks = [soak.idle, soak.start, soak.half, soak.end, soak.after]
    window = [s for s in soak.samples if soak.start is not None and s.at >= soak.start.at]
    for name, get, scale in (
        ("RSS (MiB)", lambda s: s.rss_kib, 1 / 1024),
        ("open descriptors", lambda s: s.fds, 1.0),
        ("sockets in CLOSE-WAIT", lambda s: s.close_wait, 1.0),
    ):
        idle, start, half, end, after = (None if m is None else get(m) * scale for m in marks)
        peak = max((get(s) * scale for s in window), default=None)
        growth = "-" if not start or end is None else f"{end / start:.2f}x"
        cell = fmt if scale != 1.0 else lambda v: "-" if v is None else f"{v:,.0f}"
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
    after_in_flight = soak._in_flight()
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


def _fake_stats(port: int) -> dict[str, Any] | None:
    try:
        code, body = http_get(port, "/stats", timeout=2.0)
        stats: dict[str, Any] = json.loads(body)
        return stats if code == 200 else None
    except (OSError, ValueError):
        return None


def run(procs: Procs, quick: bool, schedule: Schedule | None = None) -> Section:
    """Run the soak (``schedule`` overrides the 2- or 10-minute one, e.g. in tests)."""
    s = schedule or Schedule.for_run(quick)
    soak = Soak(procs, s)
    soak.start_stack()
    probe_base = {
        "mode": "closed",
        "port": soak.worker.port,
        "path": "/ping",
        "method": "GET",
        "connections": 0,
        "warmup": 0.0,
        "probe_port": soak.worker.port,
        "probe_path": "/ping",
        "probe_interval": PROBE_INTERVAL,
    }
    idle = run_load(procs, "probe-idle", {**probe_base, "duration": IDLE_PROBE})
    procs.background.clear()  # the idle probe's figure says nothing of the soak
    soak.idle = soak._sample()
    bad_signer = RouterSigner.generate()
    soak.t0 = time.monotonic() + 2.0  # time for the load process to start
    records_path = procs.directory / "soak-records.jsonl"
    load_spec = {
        "port": soak.worker.port,
        "seed": SEED,
        "auth": soak._auth,
        "bad_auth": bad_signer.sign_2025(soak.worker.url, reqnum=0),
        "start_at": soak.t0,
        "stop_at": soak.t0 + s.duration,
        "timeout": s.timeout,
        "clients": CLIENTS,
        "think": THINK,
        "tokens": list(TOKENS),
        "abort_tokens": list(ABORT_TOKENS),
        "records": str(records_path),
    }
    load = procs.python("soak-load", "-m", "bench.soakload", json.dumps(load_spec), cpu=DRIVER_CPU)
    probe_spec = {**probe_base, "duration": s.duration + 1.0}
    probe_proc = start_load(procs, "probe-soak", probe_spec)
    _say(
        f"{s.duration:g} s of load with faults at {s.kill_at:g}, {s.hang_at:g}, "
        f"{s.scaler_at:g}, {s.log_at:g} s (logs in {procs.directory})"
    )
    try:
        trio.run(soak.run)
    finally:
        # Whatever happened, a stopped model must not stay stopped.
        if soak.fake.proc.popen.poll() is None:
            os.kill(soak.fake.pid, signal.SIGCONT)
    if soak.interrupted == signal.SIGINT:
        raise KeyboardInterrupt
    if soak.interrupted:
        raise SystemExit(f"stopped by signal {soak.interrupted}")
    probe = finish_load(procs, probe_proc, probe_spec, count_background=False)
    try:
        load.popen.wait(s.timeout + 20.0)
    finally:
        procs.stop(load)
    lines = load.log_path.read_text(errors="replace").strip().splitlines()
    load_summary = lines[-1] if lines else "no summary"
    try:
        records = [json.loads(line) for line in records_path.read_text().splitlines()]
    except FileNotFoundError:
        raise RuntimeError(f"the soak's load wrote no records:\n{load.log_tail()}") from None
    try:
        summary = json.loads(load_summary)
        load_summary = f"{summary['requests']} requests"
    except (ValueError, KeyError, TypeError):
        pass
    return analyse(soak, records, probe, idle, _fake_stats(soak.fake.port), load_summary)
