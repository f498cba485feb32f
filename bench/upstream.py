"""The benchmarks' model server: instant JSON answers and streams paced at a set interval.

``python -m bench.upstream --port 0 --port-file F --log L --event-interval 0.01``

Built on the fake-server kit (trio + h11, one write per answer), so its own cost per request
is small and is measured by the benchmark itself. It speaks hello_world's API, so the worker
runs its ``hello_world`` backend in front of it:

* ``POST /generate``: a constant small JSON answer, at once (the body is not even parsed);
* ``POST /generate_stream``: ``max_response_tokens`` server-sent events, the first at once,
  then one every ``--event-interval`` seconds on a fixed schedule, then a ``done`` event;
* ``GET /healthcheck``: ``{"status": "ok"}``.

It logs hello_world's ready line, so the worker's log rules see the model as loaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Sequence

import trio

from backends._fakekit import (
    Handler,
    Knobs,
    Request,
    Response,
    StreamResponse,
    knob_parser,
    run_fake,
)

ANSWER = Response.json({"response": " the answer", "prompt_tokens": 1, "generated_tokens": 2})
"""The instant JSON answer (its body is what the bare-server baseline sends too)."""
_EVENT = b'data: {"token": " word"}\n\n'
_DONE = b'data: {"done": true}\n\n'
_HEALTHY = Response.json({"status": "ok"})
_NOT_FOUND = Response.json({"error": "no such route"}, status=404)
_SSE_HEADERS = ((b"cache-control", b"no-cache"),)


def _event_count(body: bytes) -> int:
    try:
        count = json.loads(body).get("max_response_tokens", 16)
    except (ValueError, AttributeError):
        return 16
    return count if isinstance(count, int) and count > 0 else 16


async def _paced(count: int, interval: float) -> AsyncIterator[bytes]:
    # A fixed schedule from the first event: a late wake-up does not shift later events.
    deadline = trio.current_time()
    for index in range(count):
        if index:
            deadline += interval
            await trio.sleep_until(deadline)
        yield _EVENT
    yield _DONE


def make_handler(interval: float) -> Handler:
    """The request handler, streaming one event per ``interval`` seconds."""

    async def handle(request: Request) -> Response | StreamResponse:
        path = request.path
        if path == "/generate":
            return ANSWER
        if path == "/generate_stream":
            chunks = _paced(_event_count(request.body), interval)
            return StreamResponse(chunks=chunks, headers=_SSE_HEADERS)
        if path == "/healthcheck":
            return _HEALTHY
        return _NOT_FOUND

    return handle


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark upstream; returns the exit status."""
    parser = knob_parser("benchmark upstream: instant JSON, paced streams", port=0, load_delay=0)
    parser.add_argument(
        "--event-interval",
        type=float,
        default=0.01,
        metavar="S",
        help="seconds between streamed events (default: %(default)s)",
    )
    namespace = parser.parse_args(argv)
    knobs = Knobs.parse(parser, argv)
    handler = make_handler(namespace.event_interval)
    return run_fake(lambda log: handler, knobs)


if __name__ == "__main__":
    sys.exit(main())
