"""The proxied routes' checks, in their order, over real sockets: method (405), size (413),
JSON (400), envelope fields (422, each named), signature and replays (401), state (503), then
the payload (422, each named) and only then the model server.

Most tests here use a model server that never finishes loading, so no request can reach it:
every answer comes from the worker's own checks. ``tests/test_pipeline.py`` checks the same
order in-process, stage by stage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from harness import Stack, eventually, ready_stack, start_stack

GUARD = 20  # seconds: the absolute bound on each test
PAYLOAD = {"prompt": "hello", "max_response_tokens": 4}


async def loading_stack(nursery: trio.Nursery, tmp_path: Path, **config: Any) -> Stack:
    """A worker whose model server is still loading, once the router's key is known."""
    stack = await start_stack(
        nursery, tmp_path, "hello_world", "--load-delay", "60", max_body_bytes=2000, **config
    )

    async def key_known() -> bool:
        # Until the key is fetched, signed requests get a 503 without a state.
        response = await stack.post("/generate", PAYLOAD)
        return response.status_code == 503 and "state" in response.json()

    with trio.fail_after(10):
        await eventually(key_known, what="the router's key")
    return stack


async def test_refusals_while_loading(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await loading_stack(nursery, tmp_path)
        url = stack.url + "/generate"
        post = stack.http.post

        # A valid request: the state decides.
        response = await stack.post("/generate", PAYLOAD)
        assert response.status_code == 503
        assert response.json() == {"error": "model is loading", "state": "loading"}
        assert response.headers["retry-after"]

        # Not JSON, or not an object.
        response = await post(url, content=b"{not json")
        assert response.status_code == 400
        assert "JSON" in response.json()["error"]
        for body in (b"[1, 2]", b'"text"', b"null", b"3"):
            response = await post(url, content=body)
            assert response.status_code == 422, body
            assert response.json() == {"error": "request body must be a JSON object"}

        # Every bad field of the envelope is named, nested under its part.
        response = await post(url, json={})
        assert response.status_code == 422
        assert response.json() == {"auth_data": "missing parameter", "payload": "missing parameter"}
        response = await post(url, json={"auth_data": {"signature": "x"}, "payload": PAYLOAD})
        assert response.status_code == 422
        missing = dict.fromkeys(("cost", "endpoint", "reqnum", "url"), "missing parameter")
        assert response.json() == {"auth_data": missing}
        response = await post(url, json={"auth_data": "signed", "payload": PAYLOAD})
        assert response.status_code == 422
        assert "auth_data" in response.json()

        # The signature before the payload: the backend's code never sees a forged request.
        forged = stack.auth_data()
        forged["cost"] = 1
        response = await post(url, json={"auth_data": forged, "payload": {}})
        assert response.status_code == 401
        # The signature before the state: a forged request is a 401 even while loading.
        response = await post(url, json={"auth_data": forged, "payload": PAYLOAD})
        assert response.status_code == 401
        # The state before the payload: a signed request with a bad payload waits for ready.
        response = await post(url, json={"auth_data": stack.auth_data(), "payload": {}})
        assert response.status_code == 503
        # Unknown auth_data fields (the 2025 router adds some) are ignored.
        extra = {**stack.auth_data(), "request_idx": 12, "future_field": [1]}
        response = await post(url, json={"auth_data": extra, "payload": PAYLOAD})
        assert response.status_code == 503

        # Method and size come first of all.
        response = await stack.http.get(url)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        response = await stack.http.put(stack.url + "/generate_stream", json={})
        assert response.status_code == 405
        big = {"auth_data": stack.auth_data(), "payload": {"prompt": "x" * 3000}}
        response = await post(url, json=big)
        assert response.status_code == 413
        assert "2000 bytes" in response.json()["error"]

        async def chunked() -> AsyncIterator[bytes]:
            # No Content-Length: the limit applies while reading.
            for _ in range(10):
                yield b" " * 500

        response = await post(url, content=chunked())
        assert response.status_code == 413

        # Nothing reached the model server (it is not even listening).
        assert stack.worker.tracker.in_flight == 0


async def test_other_routes(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await loading_stack(nursery, tmp_path)
        http = stack.http
        response = await http.get(stack.url + "/ping")
        assert (response.status_code, response.text) == (200, "pong")
        status = await stack.status()
        assert status["state"] == "loading"
        assert status["in_flight"] == 0
        assert status["backend"] == "hello_world"
        response = await http.get(stack.url + "/healthcheck")
        assert response.status_code == 503
        assert "unreachable" in response.json()["error"]
        response = await http.post(stack.url + "/nowhere", json={})
        assert response.status_code == 404
        assert "/generate_stream" in response.json()["routes"]


async def test_only_2024_signatures(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await loading_stack(nursery, tmp_path, accept_2025_signatures=False)
        url = stack.url + "/generate"
        auth = stack.standin.signer.sign_2025(stack.info.url, cost=1, endpoint="e", reqnum=900)
        response = await stack.http.post(url, json={"auth_data": auth, "payload": PAYLOAD})
        assert response.status_code == 401
        response = await stack.post("/generate", PAYLOAD)
        assert response.status_code == 503


async def test_payload_errors_once_ready(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        url = stack.url + "/generate"
        response = await stack.http.post(url, json={"auth_data": stack.auth_data(), "payload": {}})
        assert response.status_code == 422
        assert response.json() == {"payload": {"prompt": "missing parameter"}}
        bad = {"prompt": 3, "max_response_tokens": "many"}
        response = await stack.post("/generate", bad)
        assert response.status_code == 422
        assert set(response.json()["payload"]) == {"prompt", "max_response_tokens"}
        response = await stack.post("/generate", [])
        assert response.json() == {"payload": "must be a JSON object, not array"}


async def test_only_accepted_requests_use_up_their_number(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        url = stack.url + "/generate"
        auth = stack.auth_data()
        # Refused for its payload: the same signed auth_data may come again, and is accepted.
        response = await stack.http.post(url, json={"auth_data": auth, "payload": {}})
        assert response.status_code == 422
        response = await stack.http.post(url, json={"auth_data": auth, "payload": PAYLOAD})
        assert response.status_code == 200
        # Accepted once: a replay is refused, whatever its payload.
        response = await stack.http.post(url, json={"auth_data": auth, "payload": PAYLOAD})
        assert response.status_code == 401
        assert "replayed" in response.json()["error"]
        response = await stack.http.post(url, json={"auth_data": auth, "payload": {}})
        assert response.status_code == 401


async def test_unsecured_worker_skips_signatures(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await start_stack(
            nursery, tmp_path, "hello_world", "--load-delay", "60", unsecured=True
        )
        url = stack.url + "/generate"
        body: dict[str, Any] = {
            "auth_data": {"signature": "", "cost": 0, "endpoint": "", "reqnum": 0, "url": ""},
            "payload": PAYLOAD,
        }
        for _ in range(2):
            response = await stack.http.post(url, json=body)
            assert response.status_code == 503
            assert response.json()["state"] == "loading"
        # No auth_data at all is fine too (curl -d '{"payload": ...}'); a payload is not.
        response = await stack.http.post(url, json={"payload": PAYLOAD})
        assert response.status_code == 503
        response = await stack.http.post(url, json={"auth_data": body["auth_data"]})
        assert response.status_code == 422
        assert response.json() == {"payload": "missing parameter"}


async def test_slow_body_is_408(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await loading_stack(nursery, tmp_path, body_timeout=0.3)
        port = int(stack.url.rsplit(":", 1)[1])
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(
                b"POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b'content-length: 100\r\n\r\n{"auth_data"'
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await client.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert stack.worker.tracker.in_flight == 0


def test_a_payload_that_is_not_an_object_gets_one_message() -> None:
    from pyworker import PayloadError, load_backend

    endpoint = load_backend("hello_world").endpoint("/generate")
    with pytest.raises(PayloadError) as caught:
        endpoint.parse([])
    # One message for the whole value, not a "missing parameter" per field besides it.
    assert caught.value.errors == {"": "must be a JSON object, not array"}
