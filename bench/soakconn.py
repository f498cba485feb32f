"""The fault soak's small HTTP/1.1 client: requests framed by hand, answers parsed as they arrive.

One :class:`Connection` to the worker: a request's bytes sent (:func:`frame` makes a POST's),
the answer's head, then its body a piece at a time; :class:`Closed` when it ends first; closed
with a FIN or, if asked, a reset. The load (``bench/soakload.py``) sends its requests on it; the
runner (``bench/soakrunner.py``) polls ``/status`` and sends its canary on it.
"""

from __future__ import annotations

import socket
import struct

import attrs
import trio

_RECV = 65536


class Closed(Exception):
    """The connection closed or failed before the answer was complete."""


@attrs.define(eq=False)
class Connection:
    """One client connection: requests framed by hand, answers parsed as they arrive."""

    stream: trio.SocketStream
    requests: int = 0
    _buffer: bytearray = attrs.Factory(bytearray)
    _chunked: bool = False
    _remaining: int = 0
    _done: bool = True

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to ``127.0.0.1:port``.

        Raises:
            OSError: the connection could not be opened.
        """
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(stream)

    async def _more(self) -> None:
        try:
            data = await self.stream.receive_some(_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Closed(f"receive failed: {exc}") from None
        if not data:
            raise Closed("closed by the server")
        self._buffer += data

    async def send(self, data: bytes) -> None:
        """Send one request's bytes."""
        self.requests += 1
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Closed(f"send failed: {exc}") from None

    @property
    def idle(self) -> bool:
        """Whether the last answer was read to its end (so the next request may follow)."""
        return self._done and not self._buffer

    async def head(self) -> tuple[int, dict[bytes, bytes]]:
        """The status and headers of the next answer; its body is read with :meth:`chunk`.

        Raises:
            Closed: the connection ended first.
            ValueError: the head is malformed.
        """
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            await self._more()
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[: end + 4]
        if not lines[0].startswith(b"HTTP/1.1 "):
            raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:60]!r}")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self._chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self._remaining = int(headers.get(b"content-length", b"0"))
        self._done = False
        return status, headers

    async def chunk(self) -> bytes | None:
        """The next piece of the body; None once it is complete.

        Raises:
            Closed: the connection ended first.
        """
        if self._done:
            return None
        if not self._chunked:
            while len(self._buffer) < self._remaining:
                await self._more()
            data = bytes(self._buffer[: self._remaining])
            del self._buffer[: self._remaining]
            self._done = True
            return data or None
        while (end := self._buffer.find(b"\r\n")) < 0:
            await self._more()
        size = int(bytes(self._buffer[:end]).split(b";", 1)[0], 16)
        while len(self._buffer) < end + 2 + size + 2:
            await self._more()
        data = bytes(self._buffer[end + 2 : end + 2 + size])
        del self._buffer[: end + 2 + size + 2]
        if size == 0:
            self._done = True
            return None
        return data

    async def body(self) -> bytes:
        """The rest of the body."""
        parts = []
        while (data := await self.chunk()) is not None:
            parts.append(data)
        return b"".join(parts)

    async def aclose(self, *, reset: bool = False) -> None:
        """Close; with ``reset``, abortively (the peer gets a RST, not a FIN)."""
        if reset:
            try:
                linger = struct.pack("ii", 1, 0)
                self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            except OSError:
                pass
        await self.stream.aclose()


def frame(path: str, body: bytes) -> bytes:
    """A POST request's bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: worker\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body
