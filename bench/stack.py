"""Start the processes a scenario needs: upstream fakes, the worker, the bare baseline, loads.

Every function takes the scenario's :class:`~bench.procs.Procs`, which stops what it started.
The worker runs as ``python -m pyworker`` with the router's public key in a file, so requests
are checked exactly as in production: each carries a 2025 signature (over the worker's URL
only, made once) and an increasing ``reqnum``, which the replay guard accepts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization

from bench.procs import DRIVER_CPU, WORKER_CPU, Proc, Procs, free_port, http_get, wait_for
from pyworker.devtools import RouterSigner

_START_TIMEOUT = 30.0
_SIGNER: RouterSigner | None = None


def signer() -> RouterSigner:
    """One RSA key for the whole run (made on first use)."""
    global _SIGNER
    if _SIGNER is None:
        _SIGNER = RouterSigner.generate()
    return _SIGNER


@attrs.frozen
class Server:
    """A started HTTP server process."""

    proc: Proc
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.proc.pid


def _port_from_file(proc: Proc, path: Path) -> int:
    def read() -> int | None:
        proc.check_alive()
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    port: int = wait_for(read, f"{proc.name} to listen", _START_TIMEOUT)
    return port


def start_fake(procs: Procs, name: str, module: str, *args: str, port: int = 0) -> Server:
    """Start a kit-based fake (``bench.upstream`` or ``backends.hello_world.server``).

    Its log is ``NAME.model.log`` (appended to: a fake started again under the same name
    writes the same file, unless it was moved away). ``port`` 0 picks a free port; another
    value restarts a fake where it listened before.
    """
    log_path = procs.directory / f"{name}.model.log"
    port_file = procs.directory / f"{name}.port"
    port_file.unlink(missing_ok=True)
    argv = ["-m", module, "--port", str(port), "--port-file", str(port_file)]
    argv += ["--log", str(log_path)]
    proc = procs.python(name, *argv, *args, cpu=DRIVER_CPU)
    return Server(proc=proc, port=_port_from_file(proc, port_file), log_path=log_path)


def start_upstream(procs: Procs, event_interval: float = 0.01) -> Server:
    """The benchmark upstream (instant JSON, paced streams)."""
    return start_fake(procs, "upstream", "bench.upstream", "--event-interval", str(event_interval))


def start_baseline(procs: Procs) -> Server:
    """Bare Hypercorn serving a constant answer, pinned like the worker."""
    port = free_port()
    proc = procs.python("baseline", "-m", "bench.baseline", "--port", str(port), cpu=WORKER_CPU)

    def up() -> bool:
        proc.check_alive()
        return http_get(port, "/", timeout=0.5)[0] == 200

    wait_for(up, "the baseline server", _START_TIMEOUT)
    return Server(proc=proc, port=port, log_path=proc.log_path)


@attrs.frozen
class Worker(Server):
    """A started worker and what signed requests to it need."""

    url: str


def start_worker(
    procs: Procs, model: Server, *args: str, name: str = "worker", cpu: int | None = WORKER_CPU
) -> Worker:
    """Start ``python -m pyworker`` for hello_world in front of ``model`` (not awaiting ready).

    Args:
        procs: owns the process.
        model: the model server (its log file is the worker's model log).
        *args: further worker options (e.g. ``--max-queue-time``).
        name: the process's name (its output goes to ``NAME.log``).
        cpu: the core to pin it to (None: unpinned).
    """
    pem = procs.directory / "router.pem"
    pem.write_bytes(signer().public_pem())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        "-m",
        "pyworker",
        "--backend",
        "hello_world",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # The internal listener (WORKER_PORT + 1 by default) on any free port: the next port
        # may well be another process's here.
        "--http-port",
        "0",
        "--public-url",
        url,
        "--model-log",
        str(model.log_path),
        "--model-server-url",
        f"http://127.0.0.1:{model.port}",
        "--pubkey-file",
        str(pem),
        "--state-dir",
        str(procs.directory / f"{name}-state"),
        "--log-level",
        "INFO",
        *args,
    ]
    proc = procs.python(name, *argv, cpu=cpu)
    return Worker(proc=proc, port=port, log_path=proc.log_path, url=url)


def signed_body(url: str, payload: dict[str, Any]) -> dict[str, str]:
    """The load generator's ``signed`` spec: envelope text before and after the ``reqnum``."""
    auth = signer().sign_2025(url, reqnum=0)
    marker = "__REQNUM__"
    text = json.dumps({"auth_data": {**auth, "reqnum": marker}, "payload": payload})
    prefix, suffix = text.split(json.dumps(marker))
    # Microseconds since the epoch: every run starts above the previous run's last reqnum.
    return {"prefix": prefix, "suffix": suffix, "reqnum_start": str(time.time_ns() // 1000)}


def run_load(procs: Procs, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator on the drivers' core until it finishes; returns its results."""
    return finish_load(procs, start_load(procs, name, spec), spec)


def start_load(procs: Procs, name: str, spec: dict[str, Any]) -> Proc:
    """Start the load generator on the drivers' core (see :func:`finish_load`)."""
    return procs.python(name, "-m", "bench.loadgen", json.dumps(spec), cpu=DRIVER_CPU)


def finish_load(
    procs: Procs, proc: Proc, spec: dict[str, Any], *, count_background: bool = True
) -> dict[str, Any]:
    """Wait (bounded) for a load generator started by :func:`start_load`; returns its results.

    Args:
        procs: owns the process.
        proc: the load generator.
        spec: its spec (for the time it may take).
        count_background: add the cores other processes used to ``procs.background`` (only
            meaningful when ``spec["pids"]`` names every process the scenario runs).
    """
    limit = (
        spec.get("warmup", 0.0) + spec["duration"] + spec.get("drain", 0.0) + spec.get("ramp", 0)
    )
    try:
        proc.popen.wait(limit + 30.0)
    finally:
        procs.stop(proc)
    lines = proc.log_path.read_text(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        print(proc.log_tail(), file=sys.stderr)
        raise RuntimeError(f"load generator {proc.name} gave no results") from None
    if count_background:
        cpu = result["cpu_s"]
        ours = sum(v for k, v in cpu.items() if k != "machine")
        procs.background.append(max(0.0, cpu["machine"] - ours) / result["window_s"])
    return result


def start_autoscaler(procs: Procs, name: str, port: int) -> Server:
    """Start the stand-in autoscaler on ``port``, with the run's router key (``bench.standin``).

    It serves the load reports (``/worker_status/``) and finished-request records
    (``/delete_requests/``) a worker started with ``--report-addr`` sends, and ``/pubkey/``.
    The bench workers read the router's key from a file, so serving does not wait for it; but
    a worker fetches the key again from ``/pubkey/`` after failed signatures (a rotated key),
    so it serves the key requests are signed with, the same after a restart.
    """
    key = procs.directory / "router.key"
    if not key.exists():
        key.touch(mode=0o600)
        key.write_bytes(
            signer().private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    argv = ["-m", "bench.standin", "--port", str(port), "--key", str(key)]
    proc = procs.python(name, *argv, cpu=DRIVER_CPU)

    def listening() -> bool:
        proc.check_alive()
        try:
            return "listening on" in proc.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    wait_for(listening, f"{name} to listen", _START_TIMEOUT)
    return Server(proc=proc, port=port, log_path=proc.log_path)
