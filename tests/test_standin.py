"""End-to-end tests of the stand-in autoscaler's routes, the key fetcher against it, and
``python -m pyworker.autoscaler`` (the newest generation's routes: ``test_standin_newest.py``;
the client: ``test_standin_client.py``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial

import httpx
import pytest
import trio
import trio.lowlevel
from fakes import free_port
from harness import Running, accept

from pyworker._auth import AuthData, Authenticator, AuthError
from pyworker._pubkey import fetch_public_key, pubkey_urls
from pyworker.devtools import (
    RouterSigner,
    StandIn,
    describe_report,
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
