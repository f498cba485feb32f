"""A small HTTP/1.1 server on trio and h11, for fake model servers.

It does what a model server's HTTP layer does and little else: keep-alive, ``Content-Length``
and chunked streaming responses, a request-body limit, and — what matters most for a proxy's
tests — prompt notice of clients that go away. Each connection has a reader task that keeps
reading the socket, so an EOF cancels the running handler at once, whether it is still
computing a JSON answer, streaming, or hung on purpose.

It is also the upstream in benchmarks, where the worker in front of it is what is measured, so
the per-request path avoids work it does not need: one ``send_all`` per whole response, no
per-request tasks or nurseries, and headers kept to the two a client needs.
"""

from __future__ import annotations

import http
import json
import sys
import traceback
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence

import attrs
import h11
import trio

DEFAULT_MAX_BODY_SIZE = 4 * 1024 * 1024
_READ_SIZE = 65536
# Bytes the reader may get ahead of the request parser (pipelining, big bodies) before it
# pauses; while paused it cannot see an EOF, so keep it well above any request we serve.
_READ_AHEAD_LIMIT = 1024 * 1024
# After answering early (413), how long to read and drop the rest of the request body so the
# client can finish sending and read the answer instead of getting a reset.
_DRAIN_SECONDS = 2.0

_JSON = b"application/json"
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


@attrs.frozen(kw_only=True)
class Request:
    """A complete HTTP request, body included.

    Attributes:
        method: the method, e.g. ``"POST"``.
        path: the target before any ``?``.
        query: the target after the ``?`` (empty if none).
        headers: (lowercased name, value) pairs as received.
        body: the whole request body.
    """

    method: str
    path: str
    query: str
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes
    _connection: _Connection = attrs.field(alias="connection", repr=False)

    @property
    def client_gone(self) -> bool:
        """True once the client closed its connection or a write to it failed.

        A handler cancelled because of a disconnect sees this True in its ``finally`` or
        ``except trio.Cancelled`` block; a cancellation for any other reason (server
        shutdown) leaves it False.
        """
        return self._connection.client_gone

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@attrs.frozen(kw_only=True)
class Response:
    """A whole response, sent with ``Content-Length``.

    Attributes:
        status: the status code.
        body: the body bytes.
        content_type: the ``Content-Type`` value.
        headers: further (name, value) headers.
    """

    status: int = 200
    body: bytes = b""
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Response:
        """A compact JSON response."""
        return cls(status=status, body=json.dumps(obj, separators=(",", ":")).encode())


@attrs.frozen(kw_only=True)
class StreamResponse:
    """A response whose body is sent chunk by chunk (chunked encoding) as it is produced.

    Each chunk goes out in its own write as soon as the iterator yields it; nothing is
    coalesced. If the client goes away the iterator is closed (``aclose``) or, when it is
    waiting, cancelled.

    Attributes:
        chunks: the body, e.g. an async generator of SSE events.
        status: the status code.
        content_type: the ``Content-Type`` value.
        headers: further (name, value) headers.
    """

    chunks: AsyncIterable[bytes]
    status: int = 200
    content_type: bytes = b"text/event-stream"
    headers: tuple[tuple[bytes, bytes], ...] = ()


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
"""Answers a request; cancelled (with ``request.client_gone`` True) if the client leaves."""


@attrs.define(eq=False)
class HTTPServer:
    """Serves a :data:`Handler` over HTTP/1.1 on one TCP port.

    Attributes:
        handler: answers each request.
        host: the address to bind (loopback by default).
        port: the port to bind; 0 lets the system pick one (see :attr:`bound_port`).
        max_body_size: larger request bodies are answered 413.
        bound_port: the port actually bound, once :meth:`serve` has started.
        connections: connections accepted so far.
        requests: requests received so far.
    """

    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    bound_port: int | None = attrs.field(init=False, default=None)
    connections: int = attrs.field(init=False, default=0)
    requests: int = attrs.field(init=False, default=0)

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket.

        Raises:
            RuntimeError: the server is not listening yet.
        """
        if self.bound_port is None:
            raise RuntimeError("the server is not listening yet")
        return f"http://{self.host}:{self.bound_port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled.

        Use as ``port = await nursery.start(server.serve)``.

        Args:
            task_status: receives the bound port once the socket is listening (connections
                made from then on are accepted).

        Raises:
            OSError: the address cannot be bound.
        """
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        try:
            self.bound_port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
                task_status.started(self.bound_port)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        connection = _Connection(server=self, stream=stream)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.read)
                await connection.serve()
                nursery.cancel_scope.cancel()
        except Exception:
            # One broken connection must not bring the server down.
            traceback.print_exc(file=sys.stderr)
        finally:
            await trio.aclose_forcefully(stream)


@attrs.define(eq=False)
class _Connection:
    """One client connection: a reader task feeding h11, and the request/response loop.

    h11 parses and validates requests; responses, whose shape we control, are written
    directly (status line, content-type, framing, extra headers).
    """

    server: HTTPServer
    stream: trio.SocketStream
    parser: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.SERVER))
    client_gone: bool = False
    # The running handler's scope; the reader cancels it when the client goes away.
    handler_scope: trio.CancelScope | None = None
    _data_arrived: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    _parser_caught_up: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    _read_ahead: int = 0
    _draining: bool = False
    # About the request being answered.
    _http11: bool = True
    _keep_alive: bool = True
    _head_only: bool = False

    async def read(self) -> None:
        """Read the socket until EOF, for the parser and to notice a client leaving."""
        receive = self.stream.receive_some
        while True:
            if self._read_ahead > _READ_AHEAD_LIMIT and not self._draining:
                await self._parser_caught_up.park()
                continue
            try:
                data = await receive(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._client_left()
                return
            if not self._draining:
                self._read_ahead += len(data)
                self.parser.receive_data(data)
                self._data_arrived.unpark_all()

    def _client_left(self) -> None:
        self.client_gone = True
        if self.handler_scope is not None:
            self.handler_scope.cancel()
        if not self._draining:
            self.parser.receive_data(b"")
        self._data_arrived.unpark_all()

    async def _next_event(self) -> h11.Event | None:
        """The next event from the client; None if h11 paused (it never does here)."""
        while True:
            event = self.parser.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return None
            # NEED_DATA: h11 parsed all it could; what is left is less than one event.
            self._read_ahead = 0
            self._parser_caught_up.unpark_all()
            await self._data_arrived.park()

    async def serve(self) -> None:
        """Answer requests until the connection ends."""
        while True:
            try:
                request = await self._receive_request()
            except h11.RemoteProtocolError as exc:
                if not self.client_gone:
                    await self._send_error(exc.error_status_hint, f"bad request: {exc}")
                return
            if request is None:
                return
            await self._respond(request)
            if self.client_gone or not self._keep_alive:
                return
            self._next_cycle()

    def _next_cycle(self) -> None:
        # Responses are written by hand (h11's validating writer costs more than the rest of
        # a request), so h11 still awaits one; a fresh parser takes over whatever the client
        # already sent of its next request.
        leftover, closed = self.parser.trailing_data
        parser = h11.Connection(h11.SERVER)
        if leftover:
            parser.receive_data(leftover)
        if closed:
            parser.receive_data(b"")
        self.parser = parser

    async def _receive_request(self) -> Request | None:
        event = await self._next_event()
        if not isinstance(event, h11.Request):
            # ConnectionClosed: the client is done with this connection.
            return None
        server = self.server
        server.requests += 1
        self._http11 = event.http_version == b"1.1"
        self._head_only = event.method == b"HEAD"
        keep_alive = self._http11
        length = 0
        for name, value in event.headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        self._keep_alive = keep_alive
        limit = server.max_body_size
        if length > limit:
            await self._send_error(413, f"request body larger than {limit} bytes")
            return None
        if self.parser.they_are_waiting_for_100_continue:
            await self._send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        parts: list[bytes] = []
        size = 0
        while True:
            body_event = await self._next_event()
            if isinstance(body_event, h11.Data):
                size += len(body_event.data)
                if size > limit:
                    await self._send_error(413, f"request body larger than {limit} bytes")
                    return None
                parts.append(body_event.data)
            elif isinstance(body_event, h11.EndOfMessage):
                break
            else:
                return None
        path, _, query = event.target.partition(b"?")
        return Request(
            method=event.method.decode("ascii"),
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=event.headers,
            body=parts[0] if len(parts) == 1 else b"".join(parts),
            connection=self,
        )

    async def _respond(self, request: Request) -> None:
        scope = trio.CancelScope()
        self.handler_scope = scope
        try:
            with scope:
                try:
                    response = await self.server.handler(request)
                except Exception:
                    traceback.print_exc(file=sys.stderr)
                    response = Response.json({"error": "internal server error"}, status=500)
                if isinstance(response, Response):
                    await self._send_whole(response)
                else:
                    await self._send_stream(response)
        finally:
            self.handler_scope = None

    def _head(
        self,
        status: int,
        content_type: bytes,
        framing: bytes,
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> bytes:
        """The status line and headers; ``framing`` is the Content-Length or TE line."""
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s" % (
            status,
            _REASONS.get(status, b""),
            content_type,
            framing,
        )
        for name, value in headers:
            head += b"%s: %s\r\n" % (name, value)
        if not self._keep_alive:
            head += b"connection: close\r\n"
        return head + b"\r\n"

    async def _send_whole(self, response: Response) -> None:
        body = response.body
        head = self._head(
            response.status,
            response.content_type,
            b"content-length: %d\r\n" % len(body),
            response.headers,
        )
        # One write per response: head and body leave in the same segment.
        await self._send_all(head if self._head_only else head + body)

    async def _send_stream(self, response: StreamResponse) -> None:
        chunks = aiter(response.chunks)
        try:
            chunked = self._http11
            if not chunked:
                # HTTP/1.0 has no chunked encoding: the body ends when the connection does.
                self._keep_alive = False
            framing = b"transfer-encoding: chunked\r\n" if chunked else b""
            head = self._head(response.status, response.content_type, framing, response.headers)
            if not await self._send_all(head) or self._head_only:
                return
            async for chunk in chunks:
                if chunk:
                    data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                    if not await self._send_all(data):
                        return
            if chunked:
                await self._send_all(b"0\r\n\r\n")
        finally:
            # Close the producer now (not at garbage collection), so a generator's cleanup
            # runs while the client's departure is known (client_gone is already set).
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send_all(self, data: bytes) -> bool:
        """Send ``data``; False (and client_gone) if the client is no longer there."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.client_gone = True
            return False
        return True

    async def _send_error(self, status: int, message: str) -> None:
        """Answer ``status`` and close, first reading what is left of the request."""
        self._keep_alive = False
        body = json.dumps({"error": message}).encode()
        head = self._head(status, _JSON, b"content-length: %d\r\n" % len(body), ())
        if not await self._send_all(head + body):
            return
        # Closing with unread input makes the kernel send a reset, which can destroy the
        # answer before the client reads it; so say we are done (FIN), then drop input until
        # the client hangs up too.
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        self._draining = True
        self._parser_caught_up.unpark_all()
        with trio.move_on_after(_DRAIN_SECONDS):
            while not self.client_gone:
                await self._data_arrived.park()
