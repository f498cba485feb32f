"""``start_server.sh``, the Vast template's start script, run as an instance runs it, in full:
against a fake model server and a stand-in autoscaler.

Each test gives the script a workspace of its own in ``tmp_path`` and lets it do everything it
does on an instance: create the venv, install pyworker into it with pip (offline, see
``start_server_harness.py``), start the worker in the background, in front of a fake model
server and reporting to a stand-in autoscaler; then runs it again, as a reboot (or a restart)
would. A first boot, a restart and a reboot; piped to bash, the clone and the rolling update;
USE_SSL and the console's certificate. The settings the script refuses, before any install, are
in ``test_start_server_refusals.py``.

Every worker the script starts is killed when its test ends, passed or failed (the PID file).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fakes import REPO_ROOT, FakeServer, spawn_fake
from harness import shared_signer
from start_server_harness import (
    MTOKEN,
    RUN_SECONDS,
    Instance,
    Run,
    alive,
    clean_environment,
    is_worker,
    make_instance,
    needs_linux_bash,
    stable_port,
)

from pyworker.devtools import StandIn, serve_standin

FAKE = "backends.hello_world.server"
READY_SECONDS = 30.0
REBOOT_SECONDS = 10.0
"""The most a second start, with the venv already installed, may take (~1 s here)."""

pytestmark = needs_linux_bash


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
    assert is_worker(old)
    assert instance.worker_pid() == old

    # A run while the worker runs (a restart, not a reboot): the model server runs on, so its
    # log, ready line included, stays where it is, and the new worker is ready from it.
    restarted = await instance.started()
    assert "installed and unchanged" in restarted.stdout
    assert instance.worker_pid() != old
    assert not alive(old)
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
        **clean_environment(),
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
    assert not alive(old)
    stamp = text(instance.venv / ".pyworker-installed")
    assert f"commit {new_commit}" in stamp

    # A later boot runs the clone's own copy, as a template's on-start does once the clone
    # exists: the same code, so nothing to do but start.
    instance.reboot()
    again = await _run_file(instance, clone / "start_server.sh")
    assert again.status == 0, again
    assert f"code: the checkout this script is in, {clone}" in again.stdout
    assert "installed and unchanged" in again.stdout
    assert is_worker(instance.worker_pid())


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
    assert is_worker(running)


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
