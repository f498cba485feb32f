"""The worker's own log: the JSON format, the access log, state changes and reports."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from fakes import REPO_ROOT
from harness import eventually, ready_stack

from pyworker._logs import ACCESS, JsonFormatter

GUARD = 30


def prompt(tokens: int) -> dict[str, object]:
    return {"prompt": "a secret prompt", "max_response_tokens": tokens}


def test_json_lines_carry_the_extra_fields_and_the_traceback() -> None:
    record = logging.makeLogRecord(
        {
            "name": "pyworker",
            "levelname": "INFO",
            "msg": "state %s -> %s",
            "args": ("loading", "benchmarking"),
            "created": 1_800_000_000.25,
            "msecs": 250.0,
            "dest": "benchmarking",
        }
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "state loading -> benchmarking"
    assert entry["dest"] == "benchmarking"
    assert (entry["level"], entry["logger"], entry["ts"]) == ("INFO", "pyworker", 1_800_000_000.25)
    assert entry["time"] == "2027-01-15T08:00:00.250Z"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exc"]


async def test_one_access_line_per_request_without_the_payload(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS.name)
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        assert (await stack.post("/generate", prompt(3))).status_code == 200
        assert (await stack.post("/generate", {"prompt": 5})).status_code == 422

        def access_lines() -> list[tuple[str, int, float]]:
            # The access line's fields are its record's ``extra=`` attributes, not LogRecord's.
            return [
                (vars(r)["route"], vars(r)["status"], vars(r)["workload"])
                for r in caplog.records
                if r.name == ACCESS.name
            ]

        # The line is written once the answer is out: a moment after the client has it.
        lines = await eventually(lambda: len(access_lines()) == 2 and access_lines())
    [(route, status, workload), refused] = lines
    assert (route, status) == ("/generate", 200)
    assert workload > 0
    assert refused == ("/generate", 422, 0.0)
    assert "secret" not in caplog.text


async def test_an_unsecured_worker_takes_a_request_without_auth_data(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, unsecured=True)
        response = await stack.http.post(stack.url + "/generate", json={"payload": prompt(3)})
        assert response.status_code == 200, response.text
        assert response.json()["generated_tokens"] == 3


async def test_json_log_format_from_the_command_line(tmp_path: Path) -> None:
    """Every line on stderr is one JSON object; the state change says where it went."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MODEL_LOG": str(tmp_path / "model.log"),
        "PYWORKER_STATE_DIR": str(tmp_path / "state"),
    }
    argv = [sys.executable, "-m", "pyworker", "--backend", "hello_world", "--unsecured"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--log-format", "json"]
    with trio.fail_after(GUARD):
        process = await trio.lowlevel.open_process(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        out = b""
        try:

            async def listening() -> bool:
                nonlocal out
                assert process.stderr is not None
                out += await process.stderr.receive_some()
                return b"listening on" in out

            await eventually(listening, what="the worker listening")
            process.terminate()
            while chunk := await process.stderr.receive_some():
                out += chunk
            assert await process.wait() == 0
        finally:
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.kill()
                    await process.wait()
    entries = [json.loads(line) for line in out.decode().splitlines() if line]
    assert {"ts", "time", "level", "logger", "message"} <= set(entries[0])
    changes = [e for e in entries if e.get("trigger") == "shutdown"]
    assert changes[0]["source"] == "loading"
    assert changes[0]["dest"] == "draining"
