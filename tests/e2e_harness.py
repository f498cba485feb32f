"""What the end-to-end tests of the request path share (``test_e2e.py``,
``test_e2e_failures.py``): a hello_world prompt, a stream's events with their arrival times, and
polling the fake model server's counters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import trio
from harness import Stack, eventually


def prompt(tokens: int, text: str = "hi") -> dict[str, object]:
    return {"prompt": text, "max_response_tokens": tokens}


@attrs.define
class Events:
    """Server-sent events as they arrive, with their arrival times."""

    started: float
    events: list[tuple[float, dict[str, Any]]] = attrs.Factory(list)
    chunks: int = 0
    _buffer: bytes = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        now = trio.current_time()
        self.chunks += 1
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n\n")
        new = [json.loads(block.removeprefix(b"data: ")) for block in complete if block]
        self.events.extend((now, event) for event in new)
        return new

    @property
    def tokens(self) -> list[dict[str, Any]]:
        return [event for _, event in self.events if "token" in event]


async def read_stream(stack: Stack, payload: object, events: Events) -> None:
    """POST to /generate_stream and feed ``events`` until the stream ends."""
    url = stack.url + "/generate_stream"
    async with stack.http.stream("POST", url, json=stack.envelope(payload)) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for chunk in stream.aiter_raw():
            events.feed(chunk)


async def stats_where(stack: Stack, check: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Poll the fake's /stats until ``check`` holds (bounded by the test's guard)."""

    async def probe() -> dict[str, int] | None:
        stats = await stack.stats()
        return stats if check(stats) else None

    result: dict[str, int] = await eventually(probe, what="fake /stats condition")
    return result
