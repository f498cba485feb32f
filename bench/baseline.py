"""The reference server: bare Hypercorn (trio) serving a constant JSON answer.

``python -m bench.baseline --port P``

The cheapest thing the worker's HTTP stack can do: a raw ASGI app that reads the request body
and answers the same bytes as the benchmark upstream, under the same Hypercorn settings as the
worker. The worker's throughput is reported as a fraction of this one's.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from bench.upstream import ANSWER

Message = MutableMapping[str, Any]
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(ANSWER.body)).encode()),
    ],
}
_BODY = {"type": "http.response.body", "body": ANSWER.body, "more_body": False}


async def app(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Any]
) -> None:
    """Answer every HTTP request with the constant JSON body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send(_START)
    await send(_BODY)


def config(port: int) -> Config:
    """Hypercorn settings as the worker uses them."""
    cfg = Config()
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("bench.baseline")
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.graceful_timeout = 2.0
    cfg.keep_alive_timeout = 75.0
    return cfg


async def _main(port: int) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, stop)
        await serve(app, config(port), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    trio.run(partial(_main, parser.parse_args(argv).port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
