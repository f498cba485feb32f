"""A fake ComfyUI: its HTTP API, websocket, queue and log lines, with no model and no GPU.

``python -m backends.comfyui.fake --port P --log PATH [knobs]`` (``--help`` lists the knobs).
Nothing listens while it "imports custom nodes" (``--load-delay``); once the port accepts, it
logs ComfyUI's ready line ``To see the GUI go to: http://HOST:PORT``. Served (also under
``/api/...``), as ComfyUI serves them (see ``shared/spec/model-servers.md`` §5):

* ``POST /prompt`` (validation, 400 ``no_prompt`` / ``invalid_prompt`` / ``invalid_prompt_id``
  / ``prompt_outputs_failed_validation``), ``GET /prompt``;
* ``GET|POST /queue``, ``POST /interrupt``, ``GET|POST /history``, ``GET /history/{id}``;
* ``GET /view`` (real PNGs, sized from the workflow, coloured from the seed);
* ``GET /ws?clientId=`` (``status``, ``execution_start``, ``execution_cached``,
  ``executing``, ``progress``, ``executed``, ``execution_success`` / ``_error`` /
  ``_interrupted``, ``executing {"node": null}``);
* ``GET /system_stats``, ``GET /object_info[/{class}]``, ``GET /models[/{folder}]``;
* ``GET /stats`` (fake-only): counters of :class:`~backends.comfyui._engine.Stats`, plus the
  running prompt and pending count.

Nodes: ``CheckpointLoaderSimple``, ``CLIPTextEncode``, ``EmptyLatentImage``, ``KSampler``,
``VAEDecode``, ``EmptyImage``, ``SaveImage``, ``PreviewImage``. Built on hypercorn with a raw
ASGI app, since the fake kit's HTTP server has no websockets; the log has ComfyUI's bare
``%(message)s`` lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from typing import Any, TextIO, cast
from urllib.parse import parse_qsl

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from backends._fakekit import count, fraction, non_negative, write_port_file

from ._engine import Engine, EngineSettings

DEFAULT_PORT = 8188
DEFAULT_CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors")
VERSION = "0.3.60"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- knobs ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Knobs:
    """How the fake behaves (see :func:`parser` for each flag)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    port_file: str | None = None
    log: str | None = None
    load_delay: float = 2.0
    fail_load: str | None = None
    step_time: float = 0.005
    node_failure_rate: float = 0.0
    fail_on_text: str | None = None
    hang_after: int | None = None
    crash_after: int | None = None
    slow_health: float = 0.0
    previews: bool = False
    seed: int = 0
    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS

    def engine_settings(self) -> EngineSettings:
        """The executor's part of the knobs."""
        return EngineSettings(
            checkpoints=self.checkpoints,
            step_time=self.step_time,
            node_failure_rate=self.node_failure_rate,
            fail_on_text=self.fail_on_text,
            hang_after=self.hang_after,
            crash_after=self.crash_after,
            previews=self.previews,
            seed=self.seed,
        )


def _default_checkpoints() -> str:
    # The model a Vast template asks for is "installed" too.
    model = os.environ.get("COMFY_MODEL")
    names = [*DEFAULT_CHECKPOINTS, *([model] if model and model not in DEFAULT_CHECKPOINTS else [])]
    return ",".join(names)


def parser() -> argparse.ArgumentParser:
    """The fake's command line."""
    p = argparse.ArgumentParser(description="a fake ComfyUI server (no model, no GPU)")
    add = p.add_argument
    add("--host", "--listen", default="127.0.0.1", help="address to bind (%(default)s)")
    add("--port", type=int, default=DEFAULT_PORT, help="port, 0 for any (%(default)s)")
    add("--port-file", help="once listening, write the bound port to this file")
    add("--log", help="append log lines to this file, with stdout and stderr (default: stderr)")
    add(
        "--load-delay",
        type=non_negative,
        default=2.0,
        metavar="S",
        help="seconds of start-up (custom node imports) before listening (%(default)s)",
    )
    add(
        "--fail-load",
        choices=("cuda", "port"),
        help="die at start-up, exit 1: 'cuda' (torch without CUDA) or 'port' (port in use)",
    )
    add(
        "--step-time",
        type=non_negative,
        default=0.005,
        metavar="S",
        help="seconds per sampler step of a 512x512 image; larger images take longer (%(default)s)",
    )
    add(
        "--node-failure-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of prompts whose sampler raises (execution_error), per --seed",
    )
    add(
        "--fail-on-text",
        metavar="TEXT",
        help="prompts whose CLIPTextEncode text contains TEXT fail in the sampler",
    )
    add("--hang-after", type=count, metavar="N", help="samplers stall after N steps")
    add("--crash-after", type=count, metavar="N", help="exit 1 when a sampler reaches step N")
    add(
        "--slow-health",
        type=non_negative,
        default=0.0,
        metavar="S",
        help="seconds GET /system_stats takes",
    )
    add("--previews", action="store_true", help="send binary preview frames on the websocket")
    add("--seed", type=int, default=0, help="seed of the injected failures")
    add(
        "--checkpoints",
        default=_default_checkpoints(),
        help="comma-separated installed checkpoints (%(default)s)",
    )
    return p


def parse_knobs(argv: Sequence[str] | None = None) -> Knobs:
    """Parse the command line (``sys.argv[1:]`` by default).

    Raises:
        SystemExit: bad arguments, or ``--help``.
    """
    args = parser().parse_args(argv)
    values = vars(args)
    values["checkpoints"] = tuple(c for c in args.checkpoints.split(",") if c)
    return Knobs(**values)


# -- the log --------------------------------------------------------------------------------
@attrs.define(eq=False)
class PlainLog:
    """ComfyUI's log: bare message lines, flushed one by one."""

    _stream: TextIO
    _owns_stream: bool = False

    @classmethod
    def open(cls, path: str | None) -> PlainLog:
        """Append to ``path``, or write to standard error when None."""
        if path is None:
            return cls(sys.stderr)
        return cls(open(path, "a", buffering=1, encoding="utf-8"), owns_stream=True)

    def redirect_std_streams(self) -> None:
        """Send file descriptors 1 and 2 to the log too (tracebacks, stray prints)."""
        if self._owns_stream:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self._stream.fileno(), 1)
            os.dup2(self._stream.fileno(), 2)

    def write(self, message: str) -> None:
        """Append one line."""
        self._stream.write(message + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Close the file (standard error stays open)."""
        if self._owns_stream:
            self._stream.close()


# -- HTTP -----------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class _Request:
    method: str
    parts: tuple[str, ...]
    query: dict[str, str]
    body: bytes


@attrs.frozen
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def json(cls, obj: object, status: int = 200) -> _Response:
        return cls(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    @classmethod
    def text(cls, status: int, text: str) -> _Response:
        return cls(status, text.encode())


class _ServerError(Exception):
    """The handler raised: aiohttp answers a plain-text 500."""


_SERVER_ERROR = _Response.text(500, "500 Internal Server Error\n\nServer got itself in trouble")
_Handler = Callable[[_Request], Awaitable[_Response]]


def _json_body(body: bytes, *, empty: object = None) -> object:
    if not body.strip():
        return empty
    try:
        return json.loads(body)
    except ValueError:
        raise _ServerError from None


@attrs.define(eq=False)
class FakeComfyUI:
    """The fake's ASGI application.

    Args:
        engine: the queue, executor and history.
        knobs: health delay and the like.
    """

    engine: Engine
    knobs: Knobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        request = _Request(
            method=scope["method"],
            parts=_parts(scope["path"]),
            query=dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)),
            body=b"".join(chunks),
        )
        response = await self._dispatch(request)
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *response.headers,
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})

    async def _dispatch(self, request: _Request) -> _Response:
        handlers = self._handlers(request.parts)
        if handlers is None:
            return _Response.text(404, "404: Not Found")
        handler = handlers.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allow = ", ".join(sorted(handlers)).encode()
            return attrs.evolve(
                _Response.text(405, "405: Method Not Allowed"), headers=((b"allow", allow),)
            )
        try:
            return await handler(request)
        except _ServerError:
            return _SERVER_ERROR

    def _handlers(self, parts: tuple[str, ...]) -> dict[str, _Handler] | None:
        match parts:
            case ():
                return {"GET": self._index}
            case ("system_stats",):
                return {"GET": self._system_stats}
            case ("object_info",) | ("object_info", _):
                return {"GET": self._object_info}
            case ("models",) | ("models", _):
                return {"GET": self._models}
            case ("prompt",):
                return {"GET": self._get_prompt, "POST": self._post_prompt}
            case ("queue",):
                return {"GET": self._get_queue, "POST": self._post_queue}
            case ("interrupt",):
                return {"POST": self._interrupt}
            case ("history",):
                return {"GET": self._get_history, "POST": self._post_history}
            case ("history", _):
                return {"GET": self._get_history_entry}
            case ("view",):
                return {"GET": self._view}
            case ("stats",):
                return {"GET": self._stats}
        return None

    async def _index(self, request: _Request) -> _Response:
        return _Response(200, b"<!DOCTYPE html><title>ComfyUI</title>", "text/html")

    async def _system_stats(self, request: _Request) -> _Response:
        if self.knobs.slow_health:
            await trio.sleep(self.knobs.slow_health)
        gib = 1024**3
        return _Response.json(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 64 * gib,
                    "ram_free": 48 * gib,
                    "comfyui_version": VERSION,
                    "python_version": sys.version,
                    "pytorch_version": "2.5.1+cu124",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", self.knobs.host],
                },
                "devices": [
                    {
                        "name": "cuda:0 Fake GPU 24GB : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 24 * gib,
                        "vram_free": 20 * gib,
                        "torch_vram_total": 2 * gib,
                        "torch_vram_free": gib,
                    }
                ],
            }
        )

    async def _object_info(self, request: _Request) -> _Response:
        classes = self.engine.classes
        if len(request.parts) == 2:
            spec = classes.get(request.parts[1])
            return _Response.json({spec.name: spec.object_info()} if spec else {})
        return _Response.json({name: spec.object_info() for name, spec in classes.items()})

    async def _models(self, request: _Request) -> _Response:
        folders = {"checkpoints": list(self.knobs.checkpoints), "loras": [], "vae": []}
        if len(request.parts) == 1:
            return _Response.json(list(folders))
        models = folders.get(request.parts[1])
        if models is None:
            return _Response.text(404, "404: Not Found")
        return _Response.json(models)

    async def _get_prompt(self, request: _Request) -> _Response:
        return _Response.json({"exec_info": {"queue_remaining": self.engine.queue_remaining}})

    async def _post_prompt(self, request: _Request) -> _Response:
        status, answer = self.engine.submit(_json_body(request.body))
        return _Response.json(answer, status=status)

    async def _get_queue(self, request: _Request) -> _Response:
        return _Response.json(self.engine.queue())

    async def _post_queue(self, request: _Request) -> _Response:
        self.engine.change_queue(_json_body(request.body))
        return _Response(200)

    async def _interrupt(self, request: _Request) -> _Response:
        self.engine.interrupt(_json_body(request.body, empty={}))
        return _Response(200)

    async def _get_history(self, request: _Request) -> _Response:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", -1))
        except ValueError:
            raise _ServerError from None
        return _Response.json(self.engine.get_history(max_items, offset))

    async def _post_history(self, request: _Request) -> _Response:
        self.engine.change_history(_json_body(request.body))
        return _Response(200)

    async def _get_history_entry(self, request: _Request) -> _Response:
        prompt_id = request.parts[1]
        entry = self.engine.history.get(prompt_id)
        return _Response.json({prompt_id: entry} if entry is not None else {})

    async def _view(self, request: _Request) -> _Response:
        query = request.query
        if "filename" not in query:
            return _Response(404)
        filename = query["filename"]
        if not filename or filename.startswith("/") or ".." in filename:
            return _Response(400)
        kind = query.get("type", "output")
        if kind not in {"output", "temp", "input"}:
            return _Response(400)
        subfolder = query.get("subfolder", "")
        if subfolder.startswith("/") or ".." in subfolder.split("/"):
            return _Response(403)
        saved = self.engine.files.get((kind, subfolder, filename))
        if saved is None:
            return _Response(404)
        # Encoding a large image takes a while: keep the server responsive meanwhile.
        data = await trio.to_thread.run_sync(saved.png)
        disposition = f'filename="{filename}"'.encode()
        return _Response(200, data, "image/png", ((b"content-disposition", disposition),))

    async def _stats(self, request: _Request) -> _Response:
        engine = self.engine
        running = engine.running.prompt_id if engine.running is not None else None
        pending = engine.queue_remaining - (running is not None)
        return _Response.json(
            {**attrs.asdict(engine.stats), "running": running, "pending": pending}
        )

    # -- websocket --------------------------------------------------------------------------
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if _parts(scope["path"]) != ("ws",):
            await send({"type": "websocket.close", "code": 1008})
            return
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        sid = query.get("clientId") or uuid.uuid4().hex
        await send({"type": "websocket.accept"})
        engine, hub = self.engine, self.engine.hub
        token, outbox = hub.connect(sid)
        try:
            hub.send_to(token, "status", engine.status_data(sid))
            running = engine.running
            if running is not None and running.client_id == sid and engine.current_node:
                node = engine.current_node
                hub.send_to(
                    token,
                    "executing",
                    {"node": node, "display_node": node, "prompt_id": running.prompt_id},
                )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward, outbox, send)
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    if _is_feature_flags(message.get("text")):
                        hub.send_to(
                            token,
                            "feature_flags",
                            {"supports_preview_metadata": False, "max_upload_size": 100 << 20},
                        )
                nursery.cancel_scope.cancel()
        finally:
            hub.disconnect(token)


def _parts(path: str) -> tuple[str, ...]:
    parts = tuple(p for p in path.split("/") if p)
    # Every route is served under /api too (the frontend's prefix).
    return parts[1:] if parts[:1] == ("api",) else parts


def _is_feature_flags(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        event = json.loads(text)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("type") == "feature_flags"


async def _forward(outbox: trio.MemoryReceiveChannel[str | bytes], send: Send) -> None:
    async for message in outbox:
        if isinstance(message, str):
            await send({"type": "websocket.send", "text": message})
        else:
            await send({"type": "websocket.send", "bytes": message})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- the process ----------------------------------------------------------------------------
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
_NO_CUDA = (
    "Traceback (most recent call last):",
    '  File "/ComfyUI/main.py", line 132, in <module>',
    "    import execution",
    '  File "/ComfyUI/comfy/model_management.py", line 190, in get_torch_device',
    "    return torch.device(torch.cuda.current_device())",
    '  File "/usr/lib/python3/site-packages/torch/cuda/__init__.py", line 310, in _lazy_init',
    '    raise AssertionError("Torch not compiled with CUDA enabled")',
    "AssertionError: Torch not compiled with CUDA enabled",
)


def _port_in_use(knobs: Knobs) -> str:
    return (
        f"Port {knobs.port} is already in use on address {knobs.host}. Please close the other "
        "application or use a different port with --port."
    )


async def serve_comfyui(
    knobs: Knobs,
    log: PlainLog,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Start up as ComfyUI does, then serve until cancelled.

    Returns:
        1 when start-up fails (``--fail-load``, or the port is taken); otherwise it serves
        until cancelled. ``task_status.started(port)`` once listening.
    """
    steps = len(_STARTUP_LINES)
    for line in _STARTUP_LINES:
        log.write(line)
        await trio.sleep(knobs.load_delay / steps)
    if knobs.fail_load == "cuda":
        for line in _NO_CUDA:
            log.write(line)
        return 1
    if knobs.fail_load == "port":
        log.write(_port_in_use(knobs))
        return 1
    log.write("Starting server")
    log.write("")
    engine = Engine(settings=knobs.engine_settings(), log=log.write)
    config = HypercornConfig()
    # Log fields first: hypercorn builds its logger on the first access to config.log.
    config.accesslog = None
    config.errorlog = logging.getLogger("comfyui.fake.http")
    config.bind = [
        f"[{knobs.host}]:{knobs.port}" if ":" in knobs.host else f"{knobs.host}:{knobs.port}"
    ]
    config.graceful_timeout = 1.0
    # aiohttp's default: ComfyUI keeps idle keep-alive connections for 75 s (hypercorn: 5 s).
    config.keep_alive_timeout = 75.0
    app = FakeComfyUI(engine=engine, knobs=knobs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        port_taken = False
        binds: list[str] = []
        try:
            # Loosely typed: hypercorn declares its own precise ASGI types.
            binds = await nursery.start(partial(serve, cast(Any, app), config))
        except* OSError:
            port_taken = True
        if port_taken:
            log.write(_port_in_use(knobs))
            nursery.cancel_scope.cancel()
            return 1
        port = int(binds[0].rsplit(":", 1)[1])
        if knobs.port_file is not None:
            write_port_file(knobs.port_file, port)
        log.write(f"To see the GUI go to: http://{knobs.host}:{port}")
        task_status.started(port)
    return 0


async def _main(knobs: Knobs, log: PlainLog) -> int:
    code = 0
    # Installed before start-up begins, so a SIGTERM at any point stops it cleanly.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            code = await serve_comfyui(knobs, log)
            nursery.cancel_scope.cancel()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake; returns the exit status."""
    knobs = parse_knobs(argv)
    log = PlainLog.open(knobs.log)
    try:
        log.redirect_std_streams()
        return trio.run(_main, knobs, log)
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
