"""``python -m pyworker.client``: send one request the way Vast's client does.

With your account key and the endpoint group's name, the group's own key comes from Vast's
console; then ``POST {router}/route/`` with the request's estimated cost (the backend's own
estimate of the payload's workload with ``--backend``), polling while the router says "wait",
and ``POST {url}{route}`` with ``{"auth_data", "session_id", "payload"}`` to the worker it
names, re-routing when the worker is full, failing or gone (see :mod:`._routing`). A stream's
tokens are printed as they arrive; images are saved to files (``--output``).

Examples::

    python -m pyworker.client -k "$VAST_API_KEY" -e my-group --backend hello_world \\
        /generate_stream '{"prompt": "hello", "max_response_tokens": 16}'
    python -m pyworker.client --router http://127.0.0.1:8081 --backend comfyui \\
        --output cat.png /generate '{"prompt": "a cat"}'

Exit status: 0 for a 2xx answer, 1 when the router or the worker refused, 2 when either could
not be reached or timed out, or for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import trio

from .. import PayloadError, UnknownBackendError, load_backend
from ._answers import EventReader, event_error, save_images, token_text
from ._console import ConsoleError
from ._route_records import (
    DEFAULT_PATIENCE,
    Answer,
    CallWatcher,
    Patience,
    RouteError,
    Target,
    WorkerError,
)
from ._routing import ask_router, call_endpoint
from ._target_options import (
    add_target_options,
    check_target_options,
    patience_from,
    resolve_target,
)

__all__ = ["Answer", "RouteError", "WorkerError", "ask_router", "main", "send"]

DEFAULT_COST = 100
"""The cost told to the router when neither ``--cost`` nor ``--backend`` gives one (Vast's
client's default)."""


class _StreamChunks(CallWatcher):
    """Hands the chunks of a streamed 2xx answer to ``on_chunk`` as they arrive."""

    def __init__(self, on_chunk: Callable[[bytes], object]) -> None:
        self._on_chunk = on_chunk
        self._streamed = False

    def answered(self, status: int, streamed: bool) -> None:
        self._streamed = streamed

    def chunk(self, data: bytes) -> None:
        if self._streamed:
            self._on_chunk(data)


async def send(
    route: str,
    payload: object,
    *,
    autoscaler: str,
    endpoint: str = "default",
    cost: float = DEFAULT_COST,
    api_key: str | None = None,
    http: httpx.AsyncClient | None = None,
    read_timeout: float = 300.0,
    on_chunk: Callable[[bytes], object] | None = None,
    patience: Patience = DEFAULT_PATIENCE,
) -> Answer:
    """Route one request through the router, then send it to the chosen worker.

    :func:`~pyworker.devtools.call_endpoint` with a target made of the arguments.

    Args:
        route: the worker's path, e.g. ``"/generate"``.
        payload: the backend's payload (any JSON value).
        autoscaler: the router's base URL.
        endpoint: the endpoint group's name.
        cost: the estimated workload told to the router.
        api_key: the endpoint group's own key (a local stand-in needs none).
        http: the client to use (default: a new one with 10 s connect/write timeouts and
            ``read_timeout`` between bytes, closed on return).
        read_timeout: seconds to wait for the next bytes of the answer (own client only).
        on_chunk: called with each chunk of a streamed 2xx answer as it arrives.
        patience: pauses and bounds for polls and re-routes.

    Returns:
        The worker's answer (see :func:`~pyworker.devtools.call_endpoint`).

    Raises:
        RouteError: the router did not route.
        WorkerError: the last worker tried could not be reached, or its answer broke off.
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
                patience=patience,
            )
    target = Target(endpoint=endpoint, router=autoscaler, api_key=api_key)
    watcher = CallWatcher() if on_chunk is None else _StreamChunks(on_chunk)
    return await call_endpoint(
        http, target, route, payload, cost=cost, patience=patience, watcher=watcher
    )


class _TokenPrinter:
    """Writes a stream's tokens to stdout as they arrive (its events decoded as ``backend``'s),
    and what is not JSON as it is, a line per event."""

    def __init__(self, backend: str | None) -> None:
        self._backend = backend
        self._events = EventReader()
        self.ends_with_newline = True

    def __call__(self, chunk: bytes) -> None:
        for data in self._events.feed(chunk):
            self._event(data)

    def finish(self) -> None:
        """Print what the stream's last line held, and end the output's line."""
        for data in self._events.close():
            self._event(data)
        if not self.ends_with_newline:
            self._write("\n")

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        self.ends_with_newline = text.endswith("\n")

    def _event(self, data: str) -> None:
        if data.strip() == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            self._write(data + "\n")
            return
        text = token_text(event, self._backend)
        if text:
            self._write(text)
        elif error := event_error(event):
            print(f"error in the stream: {error}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyworker.client",
        description="Send one signed request through the router to a worker, as Vast's "
        "client does.",
    )
    add_target_options(parser)
    parser.add_argument(
        "--backend",
        default=os.environ.get("BACKEND"),
        help="the backend the workers serve: the cost told to the router is its estimate of "
        "the payload's workload (a payload it refuses is not sent), and streams are read its "
        "way (default: $BACKEND)",
    )
    parser.add_argument(
        "--cost",
        type=float,
        default=None,
        help=f"the workload told to the router, instead of the backend's estimate (default "
        f"{DEFAULT_COST} without --backend)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds for the whole request: routing, waiting for a worker, re-routes and the "
        "answer (default 600)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="save the answer's images here (ComfyUI; NAME-1.png, NAME-2.png, ... for several) "
        "instead of printing their base64",
    )
    parser.add_argument("--payload-file", default=None, help="read the payload from this file")
    parser.add_argument("route", help="the worker's path, e.g. /generate")
    parser.add_argument("payload", nargs="?", help="the payload as JSON")
    return parser


def _estimate(backend_name: str, route: str, payload: object) -> float:
    """The backend's estimate of the payload's workload on ``route``.

    Raises:
        ValueError: unknown backend or route, or a payload the backend refuses (says which).
    """
    try:
        backend = load_backend(backend_name, os.environ)
        endpoint = backend.endpoint(route)
    except UnknownBackendError as exc:
        raise ValueError(str(exc)) from None
    except KeyError:
        routes = ", ".join(e.route for e in backend.endpoints)
        raise ValueError(f"backend {backend_name} has no route {route} (it has {routes})") from None
    try:
        return endpoint.parse(payload).workload
    except PayloadError as exc:
        raise ValueError(f"backend {backend_name} refuses the payload: {exc.errors}") from None


def _number(value: float) -> float:
    """An integral cost as an int, so the router signs ``132`` rather than ``132.0``."""
    return int(value) if float(value).is_integer() else value


async def _request(
    args: argparse.Namespace, payload: object, cost: float, on_chunk: Callable[[bytes], object]
) -> Answer:
    async with httpx.AsyncClient() as console_http:
        target, tls = await resolve_target(args, console_http)
    timeout = httpx.Timeout(10.0, read=args.timeout)
    async with httpx.AsyncClient(timeout=timeout, verify=tls or True) as http:
        with trio.fail_after(args.timeout):
            return await call_endpoint(
                http,
                target,
                args.route,
                payload,
                cost=cost,
                patience=patience_from(args),
                watcher=_StreamChunks(on_chunk),
            )


def _read_payload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> object:
    if (args.payload is None) == (args.payload_file is None):
        parser.error("give the payload either as an argument or with --payload-file")
    try:
        if args.payload_file is not None:
            with open(args.payload_file, encoding="utf-8") as file:
                return json.load(file)
        return json.loads(args.payload)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read the payload: {exc}")


def _show(answer: Answer, output: Path | None) -> int:
    """Print a complete (not streamed) 2xx answer, its images saved; returns the exit status."""
    try:
        decoded = answer.json()
    except ValueError:
        print(answer.body.decode("utf-8", "replace"))
        return 0
    try:
        shown, saved = save_images(decoded, output)
    except OSError as exc:
        print(f"cannot save the images: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    for path in saved:
        print(f"saved {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns the exit status (0 ok, 1 refused, 2 cannot connect or bad use)."""
    parser = _parser()
    args = parser.parse_args(argv)
    check_target_options(parser, args)
    payload = _read_payload(parser, args)
    if args.cost is not None:
        cost = args.cost
    elif args.backend:
        try:
            cost = _estimate(args.backend, args.route, payload)
        except ValueError as exc:
            parser.error(str(exc))
    else:
        cost = DEFAULT_COST
    printer = _TokenPrinter(args.backend)
    try:
        answer = trio.run(partial(_request, args, payload, _number(cost), printer))
    except ConsoleError as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    except RouteError as exc:
        print(str(exc), file=sys.stderr)
        return 1 if exc.status else 2
    except WorkerError as exc:
        print(f"connection error: {exc}", file=sys.stderr)
        return 2
    except trio.TooSlowError:
        print(f"no answer within {args.timeout:g} s", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if not 200 <= answer.status < 300:
        print(f"HTTP {answer.status}", file=sys.stderr)
        print(answer.body.decode("utf-8", "replace"), file=sys.stderr)
        return 1
    if answer.streamed:
        printer.finish()
        return 0
    return _show(answer, args.output)


if __name__ == "__main__":
    sys.exit(main())
