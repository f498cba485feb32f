"""``python -m pyworker``'s command line as a user runs it: a subprocess, from the repository
root, with a clean environment (no Vast variables) and its state directory in the test's
tmp_path. Its options and their environment variables, ``--help``, ``--list-backends``, a bad
configuration or a port in use refused in one line, the fallback to the demo. The demo and Vast
mode running, and stopping on signals, are in ``test_cli_running.py``."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import REPO_ROOT
from harness import clean_env

OPTIONS = (
    "--backend",
    "--demo",
    "--host",
    "--port",
    "--model-log",
    "--model-server-url",
    "--report-addr",
    "--container-id",
    "--public-url",
    "--unsecured",
    "--pubkey-url",
    "--pubkey-file",
    "--only-2024-signatures",
    "--max-queue-time",
    "--max-body-bytes",
    "--read-timeout",
    "--drain-timeout",
    "--health-interval",
    "--force-benchmark",
    "--benchmark-runs",
    "--state-dir",
    "--log-level",
    "--list-backends",
)


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyworker", *args],
        cwd=REPO_ROOT,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyworker: error: "), result.stderr
    for word in words:
        assert word in lines[0]
    assert result.stdout == ""


def test_help_lists_every_option(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert re.search(rf"^\s+{option}\b", result.stdout, re.MULTILINE), option
    assert "hello_world" in result.stdout


def test_list_backends(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--list-backends")
    assert result.returncode == 0
    assert "hello_world" in result.stdout.split()


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (("--backend", "no_such_backend"), {}, ("unknown backend", "no_such_backend")),
        ((), {}, ("no backend",)),
        (("--backend", "hello_world", "--bogus"), {}, ("--bogus",)),
        (("--backend", "hello_world", "--port", "abc"), {}, ("--port", "abc")),
        (("--backend", "hello_world", "--port", "70000"), {}, ("70000", "range")),
        (("--backend", "hello_world", "--benchmark-runs", "-1"), {}, ("benchmark-runs",)),
        (("--backend", "hello_world", "--read-timeout", "0"), {}, ("read-timeout",)),
        (("--backend", "hello_world"), {"WORKER_PORT": "x"}, ("WORKER_PORT",)),
        (("--backend", "hello_world"), {"MODEL_LOG": "/tmp/m.log"}, ("public URL",)),
        (
            ("--backend", "hello_world"),
            {"MODEL_LOG": "/tmp/m.log", "PUBLIC_IPADDR": "1.2.3.4"},
            ("public key",),
        ),
        (
            ("--backend", "hello_world"),
            {"MODEL_LOG": "/tmp/m.log", "REPORT_ADDR": "ftp://x"},
            ("REPORT_ADDR",),
        ),
        (("--backend", "hello_world", "--report-addr", "http://127.0.0.1:9"), {}, ("model log",)),
        (
            ("--backend", "hello_world"),
            {
                "MODEL_LOG": "/tmp/m.log",
                "UNSECURED": "true",
                "USE_SSL": "true",
                "PYWORKER_SSL_CERTFILE": "/nonexistent/w.crt",
            },
            ("USE_SSL", "/nonexistent/w.crt"),
        ),
        (
            ("--backend", "hello_world", "--ssl-keyfile", "/nonexistent/w.key"),
            {
                "MODEL_LOG": "/tmp/m.log",
                "UNSECURED": "true",
                "USE_SSL": "true",
                "PYWORKER_SSL_CERTFILE": "pyproject.toml",  # any file that exists
            },
            ("USE_SSL", "/nonexistent/w.key"),
        ),
    ],
    ids=[
        "unknown-backend",
        "no-backend",
        "unknown-option",
        "bad-port",
        "port-out-of-range",
        "negative-benchmark-runs",
        "zero-timeout",
        "bad-WORKER_PORT",
        "MODEL_LOG-without-public-URL",
        "MODEL_LOG-without-key",
        "bad-REPORT_ADDR",
        "no-MODEL_LOG",
        "USE_SSL-certificate-missing-at-PYWORKER_SSL_CERTFILE",
        "USE_SSL-key-missing-at---ssl-keyfile",
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], words: tuple[str, ...]
) -> None:
    assert_one_line_error(run_cli(tmp_path, *args, **env), *words)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = run_cli(tmp_path, "--backend", "hello_world", "--port", str(busy_port))
    assert_one_line_error(result, "in use", str(busy_port))
    result = run_cli(
        tmp_path,
        "--backend",
        "hello_world",
        "--unsecured",
        "--host",
        "127.0.0.1",
        MODEL_LOG=str(tmp_path / "m.log"),
        WORKER_PORT=str(busy_port),
    )
    assert_one_line_error(result, "in use", str(busy_port))


def test_every_option_reads_its_environment_variable_when_not_given() -> None:
    from pyworker._cli import build_parser
    from pyworker._config import ENV_OPTIONS, apply_env_options

    env = {
        "PYWORKER_MAX_QUEUE_TIME": "7.5",
        "PYWORKER_FORCE_BENCHMARK": "true",
        "PYWORKER_BENCHMARK_RUNS": "3",
        "PYWORKER_DEMO": "0",
    }
    args = build_parser(env).parse_args(["--backend", "hello_world", "--benchmark-runs", "5"])
    apply_env_options(args, env)
    assert (args.max_queue_time, args.force_benchmark, args.demo) == (7.5, True, False)
    assert args.benchmark_runs == 5  # the command line wins
    help_text = build_parser({}).format_help()
    for variable, _ in ENV_OPTIONS.values():
        assert f"[{variable}]" in help_text.replace("\n", " ").replace("  ", " ")


def test_the_fallback_to_the_demo_says_why() -> None:
    from pyworker._cli import build_parser
    from pyworker._config import demo_reason, load_config

    def reason(env: dict[str, str], *argv: str) -> tuple[bool, str]:
        args = build_parser(env).parse_args(["--backend", "hello_world", *argv])
        _, demo = load_config(args, env)
        return demo, demo_reason(args, env)

    demo, why = reason({})
    assert demo
    assert why.startswith("no MODEL_LOG or REPORT_ADDR")
    assert "Vast instance" not in why
    # A Vast instance whose template forgot MODEL_LOG: the line says what to set.
    demo, why = reason({"WORKER_PORT": "3000", "CONTAINER_ID": "9"})
    assert demo
    assert "WORKER_PORT, CONTAINER_ID are set" in why
    assert "set MODEL_LOG" in why
    assert reason({}, "--demo")[1] == "running the local demo (--demo)"
