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
from bench.report import Section
from bench.soakload import Connection, Expected
from bench.soakplan import (
    ABORT_TOKENS,
    CANARY_TIMEOUT,
    CLIENTS,
    FAKE_ARGS,
    FAKE_MODULE,
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
from bench.soakprocfs import Sample, sample
from bench.soakreport import analyse, fake_stats
from bench.soaktally import first_sign_in_status
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
                while await trio.to_thread.run_sync(self.in_flight) != 0:  # noqa: ASYNC110
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

    def in_flight(self) -> int | None:
        """The requests in flight in the worker, as its ``/status`` says (None if it does not)."""
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
    return analyse(soak, records, probe, idle, fake_stats(soak.fake.port), load_summary)
