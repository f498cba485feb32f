"""A lean HTTP/1.1 client for the model server: pooled keep-alive connections.

The proxy's hot path sends one request per client request and relays the answer as it arrives.
A general client (httpx) costs ~0.45 ms of CPU per request on this class of machine, more than
the rest of the worker; this one does only what a loopback hop to one trusted server needs:
keep-alive pooling, Content-Length or chunked bodies, timeouts, and closing the connection when
a response is abandoned (which is how the model server learns the client went away).
Requests are written by hand; responses are read by :mod:`pyworker._http1`.

Timeouts, as Knative has them toward its containers (``UpstreamPool`` documents the defaults):

* ``connect_timeout``: opening a connection;
* ``first_byte_timeout``: from sending the request to the complete final response head,
  whatever arrives meanwhile (a stream of 1xx interim responses, a head trickled byte by byte);
* ``read_timeout``: silence between bytes of the body;
* the total: the caller's, with a cancel scope (``trio.fail_after``) around the request and
  the reading of its body; a cancelled request closes its connection.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from types import TracebackType

import attrs
import trio

from ._http1 import END, NEED_DATA, ProtocolError, ResponseHead, ResponseReader

log = logging.getLogger("pyworker.upstream")

_RECEIVE_SIZE = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"[!-~]+")


class UpstreamError(Exception):
    """The model server could not be reached or broke the connection."""


class UpstreamTimeout(UpstreamError):
    """The model server did not answer within a timeout (the message names which)."""


class _ConnectionReset(UpstreamError):
    """The peer reset the connection (as a kernel does for data sent after a close)."""


class _StaleConnection(Exception):
    """A reused keep-alive connection broke before any byte of a response arrived."""


@attrs.define(eq=False)
class _Connection:
    stream: trio.SocketStream
    reader: ResponseReader = attrs.field(factory=ResponseReader)
    reused: bool = False

    async def aclose(self) -> None:
        # Shielded: closing must happen even while the caller is being cancelled, or the
        # model server would keep generating for a client that is gone.
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


@attrs.define(eq=False)
class UpstreamResponse:
    """A response whose body is read chunk by chunk with :meth:`receive`.

    Always finish with :meth:`aclose` (or use ``async with``): a fully read response returns
    its connection to the pool; an abandoned one closes it.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    _pool: UpstreamPool
    _conn: _Connection | None

    async def receive(self) -> bytes:
        """The next chunk of the body as it arrives; ``b""`` at the end.

        Raises:
            UpstreamTimeout: no data within the pool's ``read_timeout``.
            UpstreamError: the connection broke mid-body, or the body is malformed.
        """
        conn = self._conn
        if conn is None:
            return b""
        event = await self._pool._next_event(conn)
        if type(event) is bytes:
            return self._with_buffered(conn, event)
        if event is END:
            self._conn = None
            self._pool._release(conn)
            return b""
        raise UpstreamError("unexpected response head in a response body")

    def _with_buffered(self, conn: _Connection, data: bytes) -> bytes:
        # Whatever else has already arrived goes out with it (no I/O here): one send to the
        # client instead of several when the relay has fallen behind, and the end of the
        # message noticed at once, so the last chunk can carry the end of the response.
        reader = conn.reader
        parts: list[bytes] | None = None
        while True:
            try:
                event = reader.next_event()
            except ProtocolError:
                break  # the next receive() raises it
            if type(event) is bytes:
                if parts is None:
                    parts = [data]
                parts.append(event)
                continue
            if event is END:
                self._conn = None
                self._pool._release(conn)
            break
        return data if parts is None else b"".join(parts)

    async def read(self, limit: int | None = None) -> bytes:
        """The whole remaining body (at most ``limit`` bytes, else UpstreamError)."""
        parts = []
        size = 0
        while chunk := await self.receive():
            size += len(chunk)
            if limit is not None and size > limit:
                raise UpstreamError(f"response body over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        """Whether the body has been read to its end."""
        return self._conn is None

    @property
    def error(self) -> str:
        """Always "": this answer is the model server's own."""
        return ""

    @property
    def actual(self) -> float | None:
        """Always None: what the model server reports is in the body (or its headers), for
        an observer to read."""
        return None

    async def aclose(self) -> None:
        """Release the connection: back to the pool if complete, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@attrs.define(eq=False)
class UpstreamPool:
    """Keep-alive connections to one model server.

    Args:
        host: the model server's host (an IP address or name).
        port: its port.
        connect_timeout: seconds to open a connection (default 10).
        read_timeout: seconds of silence tolerated between bytes of a response body (default
            600).
        first_byte_timeout: seconds from sending a request to its complete final response
            head, 1xx interim responses included (keyword only; default: ``read_timeout``, so
            600, as before this bound had its own name). A model generating a long answer
            without streaming sends nothing until it is done: this is how long it may take.
        max_idle: idle connections kept for reuse.

    A total bound on a request is the caller's: a cancel scope around :meth:`request` and the
    reading of the response; cancelled, the request closes its connection.
    """

    host: str
    port: int
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    max_idle: int = 256
    first_byte_timeout: float = attrs.field(
        kw_only=True,
        default=attrs.Factory(lambda self: self.read_timeout, takes_self=True),
    )
    _idle: list[_Connection] = attrs.field(factory=list, init=False)
    _host_header: bytes = attrs.field(init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._host_header = f"{self.host}:{self.port}".encode()

    async def request(
        self,
        method: bytes,
        target: bytes,
        body: bytes = b"",
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        content_type: bytes = b"application/json",
    ) -> UpstreamResponse:
        """Send a request and return once the response's status and headers have arrived.

        A request that fails on a reused idle connection before any response byte arrives is
        retried once on a new connection: the server closed the idle connection, so it never
        saw the request.

        Raises:
            UpstreamTimeout: connecting took over ``connect_timeout``, or sending the request
                and receiving the response head over ``first_byte_timeout``.
            UpstreamError: the model server refused or dropped the connection, or its answer
                is not valid HTTP/1.1.
        """
        if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
            raise UpstreamError(f"refusing to send a malformed request line {method!r} {target!r}")
        parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", self._host_header, b"\r\n"]
        if method != b"GET" or body:
            parts += [
                b"content-type: ",
                content_type,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n",
            ]
        for name, value in headers:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(b"\r\n")
        if body:
            parts.append(body)
        data = b"".join(parts)
        head_request = method == b"HEAD"
        while True:
            conn = self._take_idle() or await self._connect()
            try:
                return await self._exchange(conn, data, head_request)
            except _StaleConnection:
                # The server closed the idle connection (its keep-alive timeout) before it
                # read our request, so it never started on it: safe to send again.
                await conn.aclose()
                log.debug("stale keep-alive connection; retrying on a new one")
            except BaseException:
                await conn.aclose()
                raise

    async def _exchange(
        self, conn: _Connection, data: bytes, head_request: bool
    ) -> UpstreamResponse:
        reader = conn.reader
        reader.expect(head_request=head_request)
        sent = False
        # One deadline for writing the request and reading the whole final head: bytes that
        # keep coming (1xx interim responses, a head trickled byte by byte) do not extend it.
        with trio.move_on_after(self.first_byte_timeout):
            try:
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if conn.reused:
                    raise _StaleConnection from exc
                raise UpstreamError(f"model server closed the connection: {exc}") from None
            sent = True
            try:
                head = await self._read_head(conn)
            except _ConnectionReset as exc:
                # Stale only if the server reset the connection having said nothing at all. A
                # clean close after reading the request is not retried: the server may have
                # started on it, and a POST must not run twice.
                if conn.reused and not reader.started:
                    raise _StaleConnection from exc
                raise
            return UpstreamResponse(status=head.status, headers=head.headers, pool=self, conn=conn)
        timeout = f"{self.first_byte_timeout:g} s (first_byte_timeout)"
        if not sent:
            raise UpstreamTimeout(f"model server did not read the request within {timeout}")
        if not reader.started:
            raise UpstreamTimeout(f"model server sent nothing for {timeout}")
        raise UpstreamTimeout(f"model server sent no complete response head within {timeout}")

    async def _read_head(self, conn: _Connection) -> ResponseHead:
        reader = conn.reader
        while True:
            try:
                event = reader.next_event()
            except ProtocolError as exc:
                raise UpstreamError(f"model server broke HTTP/1.1: {exc}") from None
            if type(event) is ResponseHead:
                return event
            if event is not NEED_DATA:
                raise UpstreamError("model server sent a body before a response head")
            # No timeout of its own: the caller's deadline bounds the whole head.
            await self._receive(conn)

    async def _next_event(self, conn: _Connection) -> ResponseHead | bytes | object:
        reader = conn.reader
        while True:
            try:
                event = reader.next_event()
            except ProtocolError as exc:
                raise UpstreamError(f"model server broke HTTP/1.1: {exc}") from None
            if event is not NEED_DATA:
                return event
            try:
                with trio.fail_after(self.read_timeout):
                    await self._receive(conn)
            except trio.TooSlowError:
                raise UpstreamTimeout(
                    f"model server sent nothing for {self.read_timeout:g} s mid-body (read_timeout)"
                ) from None

    @staticmethod
    async def _receive(conn: _Connection) -> None:
        try:
            data = await conn.stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ConnectionReset(f"connection to the model server broke: {exc}") from None
        conn.reader.feed(data)

    async def _connect(self) -> _Connection:
        if self._closed:
            raise UpstreamError("connection pool is closed")
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(self.host, self.port)
        except trio.TooSlowError:
            raise UpstreamTimeout(
                f"connecting to the model server at {self.host}:{self.port} timed out after "
                f"{self.connect_timeout:g} s (connect_timeout)"
            ) from None
        except OSError as exc:
            raise UpstreamError(
                f"cannot connect to the model server at {self.host}:{self.port}: "
                f"{exc.strerror or exc}"
            ) from None
        return _Connection(stream=stream)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            # An idle connection with something to read was closed by the server (or sent
            # garbage): never send a request on it. The poll() costs ~9 us; a server may close
            # at any moment (some close right after answering), so it is always worth it.
            if not conn.stream.socket.is_readable():
                return conn
            conn.stream.socket.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if not self._closed and conn.reader.reusable and len(self._idle) < self.max_idle:
            conn.reused = True
            self._idle.append(conn)
        else:
            # Not reusable: close without waiting (we may be on the hot path).
            conn.stream.socket.close()

    async def aclose(self) -> None:
        """Close every idle connection; responses in progress close their own."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
