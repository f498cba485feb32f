"""ComfyUI's websocket client (``backends/comfyui/_ws.py``) and ``run``'s use of it.

All over real sockets on 127.0.0.1: the fake ComfyUI serves the HTTP API, and small websocket
servers started here do what the fake does not (messages over the size cap, pings, noise, a
handshake never answered, a close frame never answered). Time limits are hang guards only.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from fakes import empty_image_workflow, start_fake_comfyui
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from backends.comfyui import (
    RunSettings,
    _run,
    parse_generate,
    run_prompt,
    text_to_image_workflow,
)
from backends.comfyui._fake_png import PNG_SIGNATURE
from backends.comfyui._ws import MAX_MESSAGE_SIZE, WebSocketError, connect_websocket
from pyworker import Job, RunContext

HANG_GUARD = 30.0
"""Seconds after which a test that should long be done fails instead of hanging the run."""
HUGE = 64 * MAX_MESSAGE_SIZE
"""Bigger than the cap plus every socket buffer on the way (a receive buffer may grow to 32 MiB)."""


# -- servers --------------------------------------------------------------------------------
async def _serve(
    nursery: trio.Nursery, handler: Callable[[WebSocketRequest], Awaitable[None]]
) -> int:
    """A trio-websocket server on 127.0.0.1; returns its port."""
    server: WebSocketServer = await nursery.start(
        partial(serve_websocket, handler, "127.0.0.1", 0, None)
    )
    return server.port


async def _serve_raw(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    """A plain TCP server on 127.0.0.1, for peers that break the protocol; returns its port."""
    listeners: list[trio.SocketListener] = await nursery.start(
        partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _accept_upgrade(stream: trio.SocketStream) -> WSConnection:
    """Answer a client's opening handshake by hand."""
    server = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some()
        assert data, "the client hung up during the handshake"
        server.receive_data(data)
        for event in server.events():
            if isinstance(event, Request):
                await stream.send_all(server.send(AcceptConnection()))
                return server


def _ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws?clientId=test"


def _end_event(prompt_id: str) -> str:
    return json.dumps({"type": "executing", "data": {"node": None, "prompt_id": prompt_id}})


# -- the fake ComfyUI -----------------------------------------------------------------------
@pytest.fixture
def ws_memory(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """``run``'s "websocket unavailable" memory, fresh for this test."""
    memory: dict[str, float] = {}
    monkeypatch.setattr(_run, "_ws_unavailable_until", memory)
    return memory


def _point_websocket_at(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """Make ``run`` open its websocket on our server instead of the fake's."""
    monkeypatch.setattr(
        _run, "_ws_url", lambda base, client_id: f"ws://127.0.0.1:{port}/ws?clientId={client_id}"
    )


@asynccontextmanager
async def _http(**hooks: list[Callable[..., Awaitable[None]]]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False, event_hooks=hooks) as http:
        yield http


def _job(color: int) -> Job:
    """A model-free prompt that runs in milliseconds once its turn comes."""
    workflow = empty_image_workflow(1, color, width=16, height=16)
    return parse_generate({"workflow": workflow})


async def _hold_queue(http: httpx.AsyncClient, fake_url: str) -> str:
    """Someone else's long prompt, straight to ComfyUI: the next prompt stays pending."""
    workflow = text_to_image_workflow(prompt="blocker", width=64, height=64, steps=5000)
    response = await http.post(f"{fake_url}/prompt", json={"prompt": workflow})
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


async def _release(http: httpx.AsyncClient, fake_url: str, blocker_id: str) -> None:
    await http.post(f"{fake_url}/interrupt", json={"prompt_id": blocker_id})


async def _pending(http: httpx.AsyncClient, fake_url: str, blocker_id: str) -> str:
    """The id of the prompt queued behind the blocker, once there is one."""
    with trio.fail_after(10):
        while True:
            queue = (await http.get(f"{fake_url}/queue")).json()
            ids: list[str] = [item[1] for item in queue["queue_pending"] if item[1] != blocker_id]
            if ids:
                return ids[0]
            await trio.sleep(0.01)


async def _finished(http: httpx.AsyncClient, fake_url: str, prompt_id: str) -> None:
    with trio.fail_after(10):
        while True:
            if (await http.get(f"{fake_url}/history/{prompt_id}")).json():
                return
            await trio.sleep(0.01)


# -- the client alone -----------------------------------------------------------------------
async def test_messages_up_to_the_cap_pass_and_a_bigger_one_closes(nursery: trio.Nursery) -> None:
    server_saw: list[int] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("a" * 1000)
        await ws.send_message(b"b" * 1000)
        await ws.send_message(b"c" * 1001)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        server_saw.append(closed.value.reason.code)
        done.set()

    port = await _serve(nursery, handler)
    with trio.fail_after(HANG_GUARD):
        async with connect_websocket(_ws_url(port), max_message_size=1000) as ws:
            assert await ws.receive() == "a" * 1000
            assert await ws.receive() == b"b" * 1000
            with pytest.raises(WebSocketError, match="1009 MESSAGE_TOO_BIG"):
                await ws.receive()
            with pytest.raises(WebSocketError):
                await ws.send_text("still there?")
        await done.wait()
    assert server_saw == [1009]


async def test_a_huge_message_is_refused_in_bounded_memory(nursery: trio.Nursery) -> None:
    sent = 0
    hung_up = trio.Event()

    async def flood(stream: trio.SocketStream) -> None:
        # One binary frame of HUGE bytes, streamed, so that this side holds little memory.
        nonlocal sent
        await _accept_upgrade(stream)
        chunk = bytes(65536)
        try:
            await stream.send_all(struct.pack("!BBQ", 0x82, 127, HUGE))
            while sent < HUGE:
                await stream.send_all(chunk)
                sent += len(chunk)
        except trio.BrokenResourceError:
            hung_up.set()

    port = await _serve_raw(nursery, flood)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        with trio.fail_after(HANG_GUARD):
            async with connect_websocket(_ws_url(port)) as ws:
                with pytest.raises(WebSocketError, match="MESSAGE_TOO_BIG"):
                    await ws.receive()
            await hung_up.wait()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    # The client stopped reading at the cap and hung up: the rest never left the server.
    assert sent < HUGE
    assert peak < 4 * MAX_MESSAGE_SIZE


async def test_refused_upgrade_and_bad_urls(nursery: trio.Nursery) -> None:
    async def refuse(request: WebSocketRequest) -> None:
        await request.reject(403)

    port = await _serve(nursery, refuse)
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WebSocketError, match=r"refused \(HTTP 403\)"):
            async with connect_websocket(_ws_url(port)):
                pytest.fail("the upgrade was refused")
    for url in ("wss://127.0.0.1/ws", "http://127.0.0.1/ws", "ws://127.0.0.1:99999/ws", "ws:///ws"):
        with pytest.raises(WebSocketError, match="not a ws:// URL"):
            async with connect_websocket(url):
                pytest.fail(url)
    # The client speaks no TLS: an https ComfyUI is followed by polling alone.
    assert _run._ws_url("https://comfy.example", "c") is None
    assert _run._ws_url("http://127.0.0.1:8188/", "c") == "ws://127.0.0.1:8188/ws?clientId=c"


async def test_unanswered_handshake_gives_up_at_the_deadline(nursery: trio.Nursery) -> None:
    closed = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        while await stream.receive_some():
            pass
        closed.set()

    port = await _serve_raw(nursery, silent)
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WebSocketError, match=r"no websocket handshake within 0.1 s"):
            async with connect_websocket(_ws_url(port), connect_timeout=0.1):
                pytest.fail("the server never answered")
        # Its socket is closed, not left to the garbage collector.
        await closed.wait()


async def test_cancellation_propagates_and_closing_never_waits_long(nursery: trio.Nursery) -> None:
    seen: list[list[str]] = []
    closed = trio.Semaphore(0)

    async def unanswering(stream: trio.SocketStream) -> None:
        # Completes the handshake, then reads and never answers anything (close frames included).
        events: list[str] = []
        seen.append(events)
        server = await _accept_upgrade(stream)
        try:
            while data := await stream.receive_some():
                server.receive_data(data)
                events.extend(type(event).__name__ for event in server.events())
        except trio.BrokenResourceError:
            pass
        events.append("hung up")
        closed.release()

    port = await _serve_raw(nursery, unanswering)
    with trio.fail_after(HANG_GUARD):
        # Cancelled while receiving: the cancellation reaches its scope (not a WebSocketError),
        # and the socket is closed at once.
        with trio.CancelScope() as scope:
            async with connect_websocket(_ws_url(port)) as ws:
                scope.cancel()
                await ws.receive()
            pytest.fail("the cancellation was swallowed")
        assert scope.cancelled_caught
        await closed.acquire()
        assert seen[0] == ["hung up"]  # no close handshake begun: nobody would read its answer
        # Left normally: a close frame, whose answer is awaited only CLOSE_TIMEOUT.
        async with connect_websocket(_ws_url(port)):
            pass
        await closed.acquire()
        assert seen[1] == ["CloseConnection", "hung up"]


# -- run ------------------------------------------------------------------------------------
async def test_events_wake_the_run_through_pings_previews_and_noise(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ws_memory: dict[str, float],
) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    history_polls = 0
    first_poll_answered = trio.Event()

    async def count(response: httpx.Response) -> None:
        nonlocal history_polls
        if response.request.url.path.startswith("/history/"):
            history_polls += 1
            first_poll_answered.set()

    async with _http() as http, _http(response=[count]) as run_http:
        blocker_id = await _hold_queue(http, fake.url)
        # Polls only when the websocket says so: nothing else can end this run.
        follower = _run._Prompt(
            context=RunContext(model_server_url=fake.url, http=run_http),
            prompt=_job(1).detail,
            settings=RunSettings(poll_interval=math.inf, max_poll_interval=math.inf),
        )
        prompt_id = follower.prompt_id

        async def handler(request: WebSocketRequest) -> None:
            ws = await request.accept()
            await ws.send_message(json.dumps({"type": "status", "data": {"sid": "x"}}))
            await ws.ping(b"still there?")  # returns once the client answers
            await ws.send_message(struct.pack(">II", 1, 2) + PNG_SIGNATURE + bytes(200_000))
            for noise in ("not json", "[1, 2]", '{"type": "executing", "data": 3}'):
                await ws.send_message(noise)
            await ws.send_message(_end_event("someone else's"))
            node = {"type": "executing", "data": {"node": "1", "prompt_id": prompt_id}}
            await ws.send_message(json.dumps(node))
            # The first poll found nothing (ours is pending); let it run, then tell.
            await first_poll_answered.wait()
            await _release(http, fake.url, blocker_id)
            await _finished(http, fake.url, prompt_id)
            await ws.send_message(_end_event(prompt_id))
            with pytest.raises(ConnectionClosed):
                await ws.get_message()  # until the run hangs up

        _point_websocket_at(monkeypatch, await _serve(nursery, handler))
        with trio.fail_after(HANG_GUARD):
            reply = await follower.run()
    assert reply.status == 200, reply.body
    assert len(json.loads(reply.body)["images"]) == 1
    assert history_polls == 2
    assert ws_memory == {}


async def test_message_over_the_cap_falls_back_to_polling(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    ws_memory: dict[str, float],
) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    outcome: dict[str, str] = {}
    async with _http() as http:
        blocker_id = await _hold_queue(http, fake.url)

        async def handler(request: WebSocketRequest) -> None:
            ws = await request.accept()
            # Ours is pending behind the blocker: it cannot end before these are sent.
            prompt_id = await _pending(http, fake.url, blocker_id)
            preview = struct.pack(">II", 1, 2) + bytes(HUGE)
            for name, message in (("preview", preview), ("end", _end_event(prompt_id))):
                try:
                    await ws.send_message(message)
                except ConnectionClosed:
                    outcome[name] = "refused"
                else:
                    outcome[name] = "delivered"
            await _release(http, fake.url, blocker_id)

        _point_websocket_at(monkeypatch, await _serve(nursery, handler))
        context = RunContext(model_server_url=fake.url, http=http)
        with caplog.at_level(logging.DEBUG, logger="backends.comfyui"):
            with trio.fail_after(HANG_GUARD):
                reply = await run_prompt(_job(2), context)
    assert reply.status == 200, reply.body
    # The client read no further than the cap, hung up, and polling found the end.
    assert outcome == {"preview": "refused", "end": "refused"}
    assert "1009 MESSAGE_TOO_BIG" in caplog.text
    assert ws_memory == {}  # it did open: the next run tries it again


async def test_unanswered_handshake_costs_a_run_only_the_connect_timeout(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    ws_memory: dict[str, float],
) -> None:
    fake = await start_fake_comfyui(nursery, tmp_path)
    connections = 0
    closed = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        while await stream.receive_some():
            pass
        closed.set()

    _point_websocket_at(monkeypatch, await _serve_raw(nursery, silent))
    monkeypatch.setattr(_run, "_WS_CONNECT_TIMEOUT", 0.2)
    async with _http() as http:
        context = RunContext(model_server_url=fake.url, http=http)
        with caplog.at_level(logging.DEBUG, logger="backends.comfyui"):
            with trio.fail_after(HANG_GUARD):
                first = await run_prompt(_job(3), context)
                # Remembered: the next run does not try (nor wait) again.
                second = await run_prompt(_job(4), context)
                await closed.wait()
    assert first.status == second.status == 200
    # Given up at the connect deadline, not later (the hang guard would have fired).
    assert "no websocket handshake within 0.2 s" in caplog.text
    assert connections == 1
    assert fake.url in ws_memory
