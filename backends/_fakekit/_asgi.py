"""Serving an ASGI application with hypercorn, for a fake that needs websockets.

The kit's own :class:`~backends._fakekit.HTTPServer` speaks plain HTTP/1.1 only; a fake whose
server also has a websocket (ComfyUI's ``/ws``) serves an ASGI application through hypercorn
instead, with the same start and stop as every other fake (see :meth:`Launch.listen_asgi`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Scope = MutableMapping[str, Any]
"""An ASGI connection scope."""
Message = MutableMapping[str, Any]
"""An ASGI event, received or sent."""
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application; the kit answers the ``lifespan`` scope for it."""


async def serve_asgi(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    keep_alive_timeout: float = 5.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 and websockets with hypercorn until cancelled.

    Use as ``port = await nursery.start(partial(serve_asgi, app, port=p))``. Hypercorn's log
    lines are dropped (a fake logs its server's own), and so is its access log.

    Args:
        app: the application; it sees ``http`` and ``websocket`` scopes only.
        host: the address to bind.
        port: the port to bind; 0 lets the system pick one.
        keep_alive_timeout: seconds an idle keep-alive connection is kept.
        task_status: receives the bound port once the socket is listening.

    Raises:
        OSError: the address cannot be bound.
    """
    config = Config()
    # Log fields first: hypercorn builds its logger on the first access to config.log.
    config.accesslog = None
    config.errorlog = logging.getLogger("backends._fakekit.asgi")
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = keep_alive_timeout
    status = _PortStatus(task_status)
    try:
        await serve(partial(_app_with_lifespan, app), config, task_status=status, mode="asgi")
    except* OSError as group:
        if status.started_yet:
            raise
        # Raised from within hypercorn's nurseries: give the caller the error itself.
        raise _first_leaf(group) from None


@attrs.define(eq=False)
class _PortStatus:
    """Passes hypercorn's "started" on as the bound port (hypercorn gives its bind URLs)."""

    task_status: trio.TaskStatus[int]
    started_yet: bool = False

    def started(self, value: list[str] | None = None) -> None:
        assert value, "hypercorn gives the URLs it listens on"
        self.started_yet = True
        self.task_status.started(int(value[0].rsplit(":", 1)[1]))


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    error: OSError | BaseExceptionGroup[OSError] = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _app_with_lifespan(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    else:
        await app(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to set up or tear down: a fake's state lives in its own tasks.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
