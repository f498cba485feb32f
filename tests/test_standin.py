"""End-to-end tests of the stand-in autoscaler, the key fetcher against it, and the client."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.lowlevel
from harness import accept
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from pyworker._auth import AuthData, Authenticator, AuthError
from pyworker._pubkey import fetch_public_key, pubkey_urls
from pyworker.devtools import RouterSigner, StandIn, client, describe_report, serve_standin

REPORT = {
    "id": 1,
    "url": "http://127.0.0.1:9",
    "loadtime": 3.2,
    "max_perf": 812.0,
    "cur_perf": 100.0,
    "cur_load": 12.5,
    "error_msg": "",
    "num_requests_working": 2,
    "num_requests_recieved": 3,
    "additional_disk_usage": 0.0,
    "cur_capacity": 0,
    "max_capacity": 0,
}
REPORT_LINE = (
    "report from worker 1: state=ready loadtime=3.2s max_perf=812.0 cur_load=12.5 cur_perf=100.0"
    " in_flight=2 received=3 error=''"
)


@attrs.define
class Running:
    standin: StandIn
    url: str
    lines: list[str]


@pytest.fixture
async def router(signer: RouterSigner) -> AsyncIterator[Running]:
    lines: list[str] = []
    standin = StandIn(signer=signer, on_report=lines.append)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_standin, standin, shutdown=shutdown))
        yield Running(standin, url, lines)
        shutdown.set()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


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


# --- the stand-in's routes --------------------------------------------------------------------


async def test_route_hands_out_auth_data_that_the_authenticator_accepts(
    router: Running, http: httpx.AsyncClient
) -> None:
    worker_url = "http://127.0.0.1:9"
    router.standin.worker_url = worker_url
    key = await http.get(f"{router.url}/pubkey/")
    assert key.status_code == 200
    assert key.headers["content-type"].startswith("text/plain")
    authenticator = Authenticator(own_url=worker_url)
    authenticator.set_public_key(key.content)

    replies = []
    for cost in ["256", 256]:
        body = {"endpoint": "my-group", "cost": cost, "api_key": "ignored"}
        response = await http.post(f"{router.url}/route/", json=body)
        assert response.status_code == 200
        replies.append(response.json())
    assert [r["reqnum"] for r in replies] == [1, 2]
    assert [r["cost"] for r in replies] == ["256", 256]  # types kept, as the router does
    assert {"url", "signature", "cost", "endpoint", "reqnum"} <= replies[0].keys()
    assert replies[0]["url"] == worker_url

    for reply in replies:
        accept(authenticator, AuthData.parse(reply))  # extra fields (request_idx) are ignored
    with pytest.raises(AuthError, match="replayed"):
        accept(authenticator, AuthData.parse(replies[0]))


async def test_route_can_sign_the_2025_message(router: Running, http: httpx.AsyncClient) -> None:
    router.standin.worker_url = "http://127.0.0.1:9"
    router.standin.sign_2025 = True
    reply = (await http.post(f"{router.url}/route/", json={"endpoint": "g", "cost": 1})).json()
    authenticator = Authenticator(own_url="http://127.0.0.1:9")
    authenticator.set_public_key(router.standin.signer.public_pem())
    accept(authenticator, AuthData.parse(reply))
    authenticator = Authenticator(accept_2025=False)
    authenticator.set_public_key(router.standin.signer.public_pem())
    with pytest.raises(AuthError, match="invalid signature"):
        accept(authenticator, AuthData.parse(reply))


async def test_route_without_a_worker_is_503(router: Running, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{router.url}/route/", json={"endpoint": "g", "cost": 1})
    assert response.status_code == 503
    assert response.json() == {"error": "no worker registered yet"}


@pytest.mark.parametrize("path", ["/route/", "/worker_status/"])
@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "body is not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "body is not valid JSON"),
    ],
)
async def test_malformed_bodies_are_400(
    router: Running, http: httpx.AsyncClient, path: str, body: bytes, error: str
) -> None:
    router.standin.worker_url = "http://127.0.0.1:9"
    response = await http.post(f"{router.url}{path}", content=body)
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert router.standin.reports_received == 0


async def test_route_reports_bad_fields(router: Running, http: httpx.AsyncClient) -> None:
    router.standin.worker_url = "http://127.0.0.1:9"
    response = await http.post(f"{router.url}/route/", json={"cost": [1]})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "endpoint": "missing parameter",
            "cost": "must be a string or a number, not array",
        }
    }
    assert router.standin.reqnum == 0


async def test_reports_are_stored_and_printed(router: Running, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{router.url}/worker_status/", json=REPORT)
    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert router.lines == [REPORT_LINE]
    assert (await http.get(f"{router.url}/reports")).json() == [REPORT]
    # With no worker set, the report's URL is where clients get routed.
    assert router.standin.worker_url == REPORT["url"]


async def test_default_report_printer_writes_one_line_to_stdout(
    signer: RouterSigner, capsys: pytest.CaptureFixture[str]
) -> None:
    standin = StandIn(signer=signer, worker_url="http://127.0.0.1:9")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_standin, standin, shutdown=shutdown))
        async with httpx.AsyncClient() as http:
            await http.post(f"{url}/worker_status/", json=REPORT)
        shutdown.set()
    assert capsys.readouterr().out == REPORT_LINE + "\n"
    assert standin.worker_url == "http://127.0.0.1:9"  # an explicit worker URL is kept


def test_describe_report_infers_state_and_tolerates_odd_values() -> None:
    assert describe_report({}) == (
        "report from worker ?: state=loading loadtime=- max_perf=- cur_load=- cur_perf=-"
        " in_flight=- received=- error=''"
    )
    line = describe_report({"id": 2, "error_msg": "boom", "max_perf": "x", "loadtime": None})
    assert line.startswith("report from worker 2: state=error loadtime=- max_perf='x'")
    assert line.endswith("error='boom'")
    assert "state=draining" in describe_report({"state": "draining", "max_perf": 5})


async def test_slow_and_failing_autoscaler_knobs(router: Running, http: httpx.AsyncClient) -> None:
    router.standin.report_status = 500
    router.standin.report_delay = 0.05
    start = trio.current_time()
    response = await http.post(f"{router.url}/worker_status/", json=REPORT)
    assert trio.current_time() - start >= 0.05
    assert (response.status_code, response.json()) == (500, {"ok": False})
    assert router.standin.reports_received == 1  # received, even if answered with an error


async def test_reports_are_bounded_and_waitable(signer: RouterSigner) -> None:
    standin = StandIn(signer=signer, max_reports=3, on_report=None)

    async def receive_later() -> None:
        for n in range(5):
            await trio.lowlevel.checkpoint()
            standin.receive_report({"id": n})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_later)
        await standin.wait_for_reports(5)
    assert [r["id"] for r in standin.reports] == [2, 3, 4]


# --- fetching the key from the stand-in (real sockets, real clock, short back-off) -----------


async def test_fetch_retries_while_the_router_answers_500(
    router: Running, signer: RouterSigner
) -> None:
    router.standin.pubkey_failures = 2
    asked = 0

    async def count(request: httpx.Request) -> None:
        nonlocal asked
        asked += 1

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
        pem = await fetch_public_key(pubkey_urls([router.url]), http=http, backoff=(0.01,))
    assert pem == signer.public_pem()
    assert asked == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_fetch_waits_for_a_router_that_starts_late(signer: RouterSigner) -> None:
    port = free_port()
    tried_twice = trio.Event()
    attempts = 0
    fetched: list[bytes] = []
    done = trio.Event()

    async def count(request: httpx.Request) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            tried_twice.set()

    async def fetch(http: httpx.AsyncClient) -> None:
        urls = [f"http://127.0.0.1:{free_port()}/pubkey/", f"http://127.0.0.1:{port}/pubkey/"]
        fetched.append(await fetch_public_key(urls, http=http, backoff=(0.01, 0.02)))
        done.set()

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
            nursery.start_soon(fetch, http)
            with trio.fail_after(10):
                await tried_twice.wait()  # both URLs refused the connection at least once
                await nursery.start(
                    partial(serve_standin, StandIn(signer=signer), port=port, shutdown=shutdown)
                )
                await done.wait()
        shutdown.set()  # after closing the client: an idle keep-alive would hold the drain
    assert fetched == [signer.public_pem()]


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


async def test_send_raises_route_error_and_transport_error(
    router: Running, http: httpx.AsyncClient
) -> None:
    with pytest.raises(client.RouteError) as info:
        await client.send("/echo", {}, autoscaler=router.url, http=http)
    assert info.value.status == 503
    router.standin.worker_url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(httpx.ConnectError):
        await client.send("/echo", {}, autoscaler=router.url, http=http)


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
    assert (status, out, err) == (0, "data: one\n\ndata: two\n\n", "")

    worker.authenticator.own_url = "http://elsewhere"
    status = await trio.to_thread.run_sync(client.main, [*base, "/echo", "{}"])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err.splitlines()[0] == "HTTP 401"

    unreachable = ["--autoscaler", f"http://127.0.0.1:{free_port()}", "/echo", "{}"]
    status = await trio.to_thread.run_sync(client.main, unreachable)
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err.startswith("connection error: ConnectError")
    assert len(err.splitlines()) == 1  # no traceback


async def test_client_cli_reads_payload_file(
    router: Running, worker: Worker, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    path = tmp_path / "payload.json"
    path.write_text('{"prompt": "from a file"}')
    argv = ["--autoscaler", router.url, "--payload-file", str(path), "/echo"]
    assert await trio.to_thread.run_sync(client.main, argv) == 0
    assert json.loads(capsys.readouterr().out)["payload"] == {"prompt": "from a file"}


# --- python -m pyworker.autoscaler -----------------------------------------------------------


async def test_autoscaler_cli_serves_and_stops_on_sigterm() -> None:
    argv = [sys.executable, "-m", "pyworker.autoscaler", "--worker-url", "http://127.0.0.1:9"]
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            output = b""
            while b"listening on http://" not in output or not output.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, f"the stand-in exited early: {output!r}"
                output += chunk
            url = output.split(b"listening on ")[1].split()[0].decode()
            async with httpx.AsyncClient(timeout=10) as http:
                key = await http.get(f"{url}/pubkey/")
                assert key.text.startswith("-----BEGIN PUBLIC KEY-----")
                route = await http.post(f"{url}/route/", json={"endpoint": "g", "cost": 1})
                assert route.json()["url"] == "http://127.0.0.1:9"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
