"""Client connections at the worker's public socket, over real sockets: the cap on open
connections and its clear refusal, idle connections let go, and slowloris."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from harness import Stack, eventually, ready_stack

GUARD = 30
PROMPT = {"prompt": "hi", "max_response_tokens": 2}


async def _connect(stack: Stack) -> trio.SocketStream:
    port = int(stack.url.rsplit(":", 1)[1])
    return await trio.open_tcp_stream("127.0.0.1", port)


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def _raw_post(stack: Stack) -> bytes:
    """One signed request on a connection of its own; the whole answer."""
    body = json.dumps(stack.envelope(PROMPT)).encode()
    async with await _connect(stack) as stream:
        await stream.send_all(
            b"POST /generate HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        return await _read_all(stream)


async def test_connections_past_the_cap_get_a_clear_503(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(
            nursery, tmp_path, "--token-rate", "20", max_connections=3, max_queue_time=0
        )
        # Three requests under way (each takes 5 s of generation): the cap is busy.
        async with trio.open_nursery() as clients:
            for _ in range(3):
                clients.start_soon(
                    stack.post, "/generate", {"prompt": "hi", "max_response_tokens": 100}
                )
            await eventually(lambda: stack.worker.tracker.in_flight == 3, what="three under way")
            async with await _connect(stack) as extra:
                answer = await _read_all(extra)  # answered at once, then closed
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b"retry-after: 1" in answer
            assert b"too many connections" in answer
            clients.cancel_scope.cancel()
        # Connections freed are connections available (once the server has read the closes).
        while not (answer := await _raw_post(stack)).startswith(b"HTTP/1.1 200 "):
            assert answer.startswith(b"HTTP/1.1 503 ")
            await trio.sleep(0.05)


async def test_idle_and_unfinished_connections_are_let_go(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, keep_alive_timeout=0.5)
        async with await _connect(stack) as idle, await _connect(stack) as unfinished:
            await unfinished.send_all(b"POST /generate HTTP/1.1\r\nhost: x\r\n")
            # Both are closed by the worker, neither holds a descriptor for long.
            assert await _read_all(idle) == b""
            assert not (await _read_all(unfinished)).startswith(b"HTTP/1.1 2")


async def test_slowloris_does_not_starve_a_real_request(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """1,100 half-open request heads against a worker whose cap is 200 connections (as with a
    400-descriptor limit): the heads take turns being evicted, real requests get through."""
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, max_connections=200)
        heads = []
        for _ in range(1100):
            stream = await _connect(stack)
            await stream.send_all(b"POST /generate HTTP/1.1\r\nhost: x\r\nx-slow: ")
            heads.append(stream)
        for _ in range(3):
            assert (await _raw_post(stack)).startswith(b"HTTP/1.1 200 ")
        for stream in heads:
            await stream.aclose()
