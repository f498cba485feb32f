"""The client-side routing shared by the client and the load tester (``pyworker.devtools``),
against the stand-in over real sockets: the console's key and TLS root, polls while the router
says "wait", re-routes on retryable answers and unreachable workers, each counted."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from fakes import free_port
from harness import Stack, ready_stack, refusing_worker, serve_app
from quart_trio import QuartTrio

from pyworker.devtools import (
    CallWatcher,
    ConsoleError,
    EndpointGroup,
    LocalCA,
    Patience,
    Retry,
    RouteError,
    RouterSigner,
    StandIn,
    Target,
    WorkerError,
    ask_router,
    call_endpoint,
    endpoint_key,
    in_order,
    serve_standin,
    vast_tls_context,
)

GROUP = EndpointGroup(id=3, name="group", api_key="endpoint-key")
ACCOUNT = "account-key"
QUICK = Patience(max_poll_interval=0.02)
"""Vast's client's pauses, capped at 20 ms."""
PROMPT = {"prompt": "hello", "max_response_tokens": 4}


@attrs.define
class Seen(CallWatcher):
    """Every hook's calls, in order."""

    events: list[tuple[Any, ...]] = attrs.Factory(list)

    def routing(self, request_idx: int) -> None:
        self.events.append(("routing", request_idx))

    def waiting(self, request_idx: int) -> None:
        self.events.append(("waiting", request_idx))

    def routed(self, url: str, request_idx: int) -> None:
        self.events.append(("routed", url, request_idx))

    def answered(self, status: int, streamed: bool) -> None:
        self.events.append(("answered", status, streamed))

    def chunk(self, data: bytes) -> None:
        self.events.append(("chunk",))

    def retrying(self, retry: Retry) -> None:
        self.events.append(("retrying", retry))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        yield client


@pytest.fixture
async def standin(signer: RouterSigner) -> AsyncIterator[tuple[StandIn, str]]:
    standin = StandIn(signer=signer, on_report=None, endpoints=[GROUP], account_key=ACCOUNT)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_standin, standin, shutdown=shutdown))
        yield standin, url
        shutdown.set()


async def test_the_console_gives_the_groups_key(
    standin: tuple[StandIn, str], http: httpx.AsyncClient
) -> None:
    _, url = standin
    key = await endpoint_key(http, account_key=ACCOUNT, endpoint="group", console=url)
    assert key == "endpoint-key"
    with pytest.raises(ConsoleError, match="refused the account key"):
        await endpoint_key(http, account_key="wrong", endpoint="group", console=url)
    with pytest.raises(ConsoleError, match=r"no endpoint group 'other' \(it has: group\)"):
        await endpoint_key(http, account_key=ACCOUNT, endpoint="other", console=url)
    with pytest.raises(ConsoleError, match=r"cannot reach the console.*\(2 attempts\)"):
        await endpoint_key(
            http,
            account_key=ACCOUNT,
            endpoint="g",
            console=f"http://127.0.0.1:{free_port()}",
            attempts=2,
            pause=0.01,
        )


async def test_a_failing_console_is_asked_again(
    standin: tuple[StandIn, str], http: httpx.AsyncClient
) -> None:
    standin_, url = standin
    standin_.console_failures = 2
    ask = partial(endpoint_key, http, account_key=ACCOUNT, endpoint="group", console=url)
    assert await ask(pause=0.01) == "endpoint-key"  # the third attempt gets it
    standin_.console_failures = 3
    with pytest.raises(ConsoleError, match=r"answered 503.*\(3 attempts\)"):
        await ask(pause=0.01)
    assert standin_.console_failures == 0


async def test_the_tls_context_trusts_workers_certified_by_vasts_root(
    standin: tuple[StandIn, str], http: httpx.AsyncClient, tmp_path: Path, nursery: trio.Nursery
) -> None:
    standin_, url = standin
    certfile, keyfile = standin_.root_ca.issue("127.0.0.1").write(tmp_path)
    app = QuartTrio("tls-worker")

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    worker = await serve_app(nursery, app, certfile=str(certfile), keyfile=str(keyfile))
    assert worker.startswith("https://")
    context = await vast_tls_context(http, url)
    async with httpx.AsyncClient(verify=context, trust_env=False) as tls_http:
        assert (await tls_http.get(worker + "/ping")).text == "pong"
    standin_.root_ca = LocalCA.generate()  # another root: the worker's certificate is not its
    other = await vast_tls_context(http, url)
    async with httpx.AsyncClient(verify=other, trust_env=False) as tls_http:
        with pytest.raises(httpx.ConnectError) as refused:
            await tls_http.get(worker + "/ping")
    # Trio wraps it: BrokenResourceError, caused by the certificate check.
    cause: BaseException | None = refused.value
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None


async def test_ask_router_sends_what_vasts_client_sends(
    standin: tuple[StandIn, str], http: httpx.AsyncClient
) -> None:
    standin_, url = standin
    standin_.worker_url = "http://127.0.0.1:9"
    target = Target(endpoint="group", router=url, api_key="endpoint-key")
    answer = await ask_router(http, target, cost=132)
    assert set(answer) == {"cost", "endpoint", "reqnum", "request_idx", "signature", "url"}
    call = standin_.route_calls[-1]
    assert (call.endpoint, call.cost, call.api_key, call.sent_request_idx) == (
        "group",
        132,
        "endpoint-key",
        0,
    )
    assert (call.replay_timeout, call.authorization, call.query_api_key) == (
        60.0,
        "Bearer endpoint-key",
        "endpoint-key",
    )
    assert call.user_agent is not None
    assert call.user_agent.startswith("pyworker/")
    standin_.route_failures, standin_.route_failure_status = 1, 429
    with pytest.raises(RouteError) as refused:
        await ask_router(http, target, cost=1)
    assert refused.value.status == 429
    unreachable = Target(endpoint="group", router=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RouteError, match="cannot reach the router: ConnectError") as gone:
        await ask_router(http, unreachable, cost=1)
    assert gone.value.status == 0


@pytest.fixture
async def stack(nursery: trio.Nursery, tmp_path: Path) -> Stack:
    return await ready_stack(nursery, tmp_path)


async def test_polls_with_the_same_index_while_the_router_says_wait(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    stack.standin.route_waits = 3
    seen = Seen()
    target = Target(endpoint="group", router=stack.standin_url)
    with trio.fail_after(10):
        answer = await call_endpoint(
            http, target, "/generate", PROMPT, cost=6, patience=QUICK, watcher=seen
        )
    assert answer.status == 200
    assert answer.json()["generated_tokens"] == 4
    assert (answer.url, answer.request_idx, answer.retries) == (stack.info.url, 7000, ())
    assert seen.events[:7] == [
        ("routing", 0),
        ("waiting", 7000),
        ("routing", 7000),
        ("waiting", 7000),
        ("routing", 7000),
        ("waiting", 7000),
        ("routing", 7000),
    ]
    assert seen.events[7:9] == [("routed", stack.info.url, 7000), ("answered", 200, False)]
    assert [call.sent_request_idx for call in stack.standin.route_calls] == [0, 7000, 7000, 7000]


async def test_reroutes_from_unreachable_and_refusing_workers_with_the_same_index(
    stack: Stack, http: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    busy = await refusing_worker(nursery, 429)
    stack.standin.worker_urls = [dead, busy, stack.info.url]
    stack.standin.route_policy = in_order
    seen = Seen()
    target = Target(endpoint="group", router=stack.standin_url)
    with trio.fail_after(10):
        answer = await call_endpoint(
            http, target, "/generate_stream", PROMPT, cost=6, patience=QUICK, watcher=seen
        )
    assert (answer.status, answer.streamed, answer.url) == (200, True, stack.info.url)
    assert answer.body.count(b"data:") == 5
    assert [(r.url, r.status) for r in answer.retries] == [(dead, 0), (busy, 429)]
    assert answer.retries[0].error.startswith("ConnectError")
    assert [e[1] for e in seen.events if e[0] == "retrying"] == list(answer.retries)
    assert {call.request_idx for call in stack.standin.route_calls} == {answer.request_idx}


async def test_gives_up_after_max_attempts(
    stack: Stack, http: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    stack.standin.worker_url = await refusing_worker(nursery, 503)
    target = Target(endpoint="group", router=stack.standin_url)
    patience = attrs.evolve(QUICK, max_attempts=3)
    with trio.fail_after(10):
        answer = await call_endpoint(http, target, "/generate", PROMPT, cost=6, patience=patience)
    assert answer.status == 503
    assert [r.status for r in answer.retries] == [503, 503]
    assert stack.standin.routes_received == 3


async def _cut_stream_worker(nursery: trio.Nursery) -> str:
    """A worker that starts a 200 stream and hangs up in the middle of it."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
                b'e\r\ndata: {"a":1}\n\n\r\n'
            )

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_a_2xx_answer_that_breaks_off_is_not_retried(
    stack: Stack, http: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    cut = await _cut_stream_worker(nursery)
    stack.standin.worker_url = cut
    seen = Seen()
    target = Target(endpoint="group", router=stack.standin_url)
    with trio.fail_after(10), pytest.raises(WorkerError) as failed:
        await call_endpoint(http, target, "/generate", PROMPT, cost=6, watcher=seen)
    assert (failed.value.url, failed.value.status, failed.value.retries) == (cut, 200, ())
    assert "broke off" in str(failed.value)
    assert ("chunk",) in seen.events
    assert stack.standin.routes_received == 1
