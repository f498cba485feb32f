"""End-to-end tests of the stand-in autoscaler, the key fetcher against it, and the client."""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.lowlevel
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import accept
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from pyworker._auth import AuthData, Authenticator, AuthError
from pyworker._pubkey import fetch_public_key, pubkey_urls
from pyworker.devtools import (
    EndpointGroup,
    RouterSigner,
    StandIn,
    client,
    describe_deletions,
    describe_report,
    in_order,
    round_robin,
    serve_standin,
)

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
    # The same figures again (a heartbeat) are stored, not printed again; a change is.
    await http.post(f"{router.url}/worker_status/", json=REPORT)
    assert router.lines == [REPORT_LINE]
    await http.post(f"{router.url}/worker_status/", json=REPORT | {"cur_load": 9.0})
    assert len(router.lines) == 2
    assert "cur_load=9.0" in router.lines[1]
    assert len((await http.get(f"{router.url}/reports")).json()) == 3


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


# --- the newest generation: console, TLS root, request indices, knobs, /delete_requests/ ----

GROUP = EndpointGroup(id=5, name="g", api_key="endpoint-key", created_at=1.5)


async def test_console_lists_endpoint_groups_to_their_account(
    router: Running, http: httpx.AsyncClient
) -> None:
    standin = router.standin
    standin.endpoints = [GROUP, EndpointGroup(id=6, name="h", api_key="other")]
    listed = await http.get(f"{router.url}/api/v0/endptjobs/", params={"client_id": "me"})
    assert listed.status_code == 200  # no account key configured: anyone may look
    assert listed.json()["results"][0] == {
        "id": 5,
        "endpoint_name": "g",
        "api_key": "endpoint-key",
        "user_id": 1,
        "created_at": 1.5,
    }
    assert [group["id"] for group in listed.json()["results"]] == [5, 6]

    standin.account_key = "account"
    url = f"{router.url}/api/v0/endptjobs/"
    assert (await http.get(url)).status_code == 401
    assert (await http.get(url, headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await http.get(url, headers={"Authorization": "Bearer account"})).status_code == 200
    assert (await http.get(url, params={"api_key": "account"})).status_code == 200

    one = await http.get(f"{url}6/", params={"api_key": "account"})
    assert (one.status_code, one.json()["result"]["endpoint_name"]) == (200, "h")
    missing = await http.get(f"{url}7/", params={"api_key": "account"})
    assert (missing.status_code, missing.json()) == (404, {"error": "no endpoint group 7"})
    assert (await http.get(f"{url}6/")).status_code == 401


async def test_the_tls_root_is_a_ca_that_issues_certificates_for_local_addresses(
    router: Running, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    response = await http.get(f"{router.url}/static/jvastai_root.cer")
    assert response.status_code == 200
    assert router.standin.cert_downloads == 1
    root = x509.load_pem_x509_certificate(response.content)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    issued = router.standin.root_ca.issue("127.0.0.1", "localhost")
    leaf = x509.load_pem_x509_certificate(issued.certificate_pem)
    leaf.verify_directly_issued_by(root)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]

    cert_path, key_path = issued.write(tmp_path / "tls")
    assert cert_path.read_bytes() == issued.certificate_pem
    assert key_path.stat().st_mode & 0o077 == 0
    # A strict TLS client that trusts the root accepts the pair (VERIFY_X509_STRICT is on by
    # default from Python 3.13; set it here too).
    context = ssl.create_default_context(cadata=response.text)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]

    async def serve_once() -> None:
        async with listeners[0]:
            stream = await listeners[0].accept()
            async with stream:
                await stream.send_all(b"hello")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_once)
        with trio.fail_after(10):
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
            async with stream:
                assert await stream.receive_some() == b"hello"


async def test_the_console_signs_an_instance_certificate_request_with_its_root(
    router: Running, http: httpx.AsyncClient
) -> None:
    # What the start script's openssl sends: a subject and the SAN IP 0.0.0.0.
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyworker.vast.ai")])
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("0.0.0.0"))])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    url = f"{router.url}/api/v0/sign_cert/"
    answer = await http.post(
        url,
        params={"instance_id": "42"},
        content=csr.public_bytes(serialization.Encoding.PEM),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 200, answer.text
    leaf = x509.load_pem_x509_certificate(answer.content)
    leaf.verify_directly_issued_by(router.standin.root_ca.certificate)
    assert leaf.subject == subject
    assert leaf.public_key() == key.public_key()
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == san
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert router.standin.cert_requests == ["42"]

    garbage = await http.post(url, params={"instance_id": "43"}, content=b"not a request")
    assert garbage.status_code == 400
    router.standin.cert_request_failures = 1
    failed = await http.post(url, content=csr.public_bytes(serialization.Encoding.PEM))
    assert failed.status_code == 500
    assert router.standin.cert_requests == ["42"]


def route_body(**fields: Any) -> dict[str, Any]:
    """A /route/ body as Vast's newest client sends it."""
    return {
        "endpoint": "g",
        "api_key": "endpoint-key",
        "cost": 100,
        "request_idx": 0,
        "replay_timeout": 60.0,
        **fields,
    }


async def test_route_gives_each_request_an_index_and_keeps_it(
    router: Running, http: httpx.AsyncClient
) -> None:
    standin = router.standin
    standin.worker_url = "http://127.0.0.1:9"
    url = f"{router.url}/route/"
    first = (await http.post(url, json=route_body())).json()
    second = (await http.post(url, json=route_body(cost=2.5))).json()
    again = (await http.post(url, json=route_body(request_idx=first["request_idx"]))).json()
    assert [a["request_idx"] for a in (first, second, again)] == [7000, 7001, 7000]
    assert [a["reqnum"] for a in (first, second, again)] == [1, 2, 3]
    assert set(first) == {"cost", "endpoint", "reqnum", "request_idx", "signature", "url"}
    assert second["cost"] == 2.5
    authenticator = Authenticator(own_url="http://127.0.0.1:9")
    authenticator.set_public_key(standin.signer.public_pem())
    for answer in (first, second, again):
        accept(authenticator, AuthData.parse(answer))
    assert [c.attempt for c in standin.route_calls] == [0, 0, 1]
    assert [c.ready_before for c in standin.route_calls] == [0, 1, 2]

    # What the call carried, headers and query string included.
    await http.post(
        url,
        json=route_body(),
        params={"api_key": "q"},
        headers={"Authorization": "Bearer h", "User-Agent": "ua/1"},
    )
    call = standin.route_calls[-1]
    assert (call.api_key, call.query_api_key, call.authorization, call.user_agent) == (
        "endpoint-key",
        "q",
        "Bearer h",
        "ua/1",
    )
    assert (call.replay_timeout, call.status, call.url) == (60.0, 200, "http://127.0.0.1:9")

    bad = await http.post(url, json=route_body(request_idx=-1, replay_timeout="x"))
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "request_idx": "must be at least 0",
        "replay_timeout": "must be a number, not string",
    }
    assert standin.routes_received == 4  # malformed calls are not logged


async def test_route_waits_refusals_and_endpoint_keys(
    router: Running, http: httpx.AsyncClient
) -> None:
    standin = router.standin
    standin.worker_url = "http://127.0.0.1:9"
    standin.route_waits = 2
    url = f"{router.url}/route/"
    waiting = await http.post(url, json=route_body())
    assert (waiting.status_code, waiting.json()) == (200, {"request_idx": 7000})
    waiting = await http.post(url, json=route_body(request_idx=7000))
    assert (waiting.status_code, waiting.json()) == (200, {"request_idx": 7000})
    ready = (await http.post(url, json=route_body(request_idx=7000))).json()
    assert (ready["request_idx"], ready["url"]) == (7000, "http://127.0.0.1:9")
    assert standin.route_waits == 0

    standin.route_failures = 1
    standin.route_failure_status = 429
    refused = await http.post(url, json=route_body())
    assert (refused.status_code, refused.json()) == (
        429,
        {"error": "routing refused (route_failures)"},
    )
    assert (await http.post(url, json=route_body())).json()["request_idx"] == 7001

    standin.require_endpoint_key = True
    standin.endpoints = [GROUP]
    for body in (
        route_body(api_key="wrong"),
        route_body(endpoint="h"),
        {"endpoint": "g", "cost": 1},
    ):
        response = await http.post(url, json=body)
        assert (response.status_code, response.json()) == (
            401,
            {"error": "unknown endpoint or wrong api_key"},
        )
    assert (await http.post(url, json=route_body())).status_code == 200
    statuses = [(c.status, c.request_idx, c.url is not None) for c in standin.route_calls]
    assert statuses == [
        (200, 7000, False),
        (200, 7000, False),
        (200, 7000, True),
        (429, 0, False),
        (200, 7001, True),
        (401, 0, False),
        (401, 0, False),
        (401, 0, False),
        (200, 7002, True),
    ]

    standin.require_endpoint_key = False
    standin.route_waits = 1
    with pytest.raises(LookupError, match="told to wait"):
        standin.route(endpoint="g", cost=1)
    with pytest.raises(ValueError, match="route_waits"):
        standin.route_waits = -1


async def test_route_among_several_workers(router: Running, http: httpx.AsyncClient) -> None:
    standin = router.standin
    standin.worker_url = "http://127.0.0.1:1"  # ignored while worker_urls is set
    standin.worker_urls = ["http://127.0.0.1:2", "http://127.0.0.1:3"]
    url = f"{router.url}/route/"

    async def routed(**fields: Any) -> tuple[int, str]:
        answer = (await http.post(url, json=route_body(**fields))).json()
        return answer["request_idx"], answer["url"]

    assert [await routed() for _ in range(3)] == [
        (7000, "http://127.0.0.1:2"),
        (7001, "http://127.0.0.1:3"),
        (7002, "http://127.0.0.1:2"),
    ]
    standin.route_policy = in_order
    assert await routed() == (7003, "http://127.0.0.1:2")
    assert await routed(request_idx=7003) == (7003, "http://127.0.0.1:3")
    assert await routed(request_idx=7003) == (7003, "http://127.0.0.1:3")  # the last one stays
    standin.route_policy = round_robin
    standin.worker_urls = []
    assert await routed() == (7004, "http://127.0.0.1:1")


async def test_delete_requests_are_stored_printed_and_waitable(
    router: Running, http: httpx.AsyncClient
) -> None:
    standin = router.standin
    body = {
        "worker_id": 4,
        "mtoken": "",
        "requests": [
            {"request_idx": 7001, "success": True, "status": "Success"},
            {"request_idx": 7002, "success": False, "status": "Rejected"},
        ],
    }

    async def post_later() -> None:
        await trio.lowlevel.checkpoint()
        response = await http.post(f"{router.url}/delete_requests/", json=body)
        assert (response.status_code, response.json()) == (200, {"ok": True})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post_later)
        with trio.fail_after(10):
            await standin.wait_for_deletions(1)
    assert list(standin.deletions) == [body]
    assert router.lines == ["finished requests from worker 4: 7001:Success 7002:Rejected"]

    standin.delete_status = 500
    response = await http.post(f"{router.url}/delete_requests/", json={"request_idxs": [1]})
    assert (response.status_code, response.json()) == (500, {"ok": False})
    assert standin.deletions_received == 2  # received, even if answered with an error
    malformed = await http.post(f"{router.url}/delete_requests/", content=b"[]")
    assert malformed.status_code == 400
    assert standin.deletions_received == 2


def test_describe_deletions_reads_both_forms() -> None:
    assert describe_deletions({"worker_id": 1, "request_idxs": [3, 4], "success": True}) == (
        "finished requests from worker 1: [3, 4] success=True"
    )
    assert describe_deletions({"requests": [{}, 5]}) == "finished requests from worker ?: ?:? 5"
    assert describe_deletions({"requests": []}) == "finished requests from worker ?: -"


async def test_wait_until_wakes_on_each_thing_received(signer: RouterSigner) -> None:
    standin = StandIn(signer=signer, on_report=None, worker_url="http://127.0.0.1:9")

    async def receive_later() -> None:
        await trio.lowlevel.checkpoint()
        standin.receive_report({"id": 1})
        await trio.lowlevel.checkpoint()
        standin.receive_deletions({"requests": []})
        await trio.lowlevel.checkpoint()
        standin.route(endpoint="g", cost=1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_later)
        with trio.fail_after(10):
            await standin.wait_until(lambda: standin.deletions_received == 1)
            await standin.wait_for_routes(1)
    assert (standin.reports_received, standin.routes_received) == (1, 1)
