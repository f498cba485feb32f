"""A small websocket client on Trio and wsproto, enough for ComfyUI's ``/ws`` event stream.

httpx speaks no websocket, and ComfyUI's events need only the basics: connect to a ``ws://``
URL, receive text (JSON events) and binary (previews) messages, answer pings, close.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

_RECEIVE_BYTES = 65536


class WebSocketError(Exception):
    """The websocket could not be opened, or was closed (by either side or the network)."""


@attrs.define(eq=False)
class WebSocket:
    """An open client websocket (see :func:`connect_websocket`)."""

    _stream: trio.abc.Stream
    _conn: WSConnection
    _messages: collections.deque[str | bytes] = attrs.field(factory=collections.deque)
    _text: list[str] = attrs.field(factory=list)
    _binary: list[bytes] = attrs.field(factory=list)
    _closed: bool = False

    async def receive(self) -> str | bytes:
        """The next whole message: ``str`` for text frames, ``bytes`` for binary ones.

        Raises:
            WebSocketError: the connection closed.
        """
        while not self._messages:
            if self._closed:
                raise WebSocketError("websocket closed")
            try:
                data = await self._stream.receive_some(_RECEIVE_BYTES)
            except trio.BrokenResourceError as exc:
                self._closed = True
                raise WebSocketError(f"websocket broken: {exc}") from None
            if not data:
                self._closed = True
                raise WebSocketError("websocket closed by the server")
            try:
                self._conn.receive_data(bytes(data))
                await self._handle(self._conn.events())
            except RemoteProtocolError as exc:
                self._closed = True
                raise WebSocketError(f"websocket protocol error: {exc}") from None
        return self._messages.popleft()

    async def _handle(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self._messages.append("".join(self._text))
                    self._text.clear()
            elif isinstance(event, BytesMessage):
                self._binary.append(bytes(event.data))
                if event.message_finished:
                    self._messages.append(b"".join(self._binary))
                    self._binary.clear()
            elif isinstance(event, Ping):
                await self._send_bytes(self._conn.send(event.response()))
            elif isinstance(event, CloseConnection) and not self._closed:
                self._closed = True
                await self._send_bytes(self._conn.send(event.response()))

    async def send_text(self, text: str) -> None:
        """Send one text message.

        Raises:
            WebSocketError: the connection is closed.
        """
        if self._closed:
            raise WebSocketError("websocket closed")
        await self._send_bytes(self._conn.send(TextMessage(data=text)))

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed = True
            raise WebSocketError(f"websocket broken: {exc}") from None

    async def aclose(self) -> None:
        """Say goodbye (best effort, without waiting for the answer) and close the socket."""
        if not self._closed:
            self._closed = True
            # Shielded and brief: closing runs on the way out of cancelled tasks too.
            with trio.move_on_after(0.5, shield=True):
                try:
                    await self._stream.send_all(self._conn.send(CloseConnection(code=1000)))
                except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                    pass
        await trio.aclose_forcefully(self._stream)


@asynccontextmanager
async def connect_websocket(url: str) -> AsyncIterator[WebSocket]:
    """Open a ``ws://`` URL, and close it on exit.

    Raises:
        WebSocketError: the URL is not ``ws://``, or the server refused the upgrade.
        OSError: the connection failed.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise WebSocketError(f"not a ws:// URL: {url}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream = await trio.open_tcp_stream(parts.hostname, port)
    try:
        conn = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(conn.send(Request(host=f"{parts.hostname}:{port}", target=target)))
        websocket = await _handshake(stream, conn)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        yield websocket
    finally:
        await websocket.aclose()


async def _handshake(stream: trio.abc.Stream, conn: WSConnection) -> WebSocket:
    while True:
        data = await stream.receive_some(_RECEIVE_BYTES)
        if not data:
            raise WebSocketError("connection closed during the websocket handshake")
        try:
            conn.receive_data(bytes(data))
            events = list(conn.events())
        except RemoteProtocolError as exc:
            raise WebSocketError(f"websocket handshake failed: {exc}") from None
        for index, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                websocket = WebSocket(stream, conn)
                # Frames that arrived with the handshake answer belong to the websocket.
                await websocket._handle(events[index + 1 :])
                return websocket
            if isinstance(event, RejectConnection | RejectData):
                raise WebSocketError(
                    f"websocket upgrade refused (HTTP {getattr(event, 'status_code', '?')})"
                )
