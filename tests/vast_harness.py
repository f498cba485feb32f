"""Vast's own client (``vastai`` 1.9.1) run against a stack as a user's code would, for
``test_vastai_client.py`` and ``test_vastai_sessions.py``: the stand-in set up as Vast's console,
router and autoscaler at once, the client in a thread of its own (see :class:`Vast` for why),
and what the tests wait for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import trio
from harness import Stack, eventually, ready_stack
from vastai.serverless.client import Endpoint, Serverless

from pyworker.devtools import EndpointGroup

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


async def generate(endpoint: Endpoint, tokens: int = 2) -> dict[str, Any]:
    """``endpoint.request("/generate", prompt(tokens))``: the client's answer, a dict (``ok``,
    ``status``, ``response``, ``url``, ...), so typed here since ``vastai`` declares no types."""
    answer: dict[str, Any] = await endpoint.request("/generate", prompt(tokens))
    return answer


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

        def in_helper_thread() -> T:
            return trio.from_thread.run(guarded, trio_token=self.token)

        return await asyncio.to_thread(in_helper_thread)


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
