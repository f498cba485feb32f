"""End-to-end tests of the client, through the stand-in autoscaler to a tiny worker that checks
signatures and echoes."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.lowlevel
from fakes import free_port
from harness import Running, accept
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from pyworker._auth import AuthData, Authenticator, AuthError
from pyworker.devtools import (
    RouterSigner,
    client,
)

# --- a tiny worker that checks signatures and echoes ----------------------------------------


@attrs.define
class Worker:
    url: str
    authenticator: Authenticator
    release: trio.Event


def echo_app(authenticator: Authenticator, release: trio.Event) -> QuartTrio:
    app = QuartTrio("echo-worker")

    async def checked() -> tuple[Any, AuthData]:
        envelope = await request.get_json()
        auth = AuthData.parse(envelope["auth_data"])
        accept(authenticator, auth)
        return envelope["payload"], auth

    @app.errorhandler(AuthError)
    async def refused(exc: AuthError) -> tuple[dict[str, Any], int]:
        return {"error": exc.reason}, exc.status

    @app.post("/echo")
    async def echo() -> dict[str, Any]:
        payload, auth = await checked()
        return {"payload": payload, "reqnum": auth.reqnum}

    @app.post("/auth_data")
    async def auth_data() -> dict[str, Any]:
        await checked()
        envelope = await request.get_json()
        return {"auth_data": envelope["auth_data"]}

    @app.post("/stream")
    async def stream() -> Response:
        await checked()

        async def events() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            await release.wait()  # the client must have printed "one" before "two" exists
            yield b"data: two\n\n"

        response = Response(events(), content_type="text/event-stream")
        response.timeout = None
        return response

    return app


@pytest.fixture
async def worker(router: Running, signer: RouterSigner) -> AsyncIterator[Worker]:
    authenticator = Authenticator()
    authenticator.set_public_key(signer.public_pem())
    release = trio.Event()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.echo_worker")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(serve, echo_app(authenticator, release), config, shutdown_trigger=shutdown.wait)
        )
        authenticator.own_url = binds[0]
        router.standin.worker_url = binds[0]
        yield Worker(binds[0], authenticator, release)
        release.set()
        shutdown.set()


# --- the client ------------------------------------------------------------------------------


async def test_send_json_through_router_to_worker(router: Running, worker: Worker) -> None:
    payload = {"prompt": "héllo", "max_response_tokens": 4}
    answer = await client.send("/echo", payload, autoscaler=router.url, endpoint="g", cost=4)
    assert answer.status == 200
    assert not answer.streamed
    assert answer.content_type.startswith("application/json")
    assert answer.json() == {"payload": payload, "reqnum": 1}
    answer = await client.send("echo", [1, 2], autoscaler=router.url)  # a second, fresh reqnum
    assert answer.json() == {"payload": [1, 2], "reqnum": 2}


async def test_send_forwards_the_routers_answer_verbatim(router: Running, worker: Worker) -> None:
    answer = await client.send("/auth_data", {}, autoscaler=router.url, endpoint="g", cost=2)
    forwarded = answer.json()["auth_data"]
    assert (forwarded["request_idx"], forwarded["reqnum"], forwarded["cost"]) == (7000, 1, 2)
    assert set(forwarded) == {"cost", "endpoint", "reqnum", "request_idx", "signature", "url"}


async def test_send_streams_chunks_as_they_arrive(
    router: Running, worker: Worker, http: httpx.AsyncClient
) -> None:
    seen: list[bytes] = []

    def on_chunk(chunk: bytes) -> None:
        seen.append(chunk)
        worker.release.set()  # the server sends "two" only after "one" reached us

    with trio.fail_after(10):  # a client that buffered the stream would hang here
        answer = await client.send(
            "/stream", {"prompt": "x"}, autoscaler=router.url, http=http, on_chunk=on_chunk
        )
    assert answer.status == 200
    assert answer.streamed
    assert answer.content_type.startswith("text/event-stream")
    assert b"".join(seen) == answer.body == b"data: one\n\ndata: two\n\n"
    assert seen[0] == b"data: one\n\n"


async def test_send_returns_refusals(
    router: Running, worker: Worker, http: httpx.AsyncClient
) -> None:
    worker.authenticator.set_public_key(RouterSigner.generate().public_pem())
    called: list[bytes] = []
    answer = await client.send(
        "/stream", {}, autoscaler=router.url, http=http, on_chunk=called.append
    )
    assert (answer.status, answer.json()) == (401, {"error": "invalid signature"})
    assert called == []  # only a successful stream is handed to on_chunk


async def test_send_raises_route_error_and_worker_error(
    router: Running, http: httpx.AsyncClient
) -> None:
    with pytest.raises(client.RouteError) as info:
        await client.send("/echo", {}, autoscaler=router.url, http=http)
    assert info.value.status == 503
    # A worker that cannot be reached re-routes at once, up to max_attempts workers in all.
    dead = f"http://127.0.0.1:{free_port()}"
    router.standin.worker_url = dead
    before = router.standin.routes_received
    with pytest.raises(client.WorkerError) as failed:
        await client.send("/echo", {}, autoscaler=router.url, http=http)
    assert failed.value.url == dead
    assert isinstance(failed.value.cause, httpx.ConnectError)
    assert [retry.url for retry in failed.value.retries] == [dead] * 4
    assert router.standin.routes_received - before == 5
    assert len({call.request_idx for call in list(router.standin.route_calls)[-5:]}) == 1


async def test_client_cli(
    router: Running, worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--autoscaler", router.url, "--cost", "3"]
    status = await trio.to_thread.run_sync(client.main, [*base, "/echo", '{"prompt": "hi"}'])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert json.loads(out) == {"payload": {"prompt": "hi"}, "reqnum": 1}

    worker.release.set()
    status = await trio.to_thread.run_sync(client.main, [*base, "/stream", "{}"])
    out, err = capsys.readouterr()
    assert (status, out, err) == (0, "one\ntwo\n", "")  # each event's data, not SSE lines

    worker.authenticator.own_url = "http://elsewhere"
    status = await trio.to_thread.run_sync(client.main, [*base, "/echo", "{}"])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err.splitlines()[0] == "HTTP 401"

    unreachable = ["--autoscaler", f"http://127.0.0.1:{free_port()}", "/echo", "{}"]
    status = await trio.to_thread.run_sync(client.main, unreachable)
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err.startswith("cannot reach the router: ConnectError")
    assert len(err.splitlines()) == 1  # no traceback


async def test_client_cli_reads_payload_file(
    router: Running, worker: Worker, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    path = tmp_path / "payload.json"
    path.write_text('{"prompt": "from a file"}')
    argv = ["--autoscaler", router.url, "--payload-file", str(path), "/echo"]
    assert await trio.to_thread.run_sync(client.main, argv) == 0
    assert json.loads(capsys.readouterr().out)["payload"] == {"prompt": "from a file"}
