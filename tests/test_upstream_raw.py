"""The upstream pool against a raw server, for behaviour the kit's well-mannered server never
shows: a server dying mid-body, stale connections and what is retried, when a connection is
reused, malformed answers, and the three timeouts (connect, first byte, idle)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import h11
import pytest
import trio

from pyworker._upstream import UpstreamError, UpstreamPool, UpstreamTimeout

GUARD = 10  # seconds: the absolute bound on each test


async def _raw_server(
    nursery: trio.Nursery,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    *,
    read_timeout: float = 2.0,
    first_byte_timeout: float | None = None,
) -> UpstreamPool:
    """A pool to a raw server that answers with ``handler``: 2 s to connect, then the pool's
    ``read_timeout`` and ``first_byte_timeout`` (by default ``read_timeout``, as in the pool)."""

    async def guarded(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(partial(trio.serve_tcp, guarded, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return UpstreamPool(
        host="127.0.0.1",
        port=port,
        connect_timeout=2.0,
        read_timeout=read_timeout,
        first_byte_timeout=read_timeout if first_byte_timeout is None else first_byte_timeout,
    )


async def _read_request(stream: trio.SocketStream) -> None:
    """Read one whole request (head and body) from ``stream``."""
    parser = h11.Connection(h11.SERVER)
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return
            parser.receive_data(data)
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return


async def _next_request(stream: trio.SocketStream) -> bool:
    """Read one bodyless request's head; False if the client hung up instead."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(65536)
        if not more:
            return False
        data += more
    return True


async def test_server_dying_mid_body_is_an_upstream_error(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await stream.aclose()  # no terminating chunk: the response is incomplete

    with trio.fail_after(GUARD):
        pool = await _raw_server(nursery, handler)
        async with pool, await pool.request(b"POST", b"/", b"{}") as response:
            assert await response.receive() == b"hello"
            with pytest.raises(UpstreamError):
                await response.receive()
            assert not response.complete


async def test_connection_close_response_is_not_reused(nursery: trio.Nursery) -> None:
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await _read_request(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
        )
        await stream.aclose()

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            for _ in range(2):
                async with await pool.request(b"GET", b"/") as response:
                    assert await response.read() == b"ok"
        assert connections == 2


async def test_stale_idle_connection_is_retried_once(nursery: trio.Nursery) -> None:
    """A model server that closes idle keep-alive connections (uvicorn does after 5 s, so
    vLLM and SGLang do) must not cost the next request a 502."""
    connections = 0
    closed = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.aclose()  # keep-alive timeout: closed while the client holds it idle
        closed.set()

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            async with await pool.request(b"GET", b"/") as response:
                assert await response.read() == b"ok"
            await closed.wait()
            async with await pool.request(b"GET", b"/") as response:
                assert await response.read() == b"ok"
        assert connections == 2


async def test_stale_idle_connection_reset_is_retried_once(nursery: trio.Nursery) -> None:
    """A reset before any response byte: the server closed the connection with our request
    unread (a reset says so), so it never started on it."""
    requests = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal requests
        requests += 1
        await _read_request(stream)
        if requests == 1:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            # Once the reused connection's request arrives, reset it without answering.
            await trio.lowlevel.wait_readable(stream.socket)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain")
        await stream.aclose()

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            async with await pool.request(b"GET", b"/") as response:
                assert await response.read() == b"ok"
            async with await pool.request(b"GET", b"/") as response:
                assert await response.read() == b"again"
        assert requests == 2


async def test_request_the_server_read_is_not_sent_twice(nursery: trio.Nursery) -> None:
    """A model server that read a request and then hung up without answering (a crash of the
    request's handler, an OOM kill, a timeout in front of it) may have worked on it: the
    request is not silently sent again, the caller gets the error."""
    requests = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal requests
        requests += 1
        await _read_request(stream)
        if requests > 1:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain")
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await _read_request(stream)  # the second request, read in full: a clean close
        await stream.aclose()

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            async with await pool.request(b"POST", b"/", b"{}") as response:
                assert await response.read() == b"ok"
            try:
                retried = await pool.request(b"POST", b"/", b"{}")
            except UpstreamError:
                pass
            else:
                await retried.aclose()
        assert requests == 1


async def test_failure_on_a_fresh_connection_is_not_retried(nursery: trio.Nursery) -> None:
    attempts = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal attempts
        attempts += 1
        await _read_request(stream)
        await stream.aclose()  # a model server that drops the request: no blind retry

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            with pytest.raises(UpstreamError):
                await pool.request(b"POST", b"/", b"{}")
        assert attempts == 1


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", True),
    ],
    ids=["connection-close", "http10", "http10-keep-alive"],
)
async def test_connection_is_reused_only_when_the_answer_allows_it(
    nursery: trio.Nursery, answer: bytes, reused: bool
) -> None:
    """The server keeps every connection open and answers whatever arrives on it, so only the
    pool's own judgement keeps it from sending a second request on a connection it was told
    not to reuse (unlike a server that closes, which the idle check would catch anyway)."""
    requests_per_connection: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        requests_per_connection.append(0)
        mine = len(requests_per_connection) - 1
        while await _next_request(stream):
            requests_per_connection[mine] += 1
            await stream.send_all(answer)

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            for _ in range(2):
                async with await pool.request(b"GET", b"/") as response:
                    assert await response.read() == b"ok"
        assert requests_per_connection == ([2] if reused else [1, 1])


async def test_answer_read_until_close_closes_the_connection_at_once(
    nursery: trio.Nursery,
) -> None:
    """A body framed by the connection's end (no length, not chunked): the server half-closes
    and keeps listening; the pool must hang up at once rather than park the connection."""
    connections = 0
    hung_up = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if not await _next_request(stream):
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
        await stream.send_eof()
        if not await _next_request(stream):
            hung_up.set()

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            async with await pool.request(b"GET", b"/") as response:
                assert await response.read() == b"until close"
                assert response.complete
            await hung_up.wait()  # before any other request could have closed it
            async with await pool.request(b"GET", b"/") as response:
                assert await response.read() == b"until close"
        assert connections == 2


# -- malformed answers are UpstreamErrors, never anything else ----------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 000 Zero\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 999 High\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: " + b"9" * 5000 + b"\r\n\r\nok",
    ],
    ids=["status-000", "status-999", "value-nul", "value-cr", "length-5000-digits"],
)
async def test_a_malformed_head_is_an_upstream_error(nursery: trio.Nursery, answer: bytes) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(answer)

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            with pytest.raises(UpstreamError, match=r"broke HTTP/1\.1"):
                await pool.request(b"POST", b"/", b"{}")


# -- timeouts: connect, first byte (the whole head), idle between body bytes ---------------------


def test_timeout_defaults() -> None:
    pool = UpstreamPool(host="127.0.0.1", port=9)
    assert (pool.connect_timeout, pool.first_byte_timeout, pool.read_timeout) == (10, 600, 600)
    # Unless given, the first-byte bound is the read timeout, as it has always been.
    pool = UpstreamPool(host="127.0.0.1", port=9, read_timeout=30)
    assert pool.first_byte_timeout == 30
    pool = UpstreamPool(host="127.0.0.1", port=9, read_timeout=30, first_byte_timeout=900)
    assert (pool.first_byte_timeout, pool.read_timeout) == (900, 30)


async def _informational_forever(stream: trio.SocketStream) -> None:
    await _read_request(stream)
    while True:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        await trio.sleep(0.01)


async def test_a_stream_of_informational_responses_is_refused(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, _informational_forever) as pool:
            with pytest.raises(UpstreamError, match="informational"):
                await pool.request(b"POST", b"/", b"{}")


async def _trickle_head(stream: trio.SocketStream) -> None:
    """Two interim responses, then a status line one byte at a time, never finished."""
    await _read_request(stream)
    await stream.send_all(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n")
    for byte in b"HTTP/1.1 200 OK\r\nx-padding: " + b"p" * 100_000:
        await stream.send_all(bytes([byte]))
        await trio.sleep(0.02)


async def test_a_head_trickled_byte_by_byte_hits_the_first_byte_timeout(
    nursery: trio.Nursery,
) -> None:
    # Bytes keep coming, so no idle bound ever fires: the first-byte bound covers the head.
    with trio.fail_after(GUARD):
        # Only the read timeout given, as existing callers do: the first-byte bound follows it.
        async with await _raw_server(nursery, _trickle_head, read_timeout=0.3) as pool:
            with pytest.raises(UpstreamTimeout, match=r"within 0\.3 s \(first_byte_timeout\)"):
                await pool.request(b"POST", b"/", b"{}")


async def test_the_first_byte_timeout_is_not_the_idle_one(nursery: trio.Nursery) -> None:
    async def trickles_then_answers(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 102 Processing\r\n\r\n")
        await trio.sleep(0.3)  # a silent generation, longer than the idle bound
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    with trio.fail_after(GUARD):
        pool = await _raw_server(
            nursery, trickles_then_answers, read_timeout=0.05, first_byte_timeout=5.0
        )
        async with pool, await pool.request(b"POST", b"/", b"{}") as response:
            assert await response.read() == b"ok"

        pool = await _raw_server(nursery, _trickle_head, read_timeout=5.0, first_byte_timeout=0.3)
        async with pool:
            with pytest.raises(UpstreamTimeout, match="first_byte_timeout"):
                await pool.request(b"POST", b"/", b"{}")


async def test_a_request_the_server_never_reads_hits_the_first_byte_timeout(
    nursery: trio.Nursery,
) -> None:
    async def never_reads(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, never_reads, read_timeout=0.3) as pool:
            # Larger than any loopback socket buffers: sending it blocks.
            with pytest.raises(UpstreamTimeout, match=r"did not read the request.*first_byte"):
                await pool.request(b"POST", b"/", b"x" * (64 << 20))


async def test_the_read_timeout_mid_body_names_itself(nursery: trio.Nursery) -> None:
    async def stalls(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
        await trio.sleep_forever()

    with trio.fail_after(GUARD):
        pool = await _raw_server(nursery, stalls, read_timeout=0.2)
        async with pool, await pool.request(b"POST", b"/", b"{}") as response:
            assert await response.receive() == b"first"
            with pytest.raises(UpstreamTimeout, match=r"nothing for 0\.2 s.*\(read_timeout\)"):
                await response.receive()


async def test_a_callers_deadline_closes_the_connection(nursery: trio.Nursery) -> None:
    """The total bound is the caller's: its deadline, before the head or mid-body, cancels the
    request, and the connection is closed (the model server learns nobody listens)."""
    hung_up: list[trio.Event] = []

    async def handler(stream: trio.SocketStream) -> None:
        hung_up.append(trio.Event())
        mine = hung_up[-1]
        await _read_request(stream)
        if len(hung_up) == 2:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
        while await stream.receive_some(65536):
            pass
        mine.set()

    with trio.fail_after(GUARD):
        async with await _raw_server(nursery, handler) as pool:
            with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
                await pool.request(b"POST", b"/", b"{}")
            await hung_up[0].wait()

            async with await pool.request(b"POST", b"/", b"{}") as response:
                assert await response.receive() == b"first"
                with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
                    await response.receive()
            await hung_up[1].wait()
