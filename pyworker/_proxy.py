"""The proxied routes: a thin ASGI path from client envelope to model server and back.

Proxied routes are the hot path, so they bypass Quart's request machinery: this module reads
the body, checks the envelope, signature, payload and lifecycle, admits the request and relays
the model server's answer chunk by chunk as it arrives. Everything else (``/ping``,
``/healthcheck``, ``/status``) is served by a Quart-Trio app behind it (see ``_app.py``).

A client that disconnects cancels its request at once: the upstream connection is closed, which
is how model servers (TGI, vLLM, llama.cpp, the fakes) learn to stop generating.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs
import trio

from ._admission import Admission, Overloaded
from ._auth import AuthData, Authenticator, AuthError
from ._backend import Backend, Endpoint, Job, RunContext
from ._lifecycle import Lifecycle
from ._load import LoadTracker, Ticket
from ._payload import PayloadError
from ._upstream import UpstreamError, UpstreamPool, UpstreamTimeout

log = logging.getLogger("pyworker.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loosely typed: Quart and hypercorn each declare their own precise (and mutually
# incompatible) ASGI types.
ASGIApp = Callable[..., Awaitable[None]]

# Response headers that describe the upstream hop, not the answer (RFC 9110 §7.6.1), plus the
# ones our server sets itself.
_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
    }
)
_JSON = [(b"content-type", b"application/json")]


class _Refusal(Exception):
    """An answer other than a relay: status, JSON body, extra headers."""

    def __init__(
        self, status: int, body: object, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers or []


class _ClientGone(Exception):
    """The client disconnected before its answer was complete."""


@attrs.frozen(kw_only=True)
class ProxyLimits:
    """Bounds on what a client may send."""

    max_body_bytes: int = 16 * 1024 * 1024
    body_timeout: float = 30.0


@attrs.define(eq=False)
class Proxy:
    """The ASGI application of the worker: proxied routes here, the rest to ``fallback``.

    Args:
        backend: the backend whose endpoints are proxied.
        lifecycle: decides whether requests are admitted.
        tracker: counts load.
        admission: 429s and one-at-a-time ordering.
        authenticator: checks the router's signature.
        upstream: the model server connection pool.
        run_context: handed to endpoints with a custom ``run``.
        fallback: the ASGI app for every other route and for lifespan.
        limits: body size and time bounds.
    """

    backend: Backend
    lifecycle: Lifecycle
    tracker: LoadTracker
    admission: Admission
    authenticator: Authenticator
    upstream: UpstreamPool
    run_context: RunContext
    fallback: ASGIApp
    limits: ProxyLimits = ProxyLimits()
    _routes: dict[str, Endpoint] = attrs.field(init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._routes = {e.route: e for e in self.backend.endpoints}
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._routes.get(scope["path"])
            if endpoint is not None:
                await self._serve(endpoint, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.tracker.in_flight:
            await self._idle.wait()

    # -- one request -----------------------------------------------------------------------
    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["method"] != "POST":
                raise _Refusal(405, {"error": "use POST"}, [(b"allow", b"POST")])
            body = await self._read_body(scope, receive)
            job = self._check(endpoint, body)
        except _Refusal as refusal:
            await _send_json(send, refusal.status, refusal.body, refusal.headers)
            return
        except _ClientGone:
            return
        await self._forward(endpoint, job, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.limits.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise _Refusal(413, {"error": f"request body over {limit} bytes"})
        parts: list[bytes] = []
        size = 0
        with trio.move_on_after(self.limits.body_timeout) as timer:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _Refusal(413, {"error": f"request body over {limit} bytes"})
                parts.append(chunk)
                if not message.get("more_body", False):
                    break
        if timer.cancelled_caught:
            raise _Refusal(408, {"error": "request body not received in time"})
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _check(self, endpoint: Endpoint, body: bytes) -> Job:
        """Validate the envelope, signature, payload and state; return the job to forward."""
        try:
            envelope = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _Refusal(400, {"error": f"request body is not valid JSON: {exc}"}) from None
        if not isinstance(envelope, dict):
            raise _Refusal(422, {"error": "request body must be a JSON object"})
        errors: dict[str, Any] = {}
        auth: AuthData | None = None
        job: Job | None = None
        if "auth_data" not in envelope:
            errors["auth_data"] = "missing parameter"
        else:
            try:
                auth = AuthData.parse(envelope["auth_data"])
            except PayloadError as exc:
                errors["auth_data"] = _flatten(exc.errors)
        if "payload" not in envelope:
            errors["payload"] = "missing parameter"
        else:
            try:
                job = endpoint.parse(envelope["payload"])
            except PayloadError as exc:
                errors["payload"] = _flatten(exc.errors)
        if errors or auth is None or job is None:
            raise _Refusal(422, errors)
        try:
            self.authenticator.check(auth)
        except AuthError as exc:
            raise _Refusal(exc.status, {"error": exc.reason}) from None
        lifecycle = self.lifecycle
        if not lifecycle.admits_requests:
            raise _Refusal(
                503,
                {"error": lifecycle.refusal_reason(), "state": lifecycle.state},
                [(b"retry-after", b"5")],
            )
        try:
            self.admission.check(job.workload, lifecycle.max_perf)
        except Overloaded as exc:
            self.tracker.rejected(job.workload)
            raise _Refusal(
                429, {"error": str(exc)}, [(b"retry-after", str(exc.retry_after).encode())]
            ) from None
        return job

    async def _forward(self, endpoint: Endpoint, job: Job, receive: Receive, send: Send) -> None:
        tracker = self.tracker
        ticket = tracker.admitted(job.workload, trio.current_time())
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        relay = _Relay(send=send)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_disconnect, receive, relay, nursery.cancel_scope)
                async with self.admission.turn():
                    await self._answer(endpoint, job, relay, ticket)
                nursery.cancel_scope.cancel()
        finally:
            if relay.completed:
                tracker.finished(ticket, trio.current_time(), actual_workload=relay.actual)
            else:
                tracker.cancelled(ticket)
                if relay.client_gone:
                    log.info("client disconnected; request %d cancelled", ticket.id)
            if not tracker.in_flight:
                self._idle.set()

    async def _answer(self, endpoint: Endpoint, job: Job, relay: _Relay, ticket: Ticket) -> None:
        if endpoint.run is not None:
            try:
                reply = await endpoint.run(job, self.run_context)
            except Exception as exc:
                # A backend procedure failing (model server gone mid-way, malformed answer)
                # is the model server's failure, not a crash of the worker.
                log.warning("request %d: %s", ticket.id, exc, exc_info=True)
                await relay.whole(502, _JSON, _json_bytes({"error": f"model server: {exc}"}))
                relay.completed = False
                return
            await relay.whole(
                reply.status, [(b"content-type", reply.content_type.encode())], reply.body
            )
            return
        try:
            response = await self.upstream.request(b"POST", job.upstream_path.encode(), job.body)
        except UpstreamTimeout as exc:
            await relay.whole(504, _JSON, _json_bytes({"error": str(exc)}))
            relay.completed = False  # no work was done for it
            return
        except UpstreamError as exc:
            await relay.whole(502, _JSON, _json_bytes({"error": str(exc)}))
            relay.completed = False
            return
        async with response:
            headers = [(k, v) for k, v in response.headers if k not in _HOP_HEADERS]
            if response.status >= 400:
                # Refused or failed upstream: the error is relayed, but no capacity was spent
                # on it, so it must not count as work done (cur_perf).
                relay.actual = 0.0
            await relay.start(response.status, headers)
            observe = endpoint.observe if response.status < 400 else None
            try:
                while chunk := await response.receive():
                    if observe is not None:
                        seen = observe(chunk)
                        if seen is not None:
                            relay.actual = seen
                    if response.complete:
                        # The usual JSON answer: one chunk, sent with the end of the response.
                        await relay.last(chunk)
                        return
                    await relay.chunk(chunk)
            except UpstreamError as exc:
                # The headers are gone already: returning without the final body message
                # makes the server close the connection, so the client sees a broken
                # response rather than a silently truncated "success".
                log.warning("request %d: model server failed mid-response: %s", ticket.id, exc)
                return
            await relay.end()


@attrs.define(eq=False)
class _Relay:
    """Sends one response to the client and remembers how far it got."""

    send: Send
    completed: bool = False
    client_gone: bool = False
    actual: float | None = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        # Completed *before* the last send: hypercorn closes the stream, and so delivers
        # http.disconnect to our watcher, from inside this very call.
        self.completed = True
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def last(self, data: bytes) -> None:
        self.completed = True  # before the send: see end()
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self.start(status, [*headers, (b"content-length", str(len(body)).encode())])
        self.completed = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


async def _watch_disconnect(receive: Receive, relay: _Relay, scope: trio.CancelScope) -> None:
    # The body has been read, so the next message can only be the disconnect.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not relay.completed:
                relay.client_gone = True
                scope.cancel()
            return


def _flatten(errors: dict[str, Any]) -> Any:
    """``{"": msg}`` (the whole value is wrong) becomes ``msg``."""
    if set(errors) == {""}:
        return errors[""]
    return errors


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


async def _send_json(
    send: Send, status: int, body: object, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = _json_bytes(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(data)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})
