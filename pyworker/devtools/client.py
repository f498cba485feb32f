"""``python -m pyworker.client``: send one request the way a Vast client does.

First ``POST {autoscaler}/route/`` with the endpoint group's name and the request's estimated cost;
the router answers with a worker URL and a signed ``auth_data``. Then ``POST {url}{route}`` with
``{"auth_data": ..., "payload": ...}`` and print the answer, chunk by chunk when it streams.

Example::

    python -m pyworker.client --autoscaler http://127.0.0.1:8081 /generate \\
        '{"prompt": "hello", "max_response_tokens": 16}'
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import httpx
import trio

__all__ = ["Answer", "RouteError", "ask_router", "main", "send"]

SIGNED_FIELDS = ("signature", "cost", "endpoint", "reqnum", "url")
"""The ``auth_data`` fields every router's answer has. The whole answer is forwarded, as Vast's
newest client does: its other fields (``request_idx``) name the request in the worker's
reports."""


class RouteError(Exception):
    """The router refused to route, or answered something that is not a route.

    Attributes:
        status: the router's HTTP status.
        body: the router's answer, as text.
    """

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body

    def __str__(self) -> str:
        return f"router answered {self.status}: {self.body}"


@attrs.frozen(kw_only=True)
class Answer:
    """The worker's answer.

    Attributes:
        status: the HTTP status.
        content_type: the ``content-type`` header ("" if none).
        streamed: whether it was a stream (``text/event-stream`` or chunked).
        chunks: the body as it arrived.
    """

    status: int
    content_type: str
    streamed: bool
    chunks: tuple[bytes, ...]

    @property
    def body(self) -> bytes:
        """The whole body."""
        return b"".join(self.chunks)

    def json(self) -> Any:
        """The body decoded as JSON.

        Raises:
            ValueError: the body is not JSON.
        """
        return json.loads(self.body)


def _is_streamed(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    encoding = response.headers.get("transfer-encoding", "")
    return content_type.startswith("text/event-stream") or "chunked" in encoding.lower()


async def ask_router(
    http: httpx.AsyncClient,
    autoscaler: str,
    *,
    endpoint: str,
    cost: object,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Ask the router for a worker.

    Args:
        http: the client to use.
        autoscaler: the router's base URL.
        endpoint: the endpoint group's name.
        cost: the request's estimated workload.
        api_key: the account's API key (the real router needs it; the stand-in ignores it).

    Returns:
        The router's answer: at least ``url`` and the signed fields.

    Raises:
        RouteError: the router answered non-2xx, or without the signed fields.
        httpx.TransportError: the router cannot be reached.
    """
    request: dict[str, Any] = {"endpoint": endpoint, "cost": cost}
    if api_key is not None:
        request["api_key"] = api_key
    response = await http.post(f"{autoscaler.rstrip('/')}/route/", json=request)
    if not response.is_success:
        raise RouteError(response.status_code, response.text)
    try:
        reply = response.json()
    except ValueError:
        raise RouteError(response.status_code, f"not JSON: {response.text[:200]}") from None
    if not isinstance(reply, dict) or any(name not in reply for name in SIGNED_FIELDS):
        raise RouteError(response.status_code, f"not a signed route: {response.text[:200]}")
    return reply


async def send(
    route: str,
    payload: object,
    *,
    autoscaler: str,
    endpoint: str = "default",
    cost: object = 100,
    api_key: str | None = None,
    http: httpx.AsyncClient | None = None,
    read_timeout: float = 300.0,
    on_chunk: Callable[[bytes], object] | None = None,
) -> Answer:
    """Route one request through the router, then send it to the chosen worker.

    Args:
        route: the worker's path, e.g. ``"/generate"``.
        payload: the backend's payload (any JSON value).
        autoscaler: the router's base URL.
        endpoint: the endpoint group's name.
        cost: the estimated workload told to the router.
        api_key: the account's API key, sent to the router.
        http: the client to use (default: a new one with 10 s connect/write timeouts and
            ``read_timeout`` between bytes, closed on return).
        read_timeout: seconds to wait for the next bytes of the answer (own client only).
        on_chunk: called with each chunk of a streamed 2xx answer as it arrives.

    Returns:
        The worker's answer, whatever its status.

    Raises:
        RouteError: the router did not route.
        httpx.TransportError: the router or the worker cannot be reached, or timed out.
    """
    if http is None:
        timeout = httpx.Timeout(10.0, read=read_timeout)
        async with httpx.AsyncClient(timeout=timeout) as own:
            return await send(
                route,
                payload,
                autoscaler=autoscaler,
                endpoint=endpoint,
                cost=cost,
                api_key=api_key,
                http=own,
                on_chunk=on_chunk,
            )
    reply = await ask_router(http, autoscaler, endpoint=endpoint, cost=cost, api_key=api_key)
    envelope = {"auth_data": reply, "payload": payload}
    url = f"{str(reply['url']).rstrip('/')}/{route.lstrip('/')}"
    async with http.stream("POST", url, json=envelope) as response:
        streamed = _is_streamed(response)
        chunks = []
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            if on_chunk is not None and streamed and response.is_success:
                on_chunk(chunk)
        return Answer(
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            streamed=streamed,
            chunks=tuple(chunks),
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyworker.client",
        description="Send one signed request through the router to a worker.",
    )
    parser.add_argument("--autoscaler", required=True, help="the router's base URL")
    parser.add_argument("--endpoint", default="default", help="the endpoint group's name")
    parser.add_argument("--cost", default="100", help="estimated workload told to the router")
    parser.add_argument("--api-key", default=None, help="API key for the router")
    parser.add_argument("--timeout", type=float, default=300.0, help="read timeout, seconds")
    parser.add_argument("--payload-file", default=None, help="read the payload from this file")
    parser.add_argument("route", help="the worker's path, e.g. /generate")
    parser.add_argument("payload", nargs="?", help="the payload as JSON")
    return parser


def _cost(text: str) -> object:
    """``--cost`` as a number when it is one (the router signs whatever type it is given)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class _StreamPrinter:
    """Writes a stream's chunks to stdout as they arrive, decoding UTF-8 across chunk edges."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ends_with_newline = True

    def __call__(self, chunk: bytes) -> None:
        text = self._decoder.decode(chunk)
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.ends_with_newline = text.endswith("\n")


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns the exit status (0 ok, 1 refused, 2 cannot connect or bad use)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.payload is None) == (args.payload_file is None):
        parser.error("give the payload either as an argument or with --payload-file")
    try:
        if args.payload_file is not None:
            with open(args.payload_file, encoding="utf-8") as file:
                payload = json.load(file)
        else:
            payload = json.loads(args.payload)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read the payload: {exc}")

    printer = _StreamPrinter()
    try:
        answer = trio.run(
            partial(
                send,
                args.route,
                payload,
                autoscaler=args.autoscaler,
                endpoint=args.endpoint,
                cost=_cost(args.cost),
                api_key=args.api_key,
                read_timeout=args.timeout,
                on_chunk=printer,
            )
        )
    except RouteError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"connection error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if not 200 <= answer.status < 300:
        print(f"HTTP {answer.status}", file=sys.stderr)
        print(answer.body.decode("utf-8", "replace"), file=sys.stderr)
        return 1
    if answer.streamed:
        if not printer.ends_with_newline:
            print()
        return 0
    try:
        print(json.dumps(answer.json(), indent=2, ensure_ascii=False))
    except ValueError:
        print(answer.body.decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
