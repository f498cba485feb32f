"""ComfyUI's ``/ws`` event stream, on trio-websocket.

``run`` reads this websocket only for a hint that its prompt ended (polling ``/history`` stays
the reliable signal), so the client is bounded everywhere: a cap on message size, a deadline on
the opening handshake, a short one on the closing handshake (none at all when cancelled), and its
socket closed on every way out. Only ``ws://``: ComfyUI listens on plain HTTP next to the worker.

trio-websocket's ``open_websocket_url`` (0.12) is not used: when its ``connect_timeout`` expires
it stops waiting, but its reader task goes on reading the silent socket and its nursery waits for
that task, so a server that accepts TCP and never answers the handshake holds it indefinitely; and
after a message over the cap, or a handshake cut short, its socket is left to the garbage
collector. Owning the stream and the reader's nursery here closes both holes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket

MAX_MESSAGE_SIZE = 1024 * 1024
"""The largest message accepted (text or binary); a larger one closes the websocket (1009).

ComfyUI's JSON events are small (``executed`` lists output files, ``execution_error`` carries a
traceback: a few KiB to tens of KiB), and its binary latent previews are images resized to
``--preview-size`` (512 px by default), tens of KiB. Only whole output images pushed over the
websocket (the ``SaveImageWebsocket`` node) come larger, and ``run`` has no use for them. The
reader holds at most one message being assembled plus one whole message queued for the consumer,
so this cap bounds the client's memory to a few MiB; a message over it ends the websocket and the
run goes on by polling, which never depended on it.
"""
RECEIVE_BUFFER_SIZE = 65536
"""Bytes read from the socket at a time (trio-websocket's default, 4 KiB, is slow for previews)."""
CLOSE_TIMEOUT = 0.5
"""Seconds the closing handshake may take when the websocket is left normally (or by an error):
a peer that never answers the close frame holds nobody longer than this."""


class WebSocketError(Exception):
    """The websocket could not be opened, or was closed (by either side or the network)."""


@attrs.define(eq=False)
class WebSocket:
    """An open client websocket (see :func:`connect_websocket`)."""

    _connection: trio_websocket.WebSocketConnection

    async def receive(self) -> str | bytes:
        """The next whole message: ``str`` for text, ``bytes`` for binary.

        Raises:
            WebSocketError: the connection closed (also when a message exceeded the size cap).
        """
        try:
            return await self._connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise WebSocketError(f"websocket closed: {_describe(exc)}") from None

    async def send_text(self, text: str) -> None:
        """Send one text message.

        Raises:
            WebSocketError: the connection is closed.
        """
        try:
            await self._connection.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise WebSocketError(f"websocket closed: {_describe(exc)}") from None


@asynccontextmanager
async def connect_websocket(
    url: str,
    *,
    connect_timeout: float = math.inf,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> AsyncIterator[WebSocket]:
    """Open a ``ws://`` URL, and close it on exit (within :data:`CLOSE_TIMEOUT`).

    Args:
        url: ``ws://host[:port]/path[?query]``.
        connect_timeout: seconds for the TCP connection and the opening handshake together.
        max_message_size: a message longer than this closes the websocket (code 1009), and
            :meth:`WebSocket.receive` then raises :exc:`WebSocketError`.

    Raises:
        WebSocketError: the URL is not ``ws://``, the server refused the upgrade, or the
            handshake did not complete within ``connect_timeout``.
        OSError: the TCP connection failed.
    """
    host, port, host_header, resource = _split(url)
    with trio.move_on_after(connect_timeout) as connecting:
        stream = await trio.open_tcp_stream(host, port)
    if connecting.cancelled_caught:
        raise WebSocketError(f"no connection to {url} within {connect_timeout:g} s")
    try:
        async with trio.open_nursery() as nursery:
            # The reader task runs in `nursery`; the handshake's deadline must not cover it, so
            # giving up (raising below) is what cancels it.
            with trio.move_on_at(connecting.deadline) as handshaking:
                connection = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    host_header,
                    resource,
                    max_message_size=max_message_size,
                    receive_buffer_size=RECEIVE_BUFFER_SIZE,
                )
            if handshaking.cancelled_caught:
                raise WebSocketError(f"no websocket handshake within {connect_timeout:g} s")
            try:
                yield WebSocket(connection)
            finally:
                # Say goodbye, briefly: a peer that never answers the close frame holds us no
                # longer than CLOSE_TIMEOUT. Not shielded: when we are being cancelled, the
                # reader task is too, so nothing could read the answer; trio-websocket then
                # gives up at once and closes the socket, and a cancelled request never waits.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await connection.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps whatever ended it (the body's exception, or the reader's refusal of
        # the upgrade); unwrap the one that matters so callers catch plain exceptions.
        _raise_one(group)
    finally:
        # trio-websocket leaves its stream open after a message over the cap, or when the
        # handshake is cut short; closing it here is idempotent otherwise.
        await trio.aclose_forcefully(stream)


def _split(url: str) -> tuple[str, int, str, str]:
    """``(host, port, Host header, resource)`` of a ``ws://`` URL."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:
        raise WebSocketError(f"not a ws:// URL: {url} ({exc})") from None
    if parts.scheme != "ws" or not parts.hostname:
        raise WebSocketError(f"not a ws:// URL: {url}")
    host_header = parts.netloc.rpartition("@")[2]
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, host_header, resource


def _describe(exc: trio_websocket.ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection lost"
    return f"{reason.code} {reason.name}" + (f" ({reason.reason})" if reason.reason else "")


def _raise_one(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the single exception ``group`` stands for, translated, or else ``group`` itself.

    A group of one error and any number of :exc:`trio.Cancelled` stands for that error (as in
    trio's own ``as_safe_channel``: the error propagates and the cancellation is delivered at the
    caller's next checkpoint); a group of only :exc:`trio.Cancelled` for its first one.
    """
    errors = [exc for exc in group.exceptions if not isinstance(exc, trio.Cancelled)]
    if len(errors) > 1:
        raise group
    error = errors[0] if errors else group.exceptions[0]
    if isinstance(error, trio_websocket.ConnectionRejected):
        raise WebSocketError(f"websocket upgrade refused (HTTP {error.status_code})") from None
    if isinstance(error, trio_websocket.HandshakeError):
        raise WebSocketError(f"websocket handshake failed: {error!r}") from None
    if isinstance(error, trio_websocket.ConnectionClosed):
        raise WebSocketError(f"websocket closed: {_describe(error)}") from None
    # Keep the error's own context rather than the group it came in.
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context
