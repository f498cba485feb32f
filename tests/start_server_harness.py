"""A pretend Vast instance running ``start_server.sh``, the Vast template's start script, for
``test_start_server.py`` and ``test_start_server_refusals.py``: its workspace, its environment,
one run of the script, and the workers it leaves behind.

Offline and fast: the script's pip gets ``--no-index --no-build-isolation`` (its
``PYWORKER_PIP_ARGS``), and this interpreter's installed packages, pyworker itself left out, are
put on the ``PYTHONPATH`` as one directory of symlinks (the ``dependencies`` fixture, in
``conftest.py``). pip sees every dependency as installed, so it only builds and installs the
checkout (editable) into the new venv, a few seconds; any dependency missing there would fail
the install, as ``--no-index`` allows no download. The worker then imports pyworker through what
the script installed.

Every worker the script starts is killed when its test ends, passed or failed (the PID file; the
``instances`` fixture, in ``conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import trio
from fakes import REPO_ROOT, free_port
from harness import VAST_PREFIXES, VAST_VARIABLES, seed_benchmark

from pyworker import load_backend

SCRIPT = REPO_ROOT / "start_server.sh"
RUN_SECONDS = 120.0
"""The most one run of the script may take (a first install takes ~5 s here)."""
MTOKEN = "update-token"

needs_linux_bash = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None,
    reason="the start script runs on Linux instances, with bash",
)
"""The tests' ``pytestmark``: the script runs on Linux instances, with bash."""

# What the test's own environment must not pass on to the script: Vast's variables and
# pyworker's are the test's to set, pip's would point it at indexes, and a venv's at this one.
_VAST_VARIABLES = VAST_VARIABLES | {
    "WORKSPACE_DIR",
    "VIRTUAL_ENV",
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONNOUSERSITE",
}
_DROPPED_PREFIXES = (*VAST_PREFIXES, "PIP_")


@attrs.frozen
class Run:
    """One run of the script."""

    status: int
    stdout: str
    stderr: str
    seconds: float

    def refusal(self) -> str:
        """The one line the script refused or failed with (asserts there is exactly one)."""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self
        assert lines[0].startswith("start_server.sh: "), self
        return lines[0]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: the worker is not this process's child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def is_worker(pid: int) -> bool:
    """Whether ``pid`` is a running pyworker."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"pyworker" in cmdline and alive(pid)


def _kill(pid: int) -> None:
    """Kill a worker at once (SIGKILL: what becomes of it is of no interest), and wait until
    it is gone."""
    if not is_worker(pid):
        return
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


@attrs.define
class Instance:
    """A pretend Vast instance: a workspace and the environment its template sets.

    ``env`` is the script's environment; :meth:`run` can add to it for one run.
    """

    root: Path
    env: dict[str, str]
    workers: set[int] = attrs.field(factory=set)
    """Every worker PID seen, killed at the end of the test."""

    @property
    def workspace(self) -> Path:
        return Path(self.env["WORKSPACE_DIR"])

    @property
    def venv(self) -> Path:
        return self.workspace / "worker-env"

    @property
    def port(self) -> int:
        return int(self.env["WORKER_PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def installed(self) -> bool:
        """Whether pyworker's metadata is in the venv's own site-packages."""
        return any(self.venv.glob("lib/python3*/site-packages/pyworker-*.dist-info"))

    def worker_pid(self) -> int:
        pid = int((self.workspace / "pyworker.pid").read_text())
        self.workers.add(pid)
        return pid

    async def run(self, *, piped: bool = False, **env: str | None) -> Run:
        """Run the script (``piped``: fed to ``bash -s`` on stdin, as ``curl ... | bash`` does)
        with ``env`` added to the instance's (None removes a variable)."""
        merged = {**self.env, **env}
        environment = {k: v for k, v in merged.items() if v is not None}
        command = ["bash", "-s"] if piped else ["bash", str(SCRIPT)]
        started = time.monotonic()
        with trio.fail_after(RUN_SECONDS):
            result = await trio.run_process(
                command,
                stdin=SCRIPT.read_bytes() if piped else subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=environment,
                cwd=self.root,
            )
        run = Run(
            status=result.returncode,
            stdout=result.stdout.decode(errors="replace"),
            stderr=result.stderr.decode(errors="replace"),
            seconds=time.monotonic() - started,
        )
        if (self.workspace / "pyworker.pid").exists():
            self.worker_pid()
        return run

    async def started(self, *, piped: bool = False, **env: str | None) -> Run:
        """:meth:`run`, which must launch a worker that listens."""
        run = await self.run(piped=piped, **env)
        assert run.status == 0, run
        assert "the worker runs (pid" in run.stdout, run
        assert is_worker(self.worker_pid()), run
        return run

    def reboot(self) -> None:
        """What a reboot does to the worker: it is gone, without warning."""
        _kill(self.worker_pid())
        assert not alive(self.worker_pid())

    def stop_all(self) -> None:
        pid_file = self.workspace / "pyworker.pid"
        if pid_file.exists():
            self.workers.add(int(pid_file.read_text()))
        for pid in self.workers:
            _kill(pid)


def stable_port() -> int:
    """A free port on 127.0.0.1 below the ephemeral range.

    The worker binds its port seconds after the test picks it (the script installs first), and
    again after each restart. A port of the ephemeral range (what binding port 0 gives) may be
    taken meanwhile by any outgoing connection on the machine (seen here, with other suites
    running); one below it only by a program that asks for it.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def clean_environment() -> dict[str, str]:
    """This process's environment without what the script must not inherit: Vast's and
    pyworker's variables, pip's and a venv's (``_VAST_VARIABLES``, ``_DROPPED_PREFIXES``)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _VAST_VARIABLES and not k.startswith(_DROPPED_PREFIXES)
    }


def make_instance(
    instances: list[Instance], tmp_path: Path, dependencies: Path, **env: str
) -> Instance:
    """An instance whose script installs offline and whose worker listens on 127.0.0.1 only."""
    port = stable_port()
    environment = {
        **clean_environment(),
        # The offline install (see the module's docstring), by the interpreter running the
        # tests, whose compiled packages the farm holds.
        "PYTHONPATH": str(dependencies),
        "PIP_CONFIG_FILE": os.devnull,  # no configured index or find-links either
        "PYWORKER_PYTHON": sys.executable,
        "PYWORKER_PIP_ARGS": "--no-index --no-build-isolation",
        # Everything the script writes stays in tmp_path.
        "WORKSPACE_DIR": str(tmp_path / "workspace"),
        "PYWORKER_ENV_FILE": str(tmp_path / "environment"),
        "PYWORKER_UPDATE_FLAG_FILE": str(tmp_path / "force_update"),
        "PYWORKER_SSL_CERTFILE": str(tmp_path / "tls" / "instance.crt"),
        "PYWORKER_SSL_KEYFILE": str(tmp_path / "tls" / "instance.key"),
        "PYWORKER_SIGN_CERT_URL": "http://127.0.0.1:9/never-used/",
        "PYWORKER_STATE_DIR": str(tmp_path / "state"),
        # The template's variables.
        "BACKEND": "hello_world",
        "MODEL_LOG": str(tmp_path / "model.log"),
        "WORKER_PORT": str(port),
        "WORKER_HTTP_PORT": str(stable_port()),
        "WORKER_HOST": "127.0.0.1",
        "PUBLIC_IPADDR": "127.0.0.1",
        "CONTAINER_ID": "7",
        "MASTER_TOKEN": MTOKEN,
        "USE_SSL": "false",
        "REPORT_ADDR": "http://127.0.0.1:9",
        # Quick to become ready, and to stop.
        "PYWORKER_BENCHMARK_RUNS": "2",
        "PYWORKER_DRAIN_TIMEOUT": "2",
        "PYWORKER_STOP_TIMEOUT": "15",
        "PYWORKER_START_TIMEOUT": "60",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    # Seeded: the worker is ready once the model is loaded, without benchmarking.
    seed_benchmark(tmp_path / "state", load_backend("hello_world"), max_perf=500.0, runs=2)
    instance = Instance(root=tmp_path, env=environment)
    instances.append(instance)
    return instance
