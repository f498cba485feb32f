"""Vast's own client (``vastai`` 1.9.1) drives the worker through the stand-in, as a user's code
would: the endpoint looked up at the console, ``/route/`` at the router, then the worker.

Everything runs over real sockets on 127.0.0.1: the fake model server as a process, the
stand-in (Vast's console, router and autoscaler at once) and the workers in the test's nursery,
and the client in a thread of its own (see :class:`Vast` for why).

The last part holds what the newest generation added on the worker's side: sessions, the
router's ``request_idx`` in reports, ``/delete_requests/``. Those tests also pass against Vast's
own 1.9.1 worker, so they pin the reference's behaviour, not only ours.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import pytest
import trio
from fakes import free_port
from harness import Stack, add_worker, eventually, ready_stack
from vastai.serverless.client import Endpoint, Serverless, Session

from pyworker.devtools import EndpointGroup, LocalCA, in_order

GUARD = 30
"""Seconds: the hang guard of each test (nothing here waits on the clock otherwise)."""
CLIENT_BOUND = 20
"""Seconds: the client's own bound, inside its thread; below GUARD, so it ends first."""
ACCOUNT_KEY = "account-key-for-tests"
GROUP = EndpointGroup(id=42, name="pyworker-tests", api_key="endpoint-key-for-tests")
FIRST_IDX = 7000
"""The stand-in's first ``request_idx`` (its ``reqnum`` starts at 1)."""
SIGNED = {"cost", "endpoint", "reqnum", "request_idx", "signature", "url"}
"""What the newest router's ready answer holds: the client hands it to the worker verbatim."""
HANG_AFTER = 6
"""With ``--hang-after``, the fake streams this many tokens, then goes silent, never ending."""

T = TypeVar("T")


def prompt(tokens: int, text: str = "hello there") -> dict[str, Any]:
    return {"prompt": text, "max_response_tokens": tokens}


@attrs.frozen(kw_only=True)
class Vast:
    """Runs Vast's client against a stack, as its user would.

    The client is asyncio and aiohttp, the tests are Trio: each run starts a fresh asyncio loop
    (``asyncio.run``) in a worker thread (``trio.to_thread.run_sync``). A thread rather than a
    subprocess: results and exceptions come back as Python objects, the test can look at the
    stand-in and the worker while the client runs (and the client can call back into Trio,
    :meth:`in_trio`), and no interpreter has to start and import aiohttp per run on two shared
    cores. The two loops share nothing but sockets, so neither can stall the other. Trio cannot
    cancel a thread, and abandoning one would leave a loop running into later tests, so the
    client is bounded inside its own loop (``asyncio.wait_for``, CLIENT_BOUND): the thread
    always ends by itself, and the test's ``trio.fail_after`` is only a hang guard.

    Attributes:
        standin_url: the stand-in, as the client's console and router both.
        token: the test's Trio loop, for :meth:`in_trio`.
    """

    standin_url: str
    token: trio.lowlevel.TrioToken

    def client(self, **options: Any) -> Serverless:
        """A client of the stand-in (make it in the client's thread).

        It downloads its TLS root from the stand-in instead of Vast's console, and its pauses
        between polls and retries are capped at 0.2 s instead of 5 s (the first poll still
        waits 1 s, a constant of the client).
        """
        settings: dict[str, Any] = {
            "api_key": ACCOUNT_KEY,
            "autoscaler_url": self.standin_url,
            "webserver_url": self.standin_url,
            "max_poll_interval": 0.2,
            **options,
        }
        client = Serverless(**settings)
        client.SSL_CERT_URL = f"{self.standin_url}/static/jvastai_root.cer"
        return client

    async def run_client(self, body: Callable[[Serverless], Awaitable[T]], **options: Any) -> T:
        """``body(client)`` in a fresh asyncio loop in a thread; returns what it returns.

        Args:
            body: the client's side of the test (its assertions count too).
            **options: for the client's constructor.
        """

        async def main() -> T:
            async with self.client(**options) as client:
                return await body(client)

        def thread() -> T:
            return asyncio.run(asyncio.wait_for(main(), CLIENT_BOUND))

        return await trio.to_thread.run_sync(thread)

    async def run(self, body: Callable[[Endpoint], Awaitable[T]], **options: Any) -> T:
        """Like :meth:`run_client`, with the test's endpoint looked up at the console by name,
        as a user does; the client is ``endpoint.client``."""

        async def with_endpoint(client: Serverless) -> T:
            return await body(await client.get_endpoint(GROUP.name))

        return await self.run_client(with_endpoint, **options)

    async def in_trio(self, fn: Callable[[], Awaitable[T]]) -> T:
        """From the client's loop: ``fn()`` in the test's Trio loop; returns what it returns.

        The client's loop goes on meanwhile (a helper thread waits). ``fn`` runs as a Trio
        system task, outside the test's cancel scopes, so it gets its own guard here.
        """

        async def guarded() -> T:
            with trio.fail_after(GUARD):
                return await fn()

        return await asyncio.to_thread(trio.from_thread.run, guarded, trio_token=self.token)


async def vast_stack(
    nursery: trio.Nursery, tmp_path: Path, *fake_args: str, **config: Any
) -> tuple[Stack, Vast]:
    """A ready hello_world stack whose stand-in knows the test's account and endpoint group,
    checks the endpoint's key and signs as the newest router does (the URL only)."""
    stack = await ready_stack(nursery, tmp_path, *fake_args, **config)
    standin = stack.standin
    standin.endpoints = [GROUP]
    standin.account_key = ACCOUNT_KEY
    standin.require_endpoint_key = True
    standin.sign_2025 = True
    return stack, Vast(standin_url=stack.standin_url, token=trio.lowlevel.current_trio_token())


async def fake_stats_where(stack: Stack, check: Callable[[dict[str, int]], bool]) -> None:
    """Poll the fake's /stats until ``check`` holds (callers bound the wait)."""

    async def probe() -> bool:
        return check(await stack.stats())

    await eventually(probe, what="fake /stats condition")


async def one_more_completed(stack: Stack, before: dict[str, int], *, tokens: int) -> None:
    """Wait until the fake has completed one more request, of ``tokens`` tokens, than it had
    ``before`` (e.g. a session's ``on_close`` call)."""
    await fake_stats_where(
        stack,
        lambda stats: (
            (
                stats["completed"] - before["completed"],
                stats["tokens_generated"] - before["tokens_generated"],
            )
            == (1, tokens)
        ),
    )


async def tokens(stream: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The next ``count`` events of a client stream."""
    return [await anext(stream) for _ in range(count)]


async def hold_a_stream(stack: Stack, url: str, *, task_status: trio.TaskStatus[None]) -> None:
    """Keep a request in flight on the worker at ``url`` (the fake needs ``--hang-after``):
    started once its first event arrived, held until cancelled. Sent directly, not routed, over
    a bare socket: a cancelled httpx stream leaves its async generators to the collector."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    body = json.dumps(stack.envelope(prompt(5 * HANG_AFTER))).encode()
    head = (
        f"POST /generate_stream HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    async with await trio.open_tcp_stream(parts.hostname, parts.port) as stream:
        await stream.send_all(head.encode() + body)
        received = b""
        while b"data:" not in received:
            chunk = await stream.receive_some()
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received
        task_status.started()
        await trio.sleep_forever()


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

        async def body(endpoint: Endpoint) -> dict[str, Any]:
            return await endpoint.request("/generate", prompt(2))

        answer = await vast.run(body)

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
            return await endpoint.request("/generate", prompt(1))

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

        async def body(endpoint: Endpoint) -> dict[str, Any]:
            return await endpoint.request("/generate", prompt(2))

        answer = await vast.run(body)
        assert answer["ok"]
        assert answer["url"] == other
        calls = [(c.sent_request_idx, c.request_idx, c.url) for c in standin.route_calls]
        assert calls == [(0, FIRST_IDX, full), (FIRST_IDX, FIRST_IDX, other)]

        # A worker that is gone (connection refused): re-routed too, at once.
        gone_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        standin.worker_urls = [gone_url, other]
        standin.route_calls.clear()
        answer = await vast.run(body)
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

        async def body(endpoint: Endpoint) -> dict[str, Any]:
            return await endpoint.request("/generate", prompt(2))

        answer = await vast.run(body)
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


# -- sessions, request indices, finished requests -------------------------------------------------


async def test_a_session_from_creation_to_its_end(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Create (routed once) → requests pinned to the worker, each extending the session by its
    lifetime → ``/session/get`` → ``/session/end`` calls ``on_close`` at the model server →
    the ended session's id is answered 410 (the client's "closed session")."""
    lifetime = 30.0
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)

        async def body(endpoint: Endpoint) -> None:
            session = await endpoint.session(
                cost=50,
                lifetime=lifetime,
                on_close_route="/generate",
                on_close_payload=prompt(1, "goodbye"),
            )
            assert isinstance(session.session_id, str)
            assert session.session_id
            assert session.url == stack.url
            assert session.auth_data["request_idx"] == FIRST_IDX
            assert session.auth_data["cost"] == 50

            for tokens_wanted in (2, 3):
                answer = await session.request("/generate", prompt(tokens_wanted))
                assert (answer["ok"], answer["status"]) == (True, 200)
                assert answer["response"]["generated_tokens"] == tokens_wanted
                assert answer["url"] == stack.url
            assert len(stack.standin.route_calls) == 1  # only the creation was routed

            fetched = await endpoint.get_session(session.session_id, session.auth_data)
            assert fetched.session_id == session.session_id
            assert fetched.auth_data == session.auth_data
            assert fetched.url == stack.url
            # Each accepted request pushed the expiration one lifetime further.
            assert fetched.expiration == pytest.approx(session.expiration + 2 * lifetime, abs=0.01)
            assert await session.is_open()

            before = await vast.in_trio(stack.stats)
            await endpoint.client.end_endpoint_session(session)  # raises unless 2xx
            # on_close: POST /generate {"prompt": "goodbye", "max_response_tokens": 1, ...}
            await vast.in_trio(partial(one_more_completed, stack, before, tokens=1))
            with pytest.raises(ValueError, match="closed session"):  # the worker's 410
                await session.request("/generate", prompt(1))
            with pytest.raises(Exception, match="Failed to get session"):
                await endpoint.get_session(session.session_id, session.auth_data)

        await vast.run(body)


async def test_a_session_expires(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A session left alone past its lifetime is closed by the worker (``on_close`` called),
    and its id is answered 410 from then on."""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)

        async def body(endpoint: Endpoint) -> None:
            before = await vast.in_trio(stack.stats)
            session = await endpoint.session(
                lifetime=0.5, on_close_route="/generate", on_close_payload=prompt(3, "expired")
            )
            await vast.in_trio(partial(one_more_completed, stack, before, tokens=3))
            with pytest.raises(ValueError, match="closed session"):
                await session.request("/generate", prompt(1))

        await vast.run(body)


async def test_a_full_worker_sends_new_sessions_elsewhere(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A worker at ``max_sessions`` answers ``/session/create`` 429, so the client re-routes
    (same ``request_idx``) and the session opens on another worker. (The option is expected
    as ``WorkerConfig.max_sessions``, as in Vast's ``WorkerConfig``.)"""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path, max_sessions=1)
        first = stack.url
        second = (await add_worker(stack)).url
        standin = stack.standin
        standin.worker_urls = [first, second]
        standin.route_policy = in_order

        async def body(endpoint: Endpoint) -> list[Session]:
            sessions = [await endpoint.session(lifetime=30) for _ in range(2)]
            for session in sessions:
                answer = await session.request("/generate", prompt(1))
                assert answer["ok"]
            for session in sessions:
                await endpoint.client.end_endpoint_session(session)
            return sessions

        sessions = await vast.run(body)

    assert [session.url for session in sessions] == [first, second]
    calls = [(c.sent_request_idx, c.request_idx, c.url) for c in standin.route_calls]
    assert calls == [
        (0, FIRST_IDX, first),
        (0, FIRST_IDX + 1, first),  # full: 429
        (FIRST_IDX + 1, FIRST_IDX + 1, second),
    ]


async def test_reports_name_requests_in_flight_by_the_routers_index(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """While a routed request is in flight, the worker's reports list it in
    ``working_request_idxs`` by the ``request_idx`` of its auth_data (not its ``reqnum``,
    nor a number of the worker's own)."""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path, "--hang-after", str(HANG_AFTER))
        standin = stack.standin

        async def busy_report() -> dict[str, Any]:
            def busy() -> bool:
                return any(r.get("num_requests_working") for r in standin.reports)

            await standin.wait_until(busy)
            return next(r for r in standin.reports if r.get("num_requests_working"))

        async def body(endpoint: Endpoint) -> dict[str, Any]:
            answer = await endpoint.request("/generate_stream", prompt(4 * HANG_AFTER), stream=True)
            try:
                await tokens(answer["response"], 1)  # in flight, and it stays so
                return await vast.in_trio(busy_report)
            finally:
                await answer["response"].aclose()

        report = await vast.run(body)

    assert report["num_requests_working"] == 1
    assert report["working_request_idxs"] == [FIRST_IDX]


async def test_finished_requests_are_sent_to_delete_requests(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A routed request that finished reaches ``POST /delete_requests/`` in the 2026 form
    (§9) within a few report ticks: ``{"worker_id", "mtoken", "requests": [{"request_idx",
    "success", "status", "entered_queue_at", "work_started_at", "work_completed_at"}]}``."""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)
        standin = stack.standin

        async def body(endpoint: Endpoint) -> dict[str, Any]:
            return await endpoint.request("/generate", prompt(2))

        assert (await vast.run(body))["ok"]

        def entries() -> list[dict[str, Any]]:
            return [entry for body in standin.deletions for entry in body.get("requests", [])]

        def deleted() -> bool:
            return any(entry.get("request_idx") == FIRST_IDX for entry in entries())

        # Deletions go out on the worker's 1 s tick, as reports do: give it three ticks, each
        # made to happen by a small request (a report follows each), not three seconds.
        for _ in range(3):
            if deleted():
                break
            seen = standin.reports_received
            assert (await stack.post("/generate", prompt(1))).status_code == 200
            await standin.wait_for_reports(seen + 1)

    assert deleted(), list(standin.deletions)
    sent = next(b for b in standin.deletions if any(e in b["requests"] for e in entries()))
    assert sent["worker_id"] == stack.worker.config.container_id
    assert "mtoken" in sent
    entry = next(e for e in entries() if e.get("request_idx") == FIRST_IDX)
    assert (entry["success"], entry["status"]) == (True, "Success")
    assert 0 < entry["entered_queue_at"] <= entry["work_started_at"] <= entry["work_completed_at"]
