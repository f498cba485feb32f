"""The model server's answer on its way to the client: what an odd upstream answer becomes (a
502, never a 500), and which headers are relayed.

A raw model server over a real socket answers what each test needs; the worker's stages 8 and 9
(``send_job`` then ``relay``, as :meth:`pyworker._pipeline.Pipeline.exchange` runs them) relay
its answer to a hand-made ASGI ``send``, or to a client through Hypercorn.
"""

from __future__ import annotations

import gzip
import json
import logging
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from fakes import unused_http
from hypercorn.config import Config
from hypercorn.trio import serve

from pyworker import Endpoint, Job
from pyworker._model import Answer, ModelServer, send_job
from pyworker._relay import relay
from pyworker._typing import ASGIApp, Message, Receive, Scope, Send
from pyworker._upstream import UpstreamPool

GUARD = 10  # seconds: the absolute bound on each test
ENDPOINT = Endpoint(
    route="/generate", parse=lambda payload: Job(workload=1, body=b"{}", upstream_path="/generate")
)


async def _model_server(nursery: trio.Nursery, answer: bytes) -> UpstreamPool:
    """A model server answering ``answer`` to every request, then closing."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                more = await stream.receive_some(65536)
                if not more:
                    return
                data += more
            await stream.send_all(answer)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return UpstreamPool(host="127.0.0.1", port=port, connect_timeout=2.0, read_timeout=2.0)


async def _exchange(pool: UpstreamPool, send: Send) -> None:
    async with unused_http() as http:  # no backend's own run() here
        model = ModelServer(url="", upstream=pool, http=http)
        answer: Answer = await send_job(ENDPOINT, ENDPOINT.parse({}), model)
        try:
            await relay(answer, send)
        finally:
            await answer.aclose()


async def _relayed(nursery: trio.Nursery, answer: bytes) -> tuple[int, list[Any], bytes]:
    """(status, headers, body) as the relay sends them for the model server's ``answer``."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async with await _model_server(nursery, answer) as pool:
        await _exchange(pool, send)
    start, *body = sent
    assert not body[-1]["more_body"]
    return start["status"], start["headers"], b"".join(m["body"] for m in body)


# -- odd answers: 502 with a JSON error, through a real ASGI server -----------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 000 Zero\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 999 High\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x01K\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: a\nb\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: a\x01b\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx\x01a: b\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: " + b"9" * 5000 + b"\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ],
    ids=[
        "status-000",
        "status-999",
        "reason-ctl",
        "value-nul",
        "value-cr",
        "value-lf",
        "value-ctl",
        "name-ctl",
        "length-5000-digits",
        "101-unasked",
        "te-gzip-chunked",
        "many-100-continue",
    ],
)
async def test_an_odd_answer_is_a_502_with_a_json_error(
    nursery: trio.Nursery, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            await _exchange(pool, send)

    with trio.fail_after(GUARD):
        pool = await _model_server(nursery, answer)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = logging.getLogger("test.hypercorn")
        # Hypercorn declares its own TypedDict scopes and events: the worker's loose ASGI types
        # meet them as an ASGIApp, as the worker's own app does (pyworker._server.serve).
        asgi: ASGIApp = app
        binds = await nursery.start(partial(serve, asgi, config))
        async with pool, httpx.AsyncClient() as client:
            response = await client.post(binds[0] + "/generate", content=b"{}")
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/json"
        assert "model server broke HTTP/1.1" in json.loads(response.content)["error"]
        assert not [r for r in caplog.records if r.name == "test.hypercorn"]  # no traceback


# -- which headers are relayed ---------------------------------------------------------------


async def test_hop_by_hop_headers_are_not_relayed(nursery: trio.Nursery) -> None:
    # RFC 9110 §7.6.1: Connection and the fields it names are for this hop only, as are
    # Proxy-Connection, Keep-Alive and the rest of the hop-by-hop fields.
    answer = (
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: X-Private, keep-alive\r\nConnection: X-Other\r\n"
        b"Proxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"X-Private: secret\r\nX-Other: 1\r\nX-Public: ok\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    with trio.fail_after(GUARD):
        status, headers, body = await _relayed(nursery, answer)
    assert (status, body) == (200, b"ok")
    assert headers == [
        (b"x-public", b"ok"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"2"),
    ]


async def test_length_and_chunked_together_relay_no_length(nursery: trio.Nursery) -> None:
    # RFC 9112 §6.3 ¶3: the chunked framing wins, and the length is not forwarded: relayed, it
    # would frame the client's response wrongly.
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    with trio.fail_after(GUARD):
        status, headers, body = await _relayed(nursery, answer)
    assert (status, headers, body) == (200, [], b"hello")


GZIP_OK = gzip.compress(b"ok", mtime=0)


@pytest.mark.parametrize(
    ("framing", "body", "relayed"),
    [
        (b"Content-Length: 22", GZIP_OK, [(b"content-length", b"22")]),
        (b"Transfer-Encoding: chunked", b"16\r\n%s\r\n0\r\n\r\n" % GZIP_OK, []),
        (
            b"Content-Length: 99\r\nTransfer-Encoding: chunked",
            b"10\r\n%s\r\n6\r\n%s\r\n0\r\n\r\n" % (GZIP_OK[:16], GZIP_OK[16:]),
            [],
        ),
        (
            b"Connection: Content-Encoding\r\nContent-Length: 22",
            GZIP_OK,
            [(b"content-length", b"22")],
        ),
    ],
    ids=["length", "chunked", "length-and-chunked", "connection-names-it"],
)
async def test_a_content_coded_body_is_relayed_untouched_with_its_coding(
    nursery: trio.Nursery, framing: bytes, body: bytes, relayed: list[tuple[bytes, bytes]]
) -> None:
    """The worker neither decodes nor re-codes content: the gzip bytes go out as they came,
    and so does the Content-Encoding that says what they are (even when a Connection header
    names it: dropping it would pass the gzip bytes off as plain text)."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n%s\r\n\r\n%s" % (framing, body)
    with trio.fail_after(GUARD):
        status, headers, got = await _relayed(nursery, answer)
    assert (status, got) == (200, GZIP_OK)
    assert headers == [(b"content-encoding", b"gzip"), *relayed]
