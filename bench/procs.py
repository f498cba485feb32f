"""Child processes of a benchmark run: pinned to a core, watched through /proc, always killed.

Every process a scenario starts goes through :class:`Procs`, a context manager that stops them
all (SIGTERM, then SIGKILL) when the scenario ends, whether it finished or failed. The worker
under test runs on :data:`WORKER_CPU`; the upstream fake and the load generator share
:data:`DRIVER_CPU`, so they never steal the worker's core.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import attrs

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_CPU = 0
DRIVER_CPU = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TASKSET = shutil.which("taskset")
_STOP_GRACE = 5.0


def pinned(argv: list[str], cpu: int) -> list[str]:
    """``argv`` run on core ``cpu`` (unpinned when taskset is missing or the core is absent)."""
    if TASKSET is None or (os.cpu_count() or 1) <= cpu:
        return argv
    return [TASKSET, "-c", str(cpu), *argv]


def pinning_note() -> str:
    """One line saying how processes are pinned, for the results."""
    if TASKSET is None:
        return "taskset not found: processes run unpinned"
    if (os.cpu_count() or 1) < 2:
        return "one core only: processes run unpinned"
    return f"worker on core {WORKER_CPU}; upstream fake and load generator on core {DRIVER_CPU}"


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # After the ")" closing the command name, utime and stime are fields 12 and 13 (0-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time all cores have spent not idle (from /proc/stat), summed over cores."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A plain GET on 127.0.0.1 (for readiness checks, not for load)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for(predicate: Any, what: str, timeout: float, interval: float = 0.02) -> Any:
    """Poll ``predicate()`` until it returns a truthy value (at most ``timeout`` seconds).

    Raises:
        TimeoutError: it never did.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def wait_status(port: int, state: str, timeout: float) -> dict[str, Any]:
    """Wait until the worker's ``GET /status`` reports ``state``; returns the status."""

    def check() -> dict[str, Any] | None:
        code, body = http_get(port, "/status", timeout=1.0)
        status: dict[str, Any] = json.loads(body) if code == 200 else {}
        if status.get("state") == "errored":
            raise RuntimeError(f"worker errored: {status}")
        return status if status.get("state") == state else None

    result: dict[str, Any] = wait_for(check, f"worker state {state}", timeout, interval=0.05)
    return result


@attrs.define(eq=False)
class Proc:
    """A started child process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id (of the command itself: taskset execs it)."""
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise if the process has exited."""
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
            )


@attrs.define(eq=False)
class Procs:
    """Starts child processes and stops every one of them on exit.

    Args:
        directory: where each process's output file goes.
    """

    directory: Path
    background: list[float] = attrs.field(factory=list, init=False)
    """Cores used by processes other than ours during each measured window."""
    _running: list[Proc] = attrs.field(factory=list, init=False)

    def start(self, name: str, argv: list[str], *, cpu: int | None = None) -> Proc:
        """Start ``argv`` (pinned to ``cpu`` if given), output to ``DIRECTORY/NAME.log``."""
        log_path = self.directory / f"{name}.log"
        out: IO[bytes]
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                argv if cpu is None else pinned(argv, cpu),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "PYWORKER_PARENT_PID": str(os.getpid()),
                },
                start_new_session=True,  # a terminal's Ctrl-C reaches us; we stop the children
            )
        proc = Proc(name=name, popen=popen, log_path=log_path)
        self._running.append(proc)
        return proc

    def python(self, name: str, *args: str, cpu: int | None = None) -> Proc:
        """Start ``python ARGS`` with this interpreter (the project venv)."""
        return self.start(name, [sys.executable, *args], cpu=cpu)

    def stop(self, proc: Proc) -> None:
        """Stop one process: SIGTERM, then SIGKILL after a grace period."""
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if proc in self._running:
            self._running.remove(proc)

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        for proc in reversed(list(self._running)):
            self.stop(proc)

    def __enter__(self) -> Procs:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
