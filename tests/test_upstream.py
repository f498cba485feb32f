"""The upstream pool against the kit's in-process model server: keep-alive, streaming, abandoned
and cancelled responses, timeouts, refusals (a raw server's odd answers, stale connections and
the three timeouts: ``test_upstream_raw.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from backends._fakekit import HTTPServer, Request, Response, StreamResponse
from pyworker._upstream import UpstreamError, UpstreamPool, UpstreamTimeout

GUARD = 10  # seconds: the absolute bound on each test


async def _serve(nursery: trio.Nursery, server: HTTPServer) -> UpstreamPool:
    port: int = await nursery.start(server.serve)
    return UpstreamPool(host="127.0.0.1", port=port, connect_timeout=2.0, read_timeout=2.0)


async def _echo(request: Request) -> Response:
    return Response.json({"path": request.path, "body": request.body.decode()})


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = HTTPServer(_echo)
        async with await _serve(nursery, server) as pool:
            for i in range(3):
                async with await pool.request(b"POST", b"/p", f"body{i}".encode()) as response:
                    assert response.status == 200
                    assert await response.read() == f'{{"path":"/p","body":"body{i}"}}'.encode()
                    assert response.complete
            # GET without a body carries no content headers; still on the same connection.
            async with await pool.request(b"GET", b"/g") as response:
                assert b'"body":""' in await response.read()
        assert server.requests == 4
        assert server.connections == 1


async def test_chunked_stream_arrives_chunk_by_chunk(nursery: trio.Nursery) -> None:
    produced: list[int] = []
    next_chunk = trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal next_chunk
        for i in range(3):
            produced.append(i)
            yield f"chunk{i};".encode()
            # The next chunk exists only once the client has received this one.
            await next_chunk.wait()
            next_chunk = trio.Event()

    async def handler(request: Request) -> Response | StreamResponse:
        if request.path == "/again":
            return Response.json({})
        return StreamResponse(chunks=chunks(), content_type=b"text/plain")

    with trio.fail_after(GUARD):
        server = HTTPServer(handler)
        async with await _serve(nursery, server) as pool:
            async with await pool.request(b"POST", b"/s", b"{}") as response:
                assert response.status == 200
                assert (b"transfer-encoding", b"chunked") in response.headers
                for i in range(3):
                    assert await response.receive() == f"chunk{i};".encode()
                    assert produced == list(range(i + 1))
                    next_chunk.set()
                assert await response.receive() == b""
                assert response.complete
            # The connection went back to the pool after the terminating chunk.
            async with await pool.request(b"GET", b"/again") as response:
                await response.read()
        assert server.connections == 1


async def test_abandoned_response_closes_the_connection(nursery: trio.Nursery) -> None:
    gone: list[bool] = []
    finished = trio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: x\n\n"
                await trio.sleep(0.01)
        finally:
            finished.set()

    async def handler(request: Request) -> Response | StreamResponse:
        if request.path == "/stream":
            return StreamResponse(chunks=_recording(endless(), request, gone))
        return Response.json({})

    with trio.fail_after(GUARD):
        server = HTTPServer(handler)
        async with await _serve(nursery, server) as pool:
            response = await pool.request(b"POST", b"/stream", b"{}")
            assert await response.receive() == b"data: x\n\n"
            assert not response.complete
            await response.aclose()
            # The model server learns at once that nobody listens any more.
            await finished.wait()
            assert gone == [True]
            # Not returned to the pool: the next request needs a new connection.
            async with await pool.request(b"GET", b"/ok") as again:
                await again.read()
        assert server.connections == 2


async def _recording(
    chunks: AsyncIterator[bytes], request: Request, gone: list[bool]
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        gone.append(request.client_gone)


async def test_cancelled_request_closes_the_connection(nursery: trio.Nursery) -> None:
    started = trio.Event()
    stopped = trio.Event()
    cancelled: list[bool] = []

    async def handler(request: Request) -> Response:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(request.client_gone)
            stopped.set()

    with trio.fail_after(GUARD):
        server = HTTPServer(handler)
        async with await _serve(nursery, server) as pool:
            with trio.CancelScope() as scope:
                nursery.start_soon(_cancel_when, started, scope)
                await pool.request(b"POST", b"/slow", b"{}")
            assert scope.cancelled_caught
            await stopped.wait()
            assert cancelled == [True]


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def test_read_timeout_before_the_status_line(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    with trio.fail_after(GUARD):
        server = HTTPServer(handler)
        port: int = await nursery.start(server.serve)
        async with UpstreamPool(host="127.0.0.1", port=port, read_timeout=0.2) as pool:
            started = trio.current_time()
            with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0\.2 s"):
                await pool.request(b"POST", b"/", b"{}")
            assert trio.current_time() - started < 2


async def test_read_timeout_mid_body(nursery: trio.Nursery) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield b"first"
        await trio.sleep_forever()

    async def handler(request: Request) -> StreamResponse:
        return StreamResponse(chunks=stalls())

    with trio.fail_after(GUARD):
        server = HTTPServer(handler)
        port: int = await nursery.start(server.serve)
        async with (
            UpstreamPool(host="127.0.0.1", port=port, read_timeout=0.2) as pool,
            await pool.request(b"POST", b"/", b"{}") as response,
        ):
            assert await response.receive() == b"first"
            with pytest.raises(UpstreamTimeout):
                await response.receive()


async def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never_connects(*args: object, **kwargs: object) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    monkeypatch.setattr(trio, "open_tcp_stream", never_connects)
    with trio.fail_after(GUARD):
        async with UpstreamPool(host="127.0.0.1", port=9, connect_timeout=0.1) as pool:
            with pytest.raises(UpstreamTimeout, match="timed out"):
                await pool.request(b"GET", b"/")


async def test_refused_connection_is_an_upstream_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(GUARD):
            async with UpstreamPool(host="127.0.0.1", port=port) as pool:
                with pytest.raises(UpstreamError, match="cannot connect") as info:
                    await pool.request(b"GET", b"/")
                assert not isinstance(info.value, UpstreamTimeout)


async def test_closed_pool_refuses_new_connections(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        pool = await _serve(nursery, HTTPServer(_echo))
        async with pool, await pool.request(b"GET", b"/") as response:
            await response.read()
        with pytest.raises(UpstreamError, match="closed"):
            await pool.request(b"GET", b"/")
