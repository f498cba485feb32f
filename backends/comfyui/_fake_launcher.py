"""How the fake ComfyUI starts and stops, as ComfyUI's ``main.py`` logs it.

Its start-up lines (devices, versions, custom node imports) are spread over ``--load-delay``
with nothing listening; then ``Starting server``, the port is bound, and ComfyUI's ready line
``To see the GUI go to: http://HOST:PORT`` follows. ComfyUI's log is bare ``%(message)s``
lines on stderr.

``--fail-load REASON`` ends the start with exit status 1: ``cuda`` is torch built without
CUDA (its traceback), ``port`` is the port already in use (ComfyUI's line for it), and any
other text is the last line of a start-up traceback.
"""

from __future__ import annotations

import signal
import sys

import attrs

from backends._fakekit import Knobs, Launch, LogWriter, StartupFailed

from ._fake_app import VERSION, FakeComfyUI
from ._fake_engine import Engine

_STARTUP_LINES = (
    "Total VRAM 24564 MB, total RAM 64228 MB",
    "pytorch version: 2.5.1+cu124",
    "Set vram state to: NORMAL_VRAM",
    "Device: cuda:0 Fake GPU 24GB : cudaMallocAsync",
    "Using pytorch attention",
    f"Python version: {sys.version.split()[0]}",
    f"ComfyUI version: {VERSION}",
    "[Prompt Server] web root: /ComfyUI/web",
    "",
    "Import times for custom nodes:",
    "   0.0 seconds: /ComfyUI/custom_nodes/websocket_image_save.py",
    "",
)
_TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/ComfyUI/main.py", line 132, in <module>',
    "    import execution",
)
_NO_CUDA = (
    *_TRACEBACK,
    '  File "/ComfyUI/comfy/model_management.py", line 190, in get_torch_device',
    "    return torch.device(torch.cuda.current_device())",
    '  File "/usr/lib/python3/site-packages/torch/cuda/__init__.py", line 310, in _lazy_init',
    '    raise AssertionError("Torch not compiled with CUDA enabled")',
    "AssertionError: Torch not compiled with CUDA enabled",
)
# aiohttp's default: ComfyUI keeps idle keep-alive connections for 75 s (hypercorn: 5 s).
_KEEP_ALIVE_SECONDS = 75.0


def _fatal_lines(knobs: Knobs, reason: str) -> tuple[str, ...]:
    if reason == "cuda":
        return _NO_CUDA
    if reason == "port":
        return (_port_in_use(knobs),)
    return (*_TRACEBACK, reason)


def _port_in_use(knobs: Knobs) -> str:
    return (
        f"Port {knobs.port} is already in use on address {knobs.host}. Please close the other "
        "application or use a different port with --port."
    )


@attrs.define(eq=False)
class Launcher:
    """ComfyUI's start-up and shutdown (the kit's :class:`~backends._fakekit.Fake`).

    Attributes:
        engine: the queue and executor, started once the server listens.
        log: the server's log (bare lines).
    """

    engine: Engine
    log: LogWriter

    async def start(self, launch: Launch) -> None:
        """Start-up lines over the load delay, then serve the app and log the ready line."""
        log, knobs = self.log, launch.knobs
        for line in _STARTUP_LINES:
            log.info(line)
            await launch.load(1 / len(_STARTUP_LINES))
        if knobs.fail_load is not None:
            for line in _fatal_lines(knobs, knobs.fail_load):
                log.error(line)
            raise StartupFailed(knobs.fail_load)
        log.info("Starting server")
        log.info("")
        engine = self.engine
        # The executor runs from before the port opens, as ComfyUI's prompt worker does.
        launch.start_soon(engine.run)
        app = FakeComfyUI(engine=engine, faults=engine.faults, log=log, host=knobs.host)
        await launch.listen_asgi(
            app,
            on_bind_error=lambda exc: log.error(_port_in_use(knobs)),
            keep_alive_timeout=_KEEP_ALIVE_SECONDS,
        )
        log.info(f"To see the GUI go to: http://{knobs.host}:{launch.port}")

    def stopping(self, signum: signal.Signals) -> None:
        """ComfyUI logs nothing when a signal stops it."""
