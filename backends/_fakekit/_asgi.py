"""Serving an ASGI application with hypercorn, for a fake that needs websockets.

The kit's own :class:`~backends._fakekit.HTTPServer` speaks plain HTTP/1.1 only; a fake whose
server also has a websocket (ComfyUI's ``/ws``) serves an ASGI application through hypercorn
instead, with the same start and stop as every other fake (see :meth:`Launch.listen_asgi`).
"""

from __future__ import annotations

import logging
import socket
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

    Use as ``port = await nursery.start(partial(serve_asgi, app, port=p))``. Hypercorn's
    access log and its information lines are left out (a fake logs its server's own); its
    warnings and errors (an application that raised) reach stderr, as a traceback would.

    Args:
        app: the application; it sees ``http`` and ``websocket`` scopes only.
        host: the address to bind.
        port: the port to bind; 0 lets the system pick one.
        keep_alive_timeout: seconds an idle keep-alive connection is kept.
        task_status: receives the bound port once the socket is listening.

    Raises:
        OSError: the address cannot be bound.
    """
    # Bound here rather than by hypercorn: a port in use is then this OSError itself (not
    # one wrapped in hypercorn's exception groups, its socket left unclosed).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound: int = sock.getsockname()[1]
    config = Config()
    # Log fields first: hypercorn builds its logger on the first access to config.log.
    config.accesslog = None
    config.errorlog = logging.getLogger("backends._fakekit.asgi")
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here on
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = keep_alive_timeout
    await serve(
        partial(_app_with_lifespan, app),
        config,
        task_status=_Listening(task_status=task_status, port=bound),
        mode="asgi",
    )


@attrs.frozen(kw_only=True)
class _Listening:
    """Tells ``task_status`` the port once hypercorn listens (it reports its bind URLs)."""

    task_status: trio.TaskStatus[int]
    port: int

    def started(self, value: list[str] | None = None) -> None:
        self.task_status.started(self.port)


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
