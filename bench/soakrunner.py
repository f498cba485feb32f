"""The fault soak as it runs: its processes, its observers, its faults.

:class:`Soak` starts the fake model, the stand-in autoscaler and the worker; polls the
worker's ``/status``, samples its resources from ``/proc`` and follows its log; injects each
fault on schedule and waits for the worker to recover (a canary request answered exactly
right), restarting the model if it does not. What it observed is left on it for the report
(``bench/soakreport.py``). The scenario's description and its entry point are in
``bench/soak.py``.
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

from bench.procs import (
    Procs,
    cpu_seconds,
    free_port,
    http_get,
    machine_busy_seconds,
    wait_status,
)
from bench.soakconn import Closed, Connection, frame
from bench.soakexpect import Expected, check_json
from bench.soakplan import (
    CANARY_TIMEOUT,
    FAKE_ARGS,
    FAKE_MODULE,
    SAMPLE_INTERVAL,
    SEED,
    SETTLE,
    STATUS_INTERVAL,
    Fault,
    Schedule,
)
from bench.soakprocfs import Sample, sample
from bench.soaktally import first_sign_in_status
from bench.stack import (
    Server,
    Worker,
    signer,
    start_autoscaler,
    start_fake,
    start_worker,
)

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


def say(text: str) -> None:
    """Print a line of the soak's progress (stderr, at once)."""
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
    auth: dict[str, Any] = attrs.Factory(dict)
    """The router's signature for the worker (from :meth:`start_stack`), for the load too."""
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
        self.auth = signer().sign_2025(self.worker.url, reqnum=0)

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
                say(f"model restart {attempt + 1} failed: {exc}")
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
                except (OSError, Closed, ValueError):
                    state = "unreachable"
            if state == "unreachable" and conn is not None:
                with trio.move_on_after(0.5):
                    await conn.aclose()
                conn = None
            if (state, error) != last:
                self.statuses.append((time.monotonic(), state, error))
                shown = f"{last[0] if last else '-'} -> {state}"
                say(f"{self.now():7.1f} s  /status: {shown}" + (f" ({error})" if error else ""))
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
                        say(f"{self.now():7.1f} s  worker log: {line.strip()[:110]}")
            await trio.sleep(0.1)

    async def canary(self) -> bool:
        """One ``POST /generate``: whether its answer is exactly right."""
        self.canaries += 1
        prompt, count = f"canary {self.canaries}", 4
        body = json.dumps(
            {
                "auth_data": {**self.auth, "reqnum": time.time_ns() // 1000},
                "payload": {"prompt": prompt, "max_response_tokens": count},
            }
        ).encode()
        ok = False
        with trio.move_on_after(CANARY_TIMEOUT):
            try:
                if self._canary_conn is None:
                    self._canary_conn = await Connection.open(self.worker.port)
                await self._canary_conn.send(frame("/generate", body))
                status, _ = await self._canary_conn.head()
                answer = await self._canary_conn.body()
                ok = status == 200 and not check_json(answer, self._expected.json(prompt, count))
            except (OSError, Closed):
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
                    say(f"{self.now():7.1f} s  {fault.key}: recovered")
                    return True
                await trio.sleep(0.1)
        return False

    async def recover_or_repair(self, fault: Fault, settle: float = 0.0) -> None:
        """Await recovery; if it does not come, restart the model and await it again."""
        within = self.schedule.recover_within
        if await self.await_recovery(fault, within, settle):
            return
        fault.repaired = f"not recovered within {within:g} s: model restarted"
        say(f"{self.now():7.1f} s  {fault.key}: {fault.repaired}")
        await self.restart_model(kill=False)
        if not await self.await_recovery(fault, within, SETTLE):
            fault.repaired += f", still not recovered {within:g} s later"

    # -- faults --------------------------------------------------------------------------
    def _inject(self, fault: Fault, what: str) -> None:
        fault.injected = time.monotonic()
        self.faults.append(fault)
        say(f"{self.now():7.1f} s  {fault.key}: {what}")

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
        say(f"{self.now():7.1f} s  kill: model restarted (log moved to .old)")
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
        say(f"{self.now():7.1f} s  hang: SIGCONT")
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
        say(f"{self.now():7.1f} s  autoscaler: restarted")
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
            self.start = self.sample_now()
            nursery.start_soon(self._sample_half_way)
            for at, inject in plan:
                late = time.monotonic() - (self.t0 + at)
                await _sleep_until(self.t0 + at)
                await inject()
                if late > 0:
                    self.faults[-1].late = late
            await _sleep_until(self.t0 + s.duration)
            self.end = self.sample_now()
            elapsed = time.monotonic() - self.t0
            with contextlib.suppress(OSError):
                self.worker_cpu = (cpu_seconds(self.worker.pid) - cpu_start) / elapsed
            self.machine_busy = (machine_busy_seconds() - busy_start) / elapsed
            # The load stops now; its last requests finish (bounded by the client timeout).
            with trio.move_on_after(s.timeout + 5.0):
                while await trio.to_thread.run_sync(self.in_flight) != 0:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            await trio.sleep(2.0)
            self.after = self.sample_now()
            nursery.cancel_scope.cancel()

    async def _sample_half_way(self) -> None:
        await _sleep_until(self.t0 + self.schedule.duration / 2)
        self.half = self.sample_now()

    def sample_now(self) -> Sample | None:
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
