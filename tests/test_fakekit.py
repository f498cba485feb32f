"""The fake-server kit in-process, serving: the HTTP server, the log lines, a fake's start-up and
ASGI through hypercorn. The capacity model, the knobs and the faults (what a fake serves, and
when it fails) are in ``test_fakekit_capacity.py``."""

from __future__ import annotations

import io
import re
import signal
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from backends._fakekit import (
    HTTPServer,
    Knobs,
    Launch,
    LogWriter,
    PlainFake,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    Startup,
    StartupFailed,
    StreamResponse,
    bare,
    serve_asgi,
    serve_fake,
)

# --- HTTP server -------------------------------------------------------------------------


async def _start(nursery: trio.Nursery, server: HTTPServer) -> str:
    await nursery.start(server.serve)
    return server.url


async def _echo(request: Request) -> Response:
    return Response.json(
        {"method": request.method, "path": request.path, "size": len(request.body)}
    )


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    server = HTTPServer(_echo)
    url = await _start(nursery, server)
    async with httpx.AsyncClient(base_url=url) as client:
        for size in (0, 10, 100_000):
            response = await client.post("/x?y=1", content=b"a" * size)
            assert response.status_code == 200
            assert response.json() == {"method": "POST", "path": "/x", "size": size}
            assert response.headers["content-length"] == str(len(response.content))
    assert server.requests == 3
    assert server.connections == 1


async def test_stream_is_delivered_chunk_by_chunk(nursery: trio.Nursery) -> None:
    proceed = trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        # The second chunk exists only once the client has seen the first: no buffering.
        await proceed.wait()
        yield b"second"

    async def handler(request: Request) -> StreamResponse:
        return StreamResponse(chunks=chunks(), content_type=b"text/plain")

    url = await _start(nursery, HTTPServer(handler))
    async with httpx.AsyncClient(base_url=url) as client, client.stream("GET", "/") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"] == "text/plain"
        received = response.aiter_raw()
        with trio.fail_after(5):
            assert await anext(received) == b"first"
        proceed.set()
        assert [chunk async for chunk in received] == [b"second"]


async def _raw_request(url: str, request: bytes) -> trio.SocketStream:
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    return stream


_GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            received += chunk
    await stream.aclose()
    return received


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    url = await _start(nursery, HTTPServer(_echo))
    first = b"POST /one HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    second = b"GET /two HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    received = await _read_until_closed(await _raw_request(url, first + second))
    answers = received.split(b"HTTP/1.1 200 OK\r\n")
    assert len(answers) == 3
    assert answers[1].endswith(b'{"method":"POST","path":"/one","size":3}')
    assert b"connection: close\r\n" in answers[2]
    assert answers[2].endswith(b'{"method":"GET","path":"/two","size":0}')


async def test_http10_stream_ends_with_the_connection(nursery: trio.Nursery) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"two"

    async def handler(request: Request) -> StreamResponse:
        return StreamResponse(chunks=chunks())

    url = await _start(nursery, HTTPServer(handler))
    received = await _read_until_closed(await _raw_request(url, b"GET / HTTP/1.0\r\n\r\n"))
    head, body = received.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head
    assert b"connection: close" in head
    assert body == b"one two"


async def test_disconnect_cancels_a_computing_handler(nursery: trio.Nursery) -> None:
    started = trio.Event()
    gone: list[bool] = []

    cancelled = trio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            gone.append(request.client_gone)
            cancelled.set()

    url = await _start(nursery, HTTPServer(handler))
    stream = await _raw_request(url, _GET)
    with trio.fail_after(5):
        await started.wait()
        await stream.aclose()
        await cancelled.wait()
    assert gone == [True]


async def test_disconnect_cancels_a_stream(nursery: trio.Nursery) -> None:
    closed = trio.Event()
    gone: list[bool] = []

    async def chunks(request: Request) -> AsyncIterator[bytes]:
        try:
            yield b"event\n"
            await trio.sleep_forever()
        finally:
            gone.append(request.client_gone)
            closed.set()

    async def handler(request: Request) -> StreamResponse:
        return StreamResponse(chunks=chunks(request))

    url = await _start(nursery, HTTPServer(handler))
    stream = await _raw_request(url, _GET)
    with trio.fail_after(5):
        head = b""
        while b"event\n" not in head:
            head += await stream.receive_some()
        await stream.aclose()
        await closed.wait()
    assert gone == [True]


async def test_body_too_large_is_413_and_the_server_goes_on(nursery: trio.Nursery) -> None:
    url = await _start(nursery, HTTPServer(_echo, max_body_size=1000))

    async def chunked_body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"b" * 500

    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/", content=b"a" * 100_000)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert "larger than 1000" in response.json()["error"]
        response = await client.post("/", content=chunked_body())
        assert response.status_code == 413
        response = await client.post("/", content=b"a" * 1000)
        assert response.status_code == 200


async def test_malformed_request_is_400(nursery: trio.Nursery) -> None:
    url = await _start(nursery, HTTPServer(_echo))
    received = await _read_until_closed(await _raw_request(url, b"NOT HTTP AT ALL\r\n\r\n"))
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_a_failing_handler_answers_500(
    nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    async def handler(request: Request) -> Response:
        raise ValueError("boom")

    url = await _start(nursery, HTTPServer(handler))
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/")
    assert response.status_code == 500
    assert "ValueError: boom" in capsys.readouterr().err


# --- log -----------------------------------------------------------------------------------


def test_log_lines_are_timestamped_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "fake.log"
    path.write_text("earlier line\n")
    log = LogWriter.open(path)
    log.info("loading model: 40%")
    # Flushed per line: visible before the writer is closed.
    assert path.read_text().endswith(" INFO loading model: 40%\n")
    log.error("Error: model failed to load: x")
    log.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier line"
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(stamp + r" INFO loading model: 40%", lines[1])
    assert re.fullmatch(stamp + r" ERROR Error: model failed to load: x", lines[2])


def test_log_lines_go_to_the_stream_their_server_uses() -> None:
    out, err = io.StringIO(), io.StringIO()
    log = LogWriter(out, err, line_format=bare, levels_on_stderr=True)
    log.info("Starting server")
    log.line("to stdout")
    log.line("to stderr", stderr=True)
    assert out.getvalue() == "to stdout\n"
    assert err.getvalue() == "Starting server\nto stderr\n"
    # One stream for both kinds by default, as with a log file.
    both = io.StringIO()
    LogWriter(both).line("x", stderr=True)
    assert both.getvalue() == "x\n"


# --- a fake's start-up -----------------------------------------------------------------------


def _plain_fake(startup: Startup | None = None) -> tuple[PlainFake, io.StringIO]:
    out = io.StringIO()
    return PlainFake(_echo, LogWriter(out), startup or Startup()), out


async def test_serve_fake_starts_a_plain_fake(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake, out = _plain_fake(Startup(ready="ready on {url} (port {port})"))
    port_file = tmp_path / "port"
    knobs = Knobs(load_delay=0, port_file=str(port_file))
    launch: Launch = await nursery.start(serve_fake, fake, knobs)
    assert launch.url == f"http://127.0.0.1:{launch.port}"
    assert port_file.read_text() == f"{launch.port}\n"
    async with httpx.AsyncClient(base_url=launch.url) as client:
        assert (await client.get("/x")).json()["path"] == "/x"
    messages = [line.split(" ", 2)[2] for line in out.getvalue().splitlines()]
    assert messages == [
        *(f"loading model: {percent}%" for percent in (0, 20, 40, 60, 80, 100)),
        f"ready on {launch.url} (port {launch.port})",
    ]


async def test_a_failed_start_returns_1_without_listening(tmp_path: Path) -> None:
    fake, out = _plain_fake()
    port_file = tmp_path / "port"
    knobs = Knobs(load_delay=0, fail_load="no weights", port_file=str(port_file))
    with trio.fail_after(5):
        assert await serve_fake(fake, knobs) == 1
    assert (
        out.getvalue().splitlines()[-1].endswith(" ERROR Error: model failed to load: no weights")
    )
    assert not port_file.exists()


async def test_a_port_in_use_fails_the_start() -> None:
    fake, out = _plain_fake()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(5):
            assert await serve_fake(fake, Knobs(load_delay=0, port=port)) == 1
    assert f"ERROR Error: cannot listen on 127.0.0.1:{port}: " in out.getvalue()


@attrs.define(eq=False)
class _FailsAfterListening:
    """A fake whose start fails once it listens (as SGLang's warm-up can)."""

    port: int | None = None

    async def start(self, launch: Launch) -> None:
        await launch.listen(_echo, on_bind_error=lambda exc: None)
        self.port = launch.port
        raise StartupFailed

    def stopping(self, signum: signal.Signals) -> None:
        pass


async def test_a_start_that_fails_after_listening_stops_listening() -> None:
    fake = _FailsAfterListening()
    with trio.fail_after(5):
        assert await serve_fake(fake, Knobs(load_delay=0)) == 1
    assert fake.port is not None
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", fake.port)


# --- ASGI through hypercorn ------------------------------------------------------------------


async def _hello_app(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"  # the kit answers lifespan itself
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


async def test_serve_asgi_gives_the_port_and_serves(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_asgi, _hello_app)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/there")).text == "hello /there"


async def test_serve_asgi_raises_the_bind_error_itself(nursery: trio.Nursery) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with trio.fail_after(5), pytest.raises(OSError, match="in use"):
            await nursery.start(partial(serve_asgi, _hello_app, port=taken.getsockname()[1]))
