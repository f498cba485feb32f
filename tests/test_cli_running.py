"""``python -m pyworker`` running as a user runs it: a subprocess, from the repository root, with
a clean environment (no Vast variables) and its state directory in the test's tmp_path. The
demo (the client command it prints, a request in flight drained on SIGINT, SIGTERM and SIGHUP,
while loading too, its model server dying with it) and Vast mode (a chosen port, SIGTERM). The
command line's options and refusals are in ``test_cli.py``."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import attrs
import httpx
import trio
from fakes import REPO_ROOT
from harness import clean_env, eventually, seed_benchmark

from pyworker import load_backend

GUARD = 60  # seconds: the absolute bound on each demo test
STOP_WITHIN = 10  # seconds from the signal to every process gone


# -- the demo ------------------------------------------------------------------------------------


@attrs.define
class Demo:
    """A running ``python -m pyworker`` and what it printed on ``stream`` (its stdout, or its
    stderr for the log)."""

    process: trio.Process
    stream: trio.abc.ReceiveStream
    stderr_path: Path | None = None
    out: str = ""

    async def read_until(self, pattern: str) -> re.Match[str]:
        """Read the stream until ``pattern`` matches it (bounded by the test's guard)."""
        while (match := re.search(pattern, self.out, re.MULTILINE)) is None:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise AssertionError(
                    f"pyworker exited ({self.process.poll()}) before printing {pattern!r}:\n"
                    f"{self.out}\n{self.stderr()}"
                )
            self.out += chunk.decode()
        return match

    async def drain(self) -> None:
        while chunk := await self.stream.receive_some(65536):
            self.out += chunk.decode()

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""


async def _run_demo(tmp_path: Path, *, wait_ready: bool = True) -> tuple[Demo, int, int]:
    """Start the demo and wait until it is ready; returns it, the model server's pid and port.

    The benchmark is not the point here (the e2e tests cover it): it starts from a cached result.
    """
    seed_benchmark(tmp_path / "state", load_backend("hello_world"), max_perf=500.0)
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "pyworker", "--backend", "hello_world", "--port", "0"],
            cwd=REPO_ROOT,
            env=clean_env(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    demo = Demo(process=process, stream=process.stdout, stderr_path=stderr_path)
    model = await demo.read_until(r"demo model server: pid (\d+), http://127\.0\.0\.1:(\d+)")
    if wait_ready:
        await demo.read_until(r"^ready\.")
        await demo.read_until(r"-m pyworker\.client .*\n")
    return demo, int(model[1]), int(model[2])


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie no one has reaped yet counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


async def _stop(
    demo: Demo, signum: signal.Signals, model_pid: int, state: str = "ready", *, send: bool = True
) -> None:
    """Send ``signum`` (unless already sent) and check that everything stops, cleanly."""
    if send:
        demo.process.send_signal(signum)
    with trio.fail_after(STOP_WITHIN):
        await demo.drain()
        code = await demo.process.wait()
    assert code == 0, demo.stderr()
    assert _gone(model_pid), "the demo model server outlived the demo"
    assert f"state: {state} -> draining (shutdown)" in demo.out
    assert "state: draining -> stopped (drained)" in demo.out
    stderr = demo.stderr()
    assert f"{signum.name}: draining" in stderr
    assert "Traceback" not in stderr


async def _kill_if_running(demo: Demo, model_pid: int) -> None:
    # After a failed assertion: never leave processes behind.
    with trio.CancelScope(shield=True):
        if demo.process.poll() is None:
            demo.process.kill()
            await demo.process.wait()
        if not _gone(model_pid):
            os.kill(model_pid, signal.SIGKILL)
        await demo.stream.aclose()


async def test_demo_serves_the_printed_client_command_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    with trio.fail_after(GUARD):
        demo, model_pid, model_port = await _run_demo(tmp_path)
        try:
            command = re.search(r"^\s*(\S+ -m pyworker\.client .*)$", demo.out, re.MULTILINE)
            assert command is not None, demo.out
            argv = shlex.split(command[1])
            assert argv[1:3] == ["-m", "pyworker.client"]
            client = await trio.run_process(
                argv, cwd=REPO_ROOT, env=clean_env(tmp_path), capture_stdout=True, check=False
            )
            assert client.returncode == 0, client
            answer = client.stdout.decode()
            assert '"generated_tokens": 32' in answer
            stream_argv = [a if a != "/generate" else "/generate_stream" for a in argv]
            client = await trio.run_process(
                stream_argv, cwd=REPO_ROOT, env=clean_env(tmp_path), capture_stdout=True
            )
            assert len(client.stdout.split()) == 32  # the tokens' text, one word each
            assert b"data:" not in client.stdout
            await _stop(demo, signal.SIGTERM, model_pid)
            # The demo model server's port is free again.
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", model_port))
        finally:
            await _kill_if_running(demo, model_pid)


async def test_demo_drains_a_request_in_flight_on_sigint(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        demo, model_pid, _ = await _run_demo(tmp_path)
        try:
            worker_url = (await demo.read_until(r"^worker: (http://\S+)"))[1]
            command = re.search(r"^\s*(\S+ -m pyworker\.client .*)$", demo.out, re.MULTILINE)
            assert command is not None
            argv = shlex.split(command[1])
            argv[-1] = json.dumps({"prompt": "Hello", "max_response_tokens": 150})  # ~1.5 s
            results: list[subprocess.CompletedProcess[bytes]] = []

            async def client() -> None:
                results.append(
                    await trio.run_process(
                        argv, cwd=REPO_ROOT, env=clean_env(tmp_path), capture_stdout=True
                    )
                )

            async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
                nursery.start_soon(client)

                async def in_flight() -> bool:
                    status = (await http.get(worker_url + "/status")).json()
                    return bool(status["in_flight"] == 1)

                await eventually(in_flight, what="the request in flight")
                demo.process.send_signal(signal.SIGINT)
            [answer] = results
            assert answer.returncode == 0
            assert '"generated_tokens": 150' in answer.stdout.decode()
            await _stop(demo, signal.SIGINT, model_pid, send=False)
        finally:
            await _kill_if_running(demo, model_pid)


async def test_demo_stops_on_sigterm_while_loading(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        demo, model_pid, _ = await _run_demo(tmp_path, wait_ready=False)
        try:
            await demo.read_until(r"^worker: ")
            await _stop(demo, signal.SIGTERM, model_pid, state="loading")
            assert "ready." not in demo.out
        finally:
            await _kill_if_running(demo, model_pid)


async def test_demo_stops_on_sighup_like_sigterm(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        demo, model_pid, _ = await _run_demo(tmp_path)
        try:
            await _stop(demo, signal.SIGHUP, model_pid)
        finally:
            await _kill_if_running(demo, model_pid)


async def test_the_demo_model_server_dies_with_a_killed_demo(tmp_path: Path) -> None:
    """SIGKILL leaves the demo no chance to stop its model server: the server notices its
    parent is gone and stops by itself."""
    with trio.fail_after(GUARD):
        demo, model_pid, _ = await _run_demo(tmp_path, wait_ready=False)
        try:
            demo.process.kill()
            await demo.process.wait()
            # The server checks twice a second; the guard bounds the wait.
            await eventually(lambda: _gone(model_pid), what="the model server stopping")
        finally:
            await _kill_if_running(demo, model_pid)


async def test_vast_mode_serves_on_a_chosen_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    """With MODEL_LOG set the worker alone runs, against a model server that is not there yet;
    ``--port 0`` picks a port, and the URL it reports names that port."""
    env = clean_env(tmp_path, MODEL_LOG=str(tmp_path / "model.log"), CONTAINER_ID="5")
    argv = [sys.executable, "-m", "pyworker", "--backend", "hello_world", "--unsecured"]
    argv += ["--host", "127.0.0.1", "--port", "0"]
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
        log = Demo(process=process, stream=process.stderr)
        try:
            listening = await log.read_until(r"listening on (\S+) \(public URL (\S+)\)")
            assert listening[1] == listening[2], listening[0]
            assert "UNSECURED" in log.out
            async with httpx.AsyncClient() as http:
                assert (await http.get(listening[1] + "/ping")).text == "pong"
                status = (await http.get(listening[1] + "/status")).json()
                assert status["state"] == "loading"
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(STOP_WITHIN):
                await log.drain()
                assert await process.wait() == 0
            assert "state loading -> draining (shutdown)" in log.out
            assert "Traceback" not in log.out
        finally:
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.kill()
                    await process.wait()
                await log.stream.aclose()
