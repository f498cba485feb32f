"""The fake ComfyUI's HTTP routes and websocket, as an ASGI application served by the kit.

Served (also under ``/api/...``), as ComfyUI's aiohttp server serves them (see
``shared/spec/model-servers.md`` §5):

* ``POST /prompt`` (validation, 400 ``no_prompt`` / ``invalid_prompt`` / ``invalid_prompt_id``
  / ``prompt_outputs_failed_validation``), ``GET /prompt``;
* ``GET|POST /queue``, ``POST /interrupt``, ``GET|POST /history``, ``GET /history/{id}``;
* ``GET /view`` (real PNGs, sized from the workflow, coloured from the seed);
* ``GET /ws?clientId=`` (``status``, ``execution_start``, ``execution_cached``,
  ``executing``, ``progress``, ``executed``, ``execution_success`` / ``_error`` /
  ``_interrupted``, ``executing {"node": null}``);
* ``GET /system_stats`` (the health route), ``GET /object_info[/{class}]``,
  ``GET /models[/{folder}]``;
* ``GET /stats`` (fake-only): counters of :class:`~backends.comfyui._fake_records.Stats`, plus the
  running prompt and pending count.

A handler that raises (a body that is not JSON, a prompt failed by ``--error-rate``) is
aiohttp's plain-text 500.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

import attrs
import trio

from backends._fakekit import Faults, LogWriter, Receive, Scope, Send

from ._fake_engine import Engine

VERSION = "0.3.60"


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
    """The fake's ASGI application (the kit answers its ``lifespan`` scope).

    Attributes:
        engine: the queue, executor and history.
        faults: the health route's delay and the prompts failed on purpose.
        log: where aiohttp's error lines go.
        host: the address the server was told to listen on (``--listen``).
    """

    engine: Engine
    faults: Faults
    log: LogWriter
    host: str = "127.0.0.1"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

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
            self.engine.stats.errors += 1
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
        await self.faults.health_delay()
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
                    "argv": ["main.py", "--listen", self.host],
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
        checkpoints = list(self.engine.settings.checkpoints)
        folders = {"checkpoints": checkpoints, "loras": [], "vae": []}
        if len(request.parts) == 1:
            return _Response.json(list(folders))
        models = folders.get(request.parts[1])
        if models is None:
            return _Response.text(404, "404: Not Found")
        return _Response.json(models)

    async def _get_prompt(self, request: _Request) -> _Response:
        return _Response.json({"exec_info": {"queue_remaining": self.engine.queue_remaining}})

    async def _post_prompt(self, request: _Request) -> _Response:
        if self.faults.fail_request():
            self._log_injected_failure()
            raise _ServerError
        status, answer = self.engine.submit(_json_body(request.body))
        return _Response.json(answer, status=status)

    def _log_injected_failure(self) -> None:
        for line in (
            "Error handling request from 127.0.0.1",
            "Traceback (most recent call last):",
            '  File "/usr/lib/python3/site-packages/aiohttp/web_protocol.py", line 510, '
            "in _handle_request",
            "    resp = await request_handler(request)",
            '  File "/ComfyUI/server.py", line 720, in post_prompt',
            "RuntimeError: injected failure (--error-rate)",
        ):
            self.log.info(line)

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
