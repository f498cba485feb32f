"""The proxied routes: one request's path from the client's socket to the model server and back.

:meth:`Pipeline.handle` is that path, one call per stage, in this order:

1. read the body, bounded in size and time (413, 408);
2. parse the envelope: JSON, ``auth_data``'s fields, a ``payload`` present (400, 422);
3. verify the router's signature and the replay window (401; 503 while no key is known);
4. check the lifecycle state (503);
5. parse the payload: the backend's own hook, reached only by signed requests (422);
6. admit: the 429 decision, the request's number remembered, its turn awaited;
7. send the job to the model server (its own 502/504 when it fails);
8. relay the answer as it arrives, until it ends or the client leaves;
9. record the outcome (on leaving the admission block, whatever happened).

Proxied routes are the hot path, so they bypass Quart's request machinery; everything else
(``/ping``, ``/healthcheck``, ``/status``) is served by a Quart-Trio app behind this one
(``_app.py``). A client that disconnects cancels its request at once: the upstream connection
is closed, which is how model servers learn to stop generating.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import trio

from ._admission import Admission, Overloaded
from ._auth import AuthData, Authenticator, AuthError
from ._backend import Backend, Endpoint, Job
from ._lifecycle import Lifecycle
from ._load import CANCELLED, Outcome
from ._model import ModelServer, send_job
from ._payload import PayloadError
from ._relay import relay, send_json
from ._typing import ASGIApp, Receive, Scope, Send

log = logging.getLogger("pyworker.proxy")


class Refusal(Exception):
    """A stage's answer instead of a relay: status, JSON body, extra headers."""

    def __init__(
        self, status: int, body: object, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers


class ClientGone(Exception):
    """The client disconnected before its request was read."""


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds on what a client may send."""

    max_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=attrs.validators.ge(1))
    body_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))


@attrs.frozen(kw_only=True)
class Envelope:
    """A request's envelope, its ``auth_data`` checked for shape (not yet for its signature)."""

    auth: AuthData
    payload: object


# -- the stages ----------------------------------------------------------------------------
async def read_body(scope: Scope, receive: Receive, limits: Limits) -> bytes:
    """Stage 1: the whole request body.

    Raises:
        Refusal: 405 for another method than POST, 413 over the size limit, 408 when it
            does not arrive in time.
        ClientGone: the client left while sending it.
    """
    if scope["method"] != "POST":
        raise Refusal(405, {"error": "use POST"}, [(b"allow", b"POST")])
    limit = limits.max_body_bytes
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise Refusal(413, {"error": f"request body over {limit} bytes"})
    parts: list[bytes] = []
    size = 0
    with trio.move_on_after(limits.body_timeout) as timer:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, {"error": f"request body over {limit} bytes"})
            parts.append(chunk)
            if not message.get("more_body", False):
                break
    if timer.cancelled_caught:
        raise Refusal(408, {"error": "request body not received in time"})
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_envelope(body: bytes) -> Envelope:
    """Stage 2: ``{"auth_data": {...}, "payload": ...}``; other top-level keys are ignored.

    Raises:
        Refusal: 400 when the body is not JSON; 422 when it is not an object, or naming every
            missing or malformed part (``auth_data``'s fields nested under it).
    """
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, {"error": f"request body is not valid JSON: {exc}"}) from None
    if not isinstance(envelope, dict):
        raise Refusal(422, {"error": "request body must be a JSON object"})
    errors: dict[str, Any] = {}
    auth: AuthData | None = None
    if "auth_data" not in envelope:
        errors["auth_data"] = "missing parameter"
    else:
        try:
            auth = AuthData.parse(envelope["auth_data"])
        except PayloadError as exc:
            errors["auth_data"] = _flatten(exc.errors)
    if "payload" not in envelope:
        errors["payload"] = "missing parameter"
    if errors or auth is None:
        raise Refusal(422, errors)
    return Envelope(auth=auth, payload=envelope["payload"])


def parse_payload(endpoint: Endpoint, payload: object) -> Job:
    """Stage 5: the backend's hook validates and weighs the payload.

    Raises:
        Refusal: 422 naming each bad field, under ``payload``.
    """
    try:
        return endpoint.parse(payload)
    except PayloadError as exc:
        raise Refusal(422, {"payload": _flatten(exc.errors)}) from None


def _flatten(errors: dict[str, Any]) -> Any:
    """``{"": msg}`` (the whole value is wrong) becomes ``msg``."""
    if set(errors) == {""}:
        return errors[""]
    return errors


# -- the pipeline --------------------------------------------------------------------------
@attrs.define(eq=False, kw_only=True)
class Pipeline:
    """The worker's ASGI application: proxied routes here, every other one to ``fallback``.

    Args:
        backend: the backend whose endpoints are proxied.
        lifecycle: whether requests are admitted now, and why not.
        authenticator: checks the router's signature.
        admission: 429s, turns, and the accounting of every admitted request.
        model: the model server.
        fallback: the ASGI app for every other route and for lifespan.
        limits: body size and time bounds.
    """

    backend: Backend
    lifecycle: Lifecycle
    authenticator: Authenticator
    admission: Admission
    model: ModelServer
    fallback: ASGIApp
    limits: Limits = Limits()
    _routes: dict[str, Endpoint] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._routes = {e.route: e for e in self.backend.endpoints}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._routes.get(scope["path"])
            if endpoint is not None:
                await self.handle(endpoint, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    async def handle(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one proxied request, from the client's socket to the model server and back."""
        try:
            body = await read_body(scope, receive, self.limits)
            envelope = parse_envelope(body)
            self.verify(envelope.auth)
            self.check_state()
            job = parse_payload(endpoint, envelope.payload)
            remember = partial(self.authenticator.remember, envelope.auth)
            async with self.admission.admit(job.workload, on_admit=remember) as ticket:
                ticket.end(await self.exchange(endpoint, job, receive, send))
        except Refusal as refusal:
            await send_json(send, refusal.status, refusal.body, refusal.headers)
        except Overloaded as exc:
            retry_after = str(exc.retry_after).encode()
            await send_json(send, 429, {"error": str(exc)}, [(b"retry-after", retry_after)])
        except ClientGone:
            pass

    def verify(self, auth: AuthData) -> None:
        """Stage 3: the router's signature, the destination and the replay window.

        Raises:
            Refusal: 401 refused; 503 (with the state) while the router's key is unknown.
        """
        try:
            self.authenticator.verify(auth)
        except AuthError as exc:
            if exc.status == 503:
                # No key yet, so nothing can be checked; the lifecycle cannot be ready either
                # (ready needs the key), and its refusal says why.
                raise self._unavailable() from None
            raise Refusal(exc.status, {"error": exc.reason}) from None

    def check_state(self) -> None:
        """Stage 4: whether the lifecycle admits requests now.

        Raises:
            Refusal: 503 with the reason and the state, and a ``Retry-After``.
        """
        if not self.lifecycle.admits_requests:
            raise self._unavailable()

    def _unavailable(self) -> Refusal:
        lifecycle = self.lifecycle
        body = {"error": lifecycle.refusal_reason(), "state": lifecycle.current.value}
        return Refusal(503, body, [(b"retry-after", b"5")])

    async def exchange(self, endpoint: Endpoint, job: Job, receive: Receive, send: Send) -> Outcome:
        """Stages 7 and 8: send the job, relay the answer; cancelled if the client leaves."""
        outcome = CANCELLED
        async with trio.open_nursery() as nursery:
            watcher = trio.CancelScope()
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope, watcher)
            answer = await send_job(endpoint, job, self.model)
            try:
                observer = endpoint.observe() if endpoint.observe is not None else None
                outcome = await relay(answer, send, observer=observer, before_last=watcher.cancel)
            finally:
                await answer.aclose()
            watcher.cancel()
        if outcome is CANCELLED:
            # The nursery's scope swallowed the cancellation of a client that left.
            log.info("client disconnected; its request to %s was cancelled", endpoint.route)
        return outcome


async def _cancel_on_disconnect(
    receive: Receive, request: trio.CancelScope, watcher: trio.CancelScope
) -> None:
    # The body has been read, so the next message can only be the disconnect.
    with watcher:
        while (await receive())["type"] != "http.disconnect":
            pass
        request.cancel()
