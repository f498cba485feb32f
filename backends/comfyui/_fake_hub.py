"""The fake ComfyUI's websockets: each client's open sockets, and the events sent to them.

A socket's events wait in a bounded buffer; a client that does not read loses what overflows
it, as with a full socket buffer, and never slows the executor down.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import attrs
import trio

_WS_BUFFER = 10_000
"""Events buffered per websocket; a client that reads none of them loses the excess."""


@attrs.define(eq=False)
class Hub:
    """The websockets, by client id; events go to one client or to all."""

    _sockets: dict[int, tuple[str, trio.MemorySendChannel[str | bytes]]] = attrs.field(factory=dict)
    _tokens: itertools.count[int] = attrs.field(factory=itertools.count)

    def connect(self, sid: str) -> tuple[int, trio.MemoryReceiveChannel[str | bytes]]:
        """Register a websocket of client ``sid``; returns its token and message channel."""
        send, receive = trio.open_memory_channel[str | bytes](_WS_BUFFER)
        token = next(self._tokens)
        self._sockets[token] = (sid, send)
        return token, receive

    def disconnect(self, token: int) -> None:
        """Forget a websocket."""
        entry = self._sockets.pop(token, None)
        if entry is not None:
            entry[1].close()

    def send(self, event: str, data: Mapping[str, Any], sid: str | None = None) -> None:
        """Send a JSON event to client ``sid``'s sockets, or to every socket when None."""
        self._put(json.dumps({"type": event, "data": data}), sid)

    def send_to(self, token: int, event: str, data: Mapping[str, Any]) -> None:
        """Send a JSON event to one socket."""
        entry = self._sockets.get(token)
        if entry is not None:
            self._offer(entry[1], json.dumps({"type": event, "data": data}))

    def send_bytes(self, data: bytes, sid: str | None) -> None:
        """Send a binary frame (a preview)."""
        self._put(data, sid)

    def _put(self, message: str | bytes, sid: str | None) -> None:
        for socket_sid, channel in list(self._sockets.values()):
            if sid is None or socket_sid == sid:
                self._offer(channel, message)

    @staticmethod
    def _offer(channel: trio.MemorySendChannel[str | bytes], message: str | bytes) -> None:
        try:
            channel.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a client that does not read loses events, as with a full socket buffer
