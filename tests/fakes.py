"""Start fake model servers as real subprocesses, for tests and benchmarks (and what the fake
ComfyUI's tests share: starting it, a client, workflows it runs, with or without a model, and
waiting for a prompt's history; what the fake TGI's share: starting it, a request, the backend
that reads its log; what the fake OpenAI-compatible servers' share: their model, their ready
lines, a chat request, a quick start, their SSE framing).

A fake is a module run as ``python -m MODULE --port 0 --port-file F --log L [args]`` (see
:mod:`backends._fakekit`). The process is owned by a task in the caller's nursery: when that
nursery is cancelled (pytest-trio's ``nursery`` fixture is, at the end of each test) the
process gets SIGTERM, then SIGKILL if it is still alive five seconds later. :meth:`aclose`
does the same on demand.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from backends.comfyui import text_to_image_workflow
from backends.tgi import make_backend as make_tgi_backend

REPO_ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 30.0
"""How long :func:`start_fake` waits for the fake to listen."""
POLL_SECONDS = 5.0
"""How long :func:`poll_stats` waits for its condition."""
_POLL_INTERVAL = 0.01
_KILL_AFTER_SECONDS = 5.0


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for a fake told which port to bind)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def accepts(port: int) -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection now."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def close_when_cancelled(client: httpx.AsyncClient) -> None:
    """Keep ``client`` open until this task is cancelled (start it in the test's nursery)."""
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()


def unused_http() -> httpx.AsyncClient:
    """A client for a :class:`pyworker._model.ModelServer` whose ``http`` nothing should use (no
    backend ``run`` in the test): a request through it fails the test."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request through ModelServer.http: {request.url}")

    return httpx.AsyncClient(transport=httpx.MockTransport(refuse))


async def get_stats(client: httpx.AsyncClient) -> dict[str, Any]:
    """A fake's counters (its fake-only ``GET /stats``), ``client`` having its base URL."""
    stats: dict[str, Any] = (await client.get("/stats")).json()
    return stats


async def poll_stats(client: httpx.AsyncClient, name: str, at_least: int) -> dict[str, Any]:
    """Poll a fake's ``GET /stats`` until counter ``name`` reaches ``at_least``; returns them.

    Raises:
        trio.TooSlowError: not within :data:`POLL_SECONDS`.
    """
    with trio.fail_after(POLL_SECONDS):
        while True:
            stats = await get_stats(client)
            if stats[name] >= at_least:
                return stats
            await trio.sleep(_POLL_INTERVAL)


class FakeExitedError(RuntimeError):
    """The fake exited before it did what was awaited."""


@attrs.define(eq=False)
class FakeServer:
    """A fake model server process.

    Attributes:
        process: the running process.
        log_path: its log file (its stdout and stderr go there too).
        port_file: where it writes its port once listening.
        port: the bound port, once known (see :meth:`wait_listening`).
    """

    process: trio.Process
    log_path: Path
    port_file: Path
    port: int | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: the port is not known yet.
        """
        if self.port is None:
            raise RuntimeError("the fake is not listening yet; await wait_listening()")
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """The log so far ("" if the file does not exist yet)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _read_port(self) -> int | None:
        try:
            text = self.port_file.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        # The fake writes the file atomically, so a present file is complete.
        return int(text)

    async def wait_listening(self) -> int:
        """Wait until the fake listens (its port file appears); returns the port.

        An external process gives no other signal, so this polls the file briefly.

        Raises:
            FakeExitedError: the process exited first.
        """
        while True:
            port = self._read_port()
            if port is not None:
                self.port = port
                return port
            if self.process.poll() is not None:
                raise FakeExitedError(
                    f"fake exited with {self.process.returncode} before listening; "
                    f"log:\n{self.log_text()}"
                )
            await trio.sleep(_POLL_INTERVAL)

    async def wait_for_log(self, substring: str) -> str:
        """Wait until a log line contains ``substring``; returns that line.

        Raises:
            FakeExitedError: the process exited without logging it.
        """
        while True:
            exited = self.process.poll() is not None
            for line in self.log_text().splitlines():
                if substring in line:
                    return line
            if exited:
                raise FakeExitedError(
                    f"fake exited with {self.process.returncode} without logging "
                    f"{substring!r}; log:\n{self.log_text()}"
                )
            await trio.sleep(_POLL_INTERVAL)

    async def wait(self) -> int:
        """Wait for the process to exit; returns its exit status."""
        return await self.process.wait()

    async def aclose(self) -> None:
        """Stop the process: SIGTERM, then SIGKILL if it lingers. Safe to call twice."""
        with trio.CancelScope(shield=True):
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                with trio.move_on_after(_KILL_AFTER_SECONDS):
                    await self.process.wait()
                if self.process.poll() is None:
                    self.process.kill()
            await self.process.wait()


def fake_command(module: str, *args: str, log_path: Path, port_file: Path) -> list[str]:
    """The command line that runs fake ``module`` on an ephemeral port."""
    return [
        sys.executable,
        "-m",
        module,
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--log",
        str(log_path),
        *args,
    ]


async def spawn_fake(
    nursery: trio.Nursery, module: str, *args: str, log_path: Path | str
) -> FakeServer:
    """Start fake ``module`` and return at once, without waiting for it to listen.

    For tests of loading, load failures and slow starts; :meth:`FakeServer.wait_listening`
    finishes the job. The process belongs to ``nursery``: cancelling it terminates the
    process (SIGTERM, then SIGKILL after five seconds).

    Args:
        nursery: owns the process.
        module: the fake's module, e.g. ``"backends.hello_world.server"``.
        *args: further command-line arguments (knobs).
        log_path: the fake's log file; its port file is written beside it.
    """
    log_path = Path(log_path)
    port_file = log_path.with_name(log_path.name + ".port")
    port_file.unlink(missing_ok=True)
    command = fake_command(module, *args, log_path=log_path, port_file=port_file)
    # check=False: an exit status of 1 is often what a test waits for (fail-load, crash).
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            command,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            # The fake stops by itself should this process be killed (see _fakekit).
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYWORKER_PARENT_PID": str(os.getpid())},
        )
    )
    return FakeServer(process=process, log_path=log_path, port_file=port_file)


async def start_fake(
    nursery: trio.Nursery, module: str, *args: str, log_path: Path | str
) -> FakeServer:
    """Start fake ``module`` and wait until it listens (at most :data:`START_SECONDS`).

    Args:
        nursery: owns the process (see :func:`spawn_fake`).
        module: the fake's module, e.g. ``"backends.hello_world.server"``.
        *args: further command-line arguments (knobs).
        log_path: the fake's log file.

    Returns:
        The running fake, with :attr:`FakeServer.url` set.

    Raises:
        FakeExitedError: the fake exited before listening.
        trio.TooSlowError: it did not listen within :data:`START_SECONDS`.
    """
    fake = await spawn_fake(nursery, module, *args, log_path=log_path)
    try:
        with trio.fail_after(START_SECONDS):
            await fake.wait_listening()
    except BaseException:
        await fake.aclose()
        raise
    return fake


@asynccontextmanager
async def fake_client(
    fake: FakeServer, *, http_timeout: float = 5.0
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``fake``'s URL (``http_timeout`` seconds, no proxy from the environment)."""
    async with httpx.AsyncClient(
        base_url=fake.url, timeout=http_timeout, trust_env=False
    ) as client:
        yield client


# -- the fake ComfyUI ---------------------------------------------------------------------------

COMFYUI_FAKE = "backends.comfyui.fake"


async def start_fake_comfyui(nursery: trio.Nursery, tmp_path: Path, *args: str) -> FakeServer:
    """The fake ComfyUI, loaded at once, logging to ``tmp_path/comfyui.log``; ``args``: knobs."""
    return await start_fake(
        nursery, COMFYUI_FAKE, "--load-delay", "0", *args, log_path=tmp_path / "comfyui.log"
    )


def empty_image_workflow(
    batch: int = 2, color: int = 0x3366FF, *, width: int = 48, height: int = 40
) -> dict[str, Any]:
    """A ComfyUI workflow the fake runs without a model, in milliseconds: ``batch`` images of one
    ``color``."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t", "images": ["1", 0]}},
    }


def txt2img_workflow(steps: int = 3, seed: int = 7, size: int = 64) -> dict[str, Any]:
    """The backend's text-to-image workflow: "a fox", ``steps`` sampling steps, ``size`` square."""
    return text_to_image_workflow(prompt="a fox", width=size, height=size, steps=steps, seed=seed)


async def comfyui_history(client: httpx.AsyncClient, prompt_id: str) -> dict[str, Any]:
    """Poll until the prompt has a history entry (at most 10 s); returns the entry."""
    with trio.fail_after(10):
        while True:
            history = (await client.get(f"/history/{prompt_id}")).json()
            if history:
                entry: dict[str, Any] = history[prompt_id]
                return entry
            await trio.sleep(0.02)


# -- the fake TGI -------------------------------------------------------------------------------

TGI_FAKE = "backends.tgi.fake"
TGI_BACKEND = make_tgi_backend({})
"""The TGI backend with every setting at its default (its rules read the fake's log)."""
TGI_PROMPT = "What is deep learning?"
"""The prompt of :func:`tgi_body`."""


async def start_fake_tgi(nursery: trio.Nursery, tmp_path: Path, *args: str) -> FakeServer:
    """The fake TGI, loaded at once, logging to ``tmp_path/tgi.log``; ``args``: knobs."""
    return await start_fake(
        nursery, TGI_FAKE, "--load-delay", "0", *args, log_path=tmp_path / "tgi.log"
    )


def tgi_body(max_new_tokens: int | None = 5, **parameters: Any) -> dict[str, Any]:
    """A TGI request for :data:`TGI_PROMPT`: ``max_new_tokens`` and further ``parameters``."""
    return {"inputs": TGI_PROMPT, "parameters": {"max_new_tokens": max_new_tokens, **parameters}}


# -- the fake OpenAI-compatible servers ---------------------------------------------------------

OPENAI_FAKE = "backends.openai.fake"
OPENAI_MODEL = "fake-org/Fake-Llama-3-8B-Instruct"
"""The model the fake serves unless told another."""
OPENAI_READY = {
    "vllm": "Application startup complete.",
    "sglang": "The server is fired up and ready to roll!",
    "llamacpp": "srv  llama_server: server is listening on",
}
"""Each flavor's line saying it is ready to serve."""
OPENAI_CHAT = {
    "messages": [{"role": "user", "content": "Say hello to the world."}],
    "max_tokens": 4,
}


def openai_fast(flavor: str) -> tuple[str, ...]:
    """The arguments of a ``flavor`` fake that starts at once."""
    return ("--flavor", flavor, "--load-delay", "0", "--warmup", "0")


def openai_events(raw: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE body, checking each event's exact framing."""
    events = raw.split(b"\n\n")
    assert events[-1] == b"", "the stream must end with a complete event"
    payloads = []
    for event in events[:-1]:
        assert event.startswith(b"data: "), event  # with a space, as the real servers
        payloads.append(event.removeprefix(b"data: "))
    return payloads
