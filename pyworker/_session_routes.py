"""The session routes (vast-2026.md §7): ``POST /session/create``, ``/get``, ``/health``,
``/end``.

``/session/create`` is a routed request like any other and goes through the same first stages
as a proxied request (body, envelope, signature, state), then its own: the session's
parameters, the session limit. The others name a session and prove they may touch it with the
``auth_data`` it was created with (``session_auth``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from ._payload import Fields
from ._relay import send_json
from ._sessions import Session, SessionsFull
from ._stages import ClientGone, Envelope, Refusal, parse_envelope, read_body
from ._typing import Receive, Scope, Send

if TYPE_CHECKING:
    from ._pipeline import Pipeline

DEFAULT_LIFETIME = 60.0
"""Seconds a session lives without requests, when the client does not say."""
MAX_LIFETIME = 7 * 24 * 3600.0
"""The longest lifetime accepted: a bound, so that no session can pin a worker forever."""


@attrs.frozen(kw_only=True)
class SessionParams:
    """What ``/session/create`` asks for."""

    cost: float
    lifetime: float
    on_close_route: str | None
    on_close_payload: object


def parse_session_params(envelope: Envelope) -> SessionParams:
    """The session's parameters: its ``payload`` and the ``cost`` the router signed.

    Raises:
        Refusal: 422 naming each bad field (a ``cost`` that is not a number included).
    """
    errors: dict[str, Any] = {}
    cost = envelope.auth.cost_value
    if cost is None or cost < 0:
        errors["auth_data"] = {"cost": "must be a non-negative number for a session"}
    payload = envelope.payload if envelope.payload is not None else {}
    fields = Fields(payload)
    lifetime = fields.number("lifetime", default=DEFAULT_LIFETIME, maximum=MAX_LIFETIME)
    if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime <= 0:
        fields.errors["lifetime"] = "must be positive"
    route = fields.string("on_close_route", default=None, max_length=2048)
    on_close_payload = fields.data.get("on_close_payload")
    if fields.errors:
        errors["payload"] = fields.errors[""] if set(fields.errors) == {""} else fields.errors
    if errors or cost is None:
        raise Refusal(422, errors)
    return SessionParams(
        cost=cost,
        lifetime=float(lifetime),
        on_close_route=route or None,
        on_close_payload=on_close_payload,
    )


@attrs.frozen
class Answer:
    """A session route's answer: its status and JSON body."""

    status: int
    body: object


Decide = Callable[["Pipeline", Scope, Receive], Awaitable[Answer]]
Route = Callable[["Pipeline", Scope, Receive, Send], Awaitable[None]]


def answering(decide: Decide) -> Route:
    """The route that sends what ``decide`` answers, or its :class:`Refusal`, as JSON (and
    nothing to a client that left)."""

    @functools.wraps(decide)
    async def route(pipeline: Pipeline, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await decide(pipeline, scope, receive)
        except Refusal as refusal:
            await send_json(send, refusal.status, refusal.body, refusal.headers)
        except ClientGone:
            pass
        else:
            await send_json(send, answer.status, answer.body)

    return route


@answering
async def create(pipeline: Pipeline, scope: Scope, receive: Receive) -> Answer:
    """``POST /session/create``: 201 ``{"session_id", "expiration"}``."""
    body = await read_body(scope, receive, pipeline.limits)
    envelope = parse_envelope(body, unsigned_ok=pipeline.authenticator.unsecured)
    signed = pipeline.verify(envelope)
    pipeline.check_state()
    params = parse_session_params(envelope)
    try:
        session = pipeline.sessions.create(
            auth=envelope.raw_auth,
            idx=envelope.auth.idx,
            cost=params.cost,
            lifetime=params.lifetime,
            on_close_route=params.on_close_route,
            on_close_payload=params.on_close_payload,
        )
    except SessionsFull as exc:
        raise Refusal(429, {"error": str(exc)}) from None
    pipeline.authenticator.remember(envelope.auth, signed)
    return Answer(201, {"session_id": session.id, "expiration": session.expiration})


async def _named_session(
    pipeline: Pipeline, scope: Scope, receive: Receive
) -> tuple[str, Session | None, object]:
    """Read ``{"session_id", "session_auth"}``: (the id, its open session or None, the auth).

    Raises:
        Refusal: 422 for a body that is not a JSON object, or without a ``session_id``.
        ClientGone: the client left while sending it.
    """
    body = await read_body(scope, receive, pipeline.limits)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Refusal(422, {"error": "invalid JSON"}) from None
    if not isinstance(data, dict):
        raise Refusal(422, {"error": "invalid JSON"})
    session_id = data.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise Refusal(422, {"error": "missing session_id"})
    return session_id, pipeline.sessions.get(session_id), data.get("session_auth")


def _authorise(session: Session, session_auth: object) -> None:
    if session_auth is None or session_auth != session.auth:
        raise Refusal(401, {"error": "session_auth is not valid"})


@answering
async def get(pipeline: Pipeline, scope: Scope, receive: Receive) -> Answer:
    """``POST /session/get``: the session's record."""
    _, session, session_auth = await _named_session(pipeline, scope, receive)
    if session is None:
        raise Refusal(400, {"error": "session does not exist"})
    _authorise(session, session_auth)
    return Answer(200, session.describe())


@answering
async def health(pipeline: Pipeline, scope: Scope, receive: Receive) -> Answer:
    """``POST /session/health``: ``{"ok": true}``, or ``false`` for a session that is gone."""
    _, session, session_auth = await _named_session(pipeline, scope, receive)
    if session is not None:
        _authorise(session, session_auth)
    return Answer(200, {"ok": session is not None})


@answering
async def end(pipeline: Pipeline, scope: Scope, receive: Receive) -> Answer:
    """``POST /session/end``: end it now (its requests aborted, its ``on_close`` called)."""
    session_id, session, session_auth = await _named_session(pipeline, scope, receive)
    if session is None:
        raise Refusal(400, {"error": f"session with id {session_id} not found"})
    _authorise(session, session_auth)
    if not await pipeline.sessions.end(session, "ended by the client"):
        return Answer(410, {"error": "session already closed"})
    return Answer(200, {"ended": True, "removed_session": session_id})


SESSION_ROUTES: dict[str, Route] = {
    "/session/create": create,
    "/session/get": get,
    "/session/health": health,
    "/session/end": end,
}
"""The session routes, by path (always served, whatever the backend)."""


@attrs.define(eq=False)
class InternalApp:
    """The internal plain-HTTP listener's ASGI app (vast-2026.md §11): ``POST /session/end``
    for Vast's own webhooks, and nothing else.

    Args:
        pipeline: whose sessions it ends.
    """

    pipeline: Pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/session/end":
            await end(self.pipeline, scope, receive, send)
        else:
            await send_json(send, 404, {"error": "no such route", "routes": ["/session/end"]})
