"""Vast's own client (``vastai`` 1.9.1) drives the worker through the stand-in, as a user's code
would: the endpoint looked up at the console, ``/route/`` at the router, then the worker.

Everything runs over real sockets on 127.0.0.1: the fake model server as a process, the
stand-in (Vast's console, router and autoscaler at once) and the workers in the test's nursery,
and the client in a thread of its own (see :class:`vast_harness.Vast` for why).

What the newest generation added on the worker's side (sessions, request indices, finished
requests) is in ``test_vastai_sessions.py``.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from fakes import free_port
from harness import add_worker
from vast_harness import (
    FIRST_IDX,
    GROUP,
    GUARD,
    HANG_AFTER,
    SIGNED,
    fake_stats_where,
    generate,
    hold_a_stream,
    prompt,
    tokens,
    vast_stack,
)
from vastai.serverless.client import Endpoint, Serverless

from pyworker.devtools import LocalCA, in_order

# -- requests -------------------------------------------------------------------------------------


async def test_a_plain_request(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)

        async def body(endpoint: Endpoint) -> list[dict[str, Any]]:
            first = await endpoint.request("/generate", prompt(3))
            second = await endpoint.request("/generate", prompt(2), cost=7)
            return [first, second]

        first, second = await vast.run(body)

    assert (first["ok"], first["status"], first["content_type"]) == (
        True,
        200,
        "application/json",
    )
    assert first["response"]["generated_tokens"] == 3
    assert first["url"] == stack.url
    # The router's answer went to the worker verbatim, as the request's auth_data.
    assert first["auth_data"].keys() == SIGNED
    assert first["auth_data"]["cost"] == 100  # the client's default, a number
    assert first["auth_data"]["endpoint"] == GROUP.name
    assert [r["request_idx"] for r in (first, second)] == [FIRST_IDX, FIRST_IDX + 1]
    assert [r["auth_data"]["reqnum"] for r in (first, second)] == [1, 2]
    assert second["auth_data"]["cost"] == 7

    # What the client sent the router: the endpoint's key three times over.
    call = stack.standin.route_calls[0]
    assert (call.endpoint, call.cost, call.sent_request_idx) == (GROUP.name, 100, 0)
    assert call.api_key == call.query_api_key == GROUP.api_key
    assert call.authorization == f"Bearer {GROUP.api_key}"
    assert call.user_agent == "vastai-sdk/1.9.1"
    assert call.replay_timeout == 60.0
    assert [c.url for c in stack.standin.route_calls] == [stack.url] * 2
    # The TLS root was fetched once, before the first request, though nothing here is TLS.
    assert stack.standin.cert_downloads == 1
    assert (await stack.stats())["completed"] == 2


async def test_a_streamed_request_yields_tokens_as_they_arrive(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path, "--hang-after", str(HANG_AFTER))

        async def body(endpoint: Endpoint) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            short = await endpoint.request("/generate_stream", prompt(3), stream=True)
            assert (short["ok"], short["status"]) == (True, 200)
            whole = [event async for event in short["response"]]
            # A longer one: the model server sends HANG_AFTER tokens, then nothing, ever. The
            # client sees them all: they can only have been relayed as they came.
            long = await endpoint.request("/generate_stream", prompt(4 * HANG_AFTER), stream=True)
            stream = long["response"]
            try:
                first = await tokens(stream, HANG_AFTER)
            finally:
                await stream.aclose()  # the client leaves mid-stream
            return whole, first

        whole, first = await vast.run(body)
        # The client left: the worker stopped the model server's work.
        await fake_stats_where(stack, lambda stats: stats["cancelled"] == 1)

    assert [set(event) for event in whole] == [{"token"}] * 3 + [
        {"done", "prompt_tokens", "generated_tokens"}
    ]
    assert whole[-1]["generated_tokens"] == 3
    assert [set(event) for event in first] == [{"token"}] * HANG_AFTER


async def test_concurrent_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    count = 8
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path, "--hang-after", str(HANG_AFTER))

        async def body(endpoint: Endpoint) -> list[dict[str, Any]]:
            answers = await asyncio.gather(
                *(endpoint.request("/generate", prompt(1 + n % 4)) for n in range(count))
            )
            # Streams that never end: all of them have been served at once when every one has
            # had its first HANG_AFTER tokens.
            streams = await asyncio.gather(
                *(
                    endpoint.request("/generate_stream", prompt(4 * HANG_AFTER), stream=True)
                    for _ in range(count)
                )
            )
            try:
                await asyncio.gather(*(tokens(s["response"], HANG_AFTER) for s in streams))
                in_flight = await vast.in_trio(stack.stats)
                assert in_flight["in_flight"] == count
            finally:
                for stream in streams:
                    await stream["response"].aclose()
            return answers

        answers = await vast.run(body)
        await fake_stats_where(stack, lambda stats: stats["cancelled"] == count)

    assert all(answer["ok"] for answer in answers)
    assert [a["response"]["generated_tokens"] for a in answers] == [1 + n % 4 for n in range(count)]
    indices = {a["request_idx"] for a in answers}
    assert indices == set(range(FIRST_IDX, FIRST_IDX + count))


async def test_the_client_polls_while_the_router_says_wait(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)
        stack.standin.route_waits = 2

        answer = await vast.run(generate)

    assert answer["ok"]
    assert answer["request_idx"] == FIRST_IDX
    # Told to wait twice, the client asked again under the index the router gave it.
    calls = [(c.sent_request_idx, c.request_idx, c.url) for c in stack.standin.route_calls]
    assert calls == [
        (0, FIRST_IDX, None),
        (FIRST_IDX, FIRST_IDX, None),
        (FIRST_IDX, FIRST_IDX, stack.url),
    ]


async def test_routing_refusals_surface_as_the_clients_errors(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)
        standin = stack.standin
        standin.route_failures = 1

        async def body(endpoint: Endpoint) -> dict[str, Any]:
            # One refusal (even a 503) fails the request: the client does not ask twice.
            with pytest.raises(RuntimeError, match=r"Failed to route endpoint: HTTP 503"):
                await endpoint.request("/generate", prompt(1))
            # A wrong endpoint key: the router's 401.
            stranger = Endpoint(endpoint.client, name=GROUP.name, id=GROUP.id, api_key="wrong")
            with pytest.raises(RuntimeError, match=r"HTTP 401"):
                await stranger.request("/generate", prompt(1))
            return await generate(endpoint, 1)

        answer = await vast.run(body)
        assert answer["ok"]
        assert [c.status for c in standin.route_calls] == [503, 401, 200]

        # A wrong account key: the console's 401, when looking the endpoint up.
        async def lookup(client: Serverless) -> None:
            with pytest.raises(Exception, match=r"Failed to get endpoints: HTTP 401"):
                await client.get_endpoint(GROUP.name)

        await vast.run_client(lookup, api_key="not-the-account-key")


async def test_the_client_re_routes_from_a_full_or_gone_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # The first worker refuses (429) whatever would wait behind the request it holds.
        stack, vast = await vast_stack(
            nursery, tmp_path, "--hang-after", str(HANG_AFTER), max_queue_time=0.001
        )
        full = stack.url
        await nursery.start(partial(hold_a_stream, stack, full))
        other = (await add_worker(stack, max_queue_time=30.0)).url
        standin = stack.standin
        standin.worker_urls = [full, other]
        standin.route_policy = in_order

        answer = await vast.run(generate)
        assert answer["ok"]
        assert answer["url"] == other
        calls = [(c.sent_request_idx, c.request_idx, c.url) for c in standin.route_calls]
        assert calls == [(0, FIRST_IDX, full), (FIRST_IDX, FIRST_IDX, other)]

        # A worker that is gone (connection refused): re-routed too, at once.
        gone_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        standin.worker_urls = [gone_url, other]
        standin.route_calls.clear()
        answer = await vast.run(generate)
        assert answer["ok"]
        assert answer["url"] == other
        assert [c.url for c in standin.route_calls] == [gone_url, other]


async def test_a_tls_worker_is_verified_against_the_root_the_console_serves(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = LocalCA.generate()
    cert, key = ca.issue("127.0.0.1").write(tmp_path / "tls")
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(
            nursery,
            tmp_path,
            use_ssl=True,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            public_url="",  # derived: https://127.0.0.1:PORT
        )
        assert stack.url.startswith("https://127.0.0.1:")
        stack.standin.root_ca = ca

        answer = await vast.run(generate)
        assert answer["ok"]
        assert answer["url"] == stack.url

        # Against another root, the worker's certificate does not verify: the client takes it
        # for a worker that is gone and re-routes, again and again, until its own timeout.
        stack.standin.root_ca = LocalCA.generate()

        async def untrusted(endpoint: Endpoint) -> None:
            with pytest.raises(asyncio.TimeoutError):
                await endpoint.request("/generate", prompt(2), timeout=0.3)

        await vast.run(untrusted)
        assert {c.request_idx for c in list(stack.standin.route_calls)[1:]} == {FIRST_IDX + 1}
    assert (await stack.stats())["completed"] == 1
