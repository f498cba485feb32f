"""End-to-end tests of the stand-in autoscaler's newest generation: the console, the TLS root,
request indices, knobs, ``/delete_requests/``."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import Running, accept

from pyworker._auth import AuthData, Authenticator
from pyworker.devtools import (
    EndpointGroup,
    RouterSigner,
    StandIn,
    describe_deletions,
    in_order,
    round_robin,
)

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
    transport = listeners[0].transport_listener
    assert isinstance(transport, trio.SocketListener)  # typed as any Listener[SocketStream]
    port = transport.socket.getsockname()[1]

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
