"""The pipeline's first stages, shared by the proxied routes and the session routes: read the
bounded body, parse the envelope, parse a payload. Each is a plain function that returns a value
or raises :class:`Refusal` (an answer other than a relay)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ._auth import AuthData
from ._backend import Endpoint, Job
from ._payload import PayloadError, json_type_name
from ._typing import Receive, Scope

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
    raw_auth: dict[str, Any]
    """``auth_data`` as received (a session keeps it; its requests present it again)."""
    payload: object
    session_id: object = None
    """The session the request belongs to (None outside sessions)."""


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


UNSIGNED = AuthData(signature="", cost=None, endpoint=None, reqnum=0, url="")
"""The ``auth_data`` of a request sent without one to an unsecured worker."""


def parse_envelope(body: bytes, *, unsigned_ok: bool = False) -> Envelope:
    """Stage 2: ``{"auth_data": {...}, "session_id": null, "payload": ...}``; other top-level
    keys are ignored, and ``session_id`` may be absent (older clients). With ``unsigned_ok``
    (an unsecured worker, for local testing), ``auth_data`` may be absent too, so that
    ``curl -d '{"payload": {...}}'`` works.

    Raises:
        Refusal: 400 when the body is not JSON; 422 when it is not an object, or naming every
            missing or malformed part (``auth_data``'s fields nested under it).
    """
    try:
        envelope = json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, {"error": f"request body is not valid JSON: {exc}"}) from None
    if not isinstance(envelope, dict):
        raise Refusal(422, {"error": "request body must be a JSON object"})
    errors: dict[str, Any] = {}
    auth: AuthData | None = None
    if "auth_data" not in envelope:
        if unsigned_ok:
            auth = UNSIGNED
        else:
            errors["auth_data"] = "missing parameter"
    else:
        try:
            auth = AuthData.parse(envelope["auth_data"])
        except PayloadError as exc:
            errors["auth_data"] = _flatten(exc.errors)
    if "payload" not in envelope:
        errors["payload"] = "missing parameter"
    session_id = envelope.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        errors["session_id"] = f"must be a string or null, not {json_type_name(session_id)}"
    if errors or auth is None:
        raise Refusal(422, errors)
    return Envelope(
        auth=auth,
        raw_auth=envelope.get("auth_data", {}),
        payload=envelope["payload"],
        session_id=session_id,
    )


def _not_json(constant: str) -> object:
    # Python's json module reads NaN and Infinity, which JSON has not: a payload carrying one
    # would be passed on to the model server as invalid JSON, or poison the workload figures.
    raise ValueError(f"{constant} is not a JSON value")


def parse_payload(endpoint: Endpoint, payload: object) -> Job:
    """Stage 5: the backend's hook validates and weighs the payload.

    A backend that fails otherwise (its arithmetic overflowing on an absurd figure, an absurd
    workload the :class:`~pyworker.Job` refuses, a bug) refuses the payload too: the request,
    not the worker, is what cannot be served, and no ticket exists yet to be left behind.

    Raises:
        Refusal: 422 naming each bad field, under ``payload``.
    """
    try:
        return endpoint.parse(payload)
    except PayloadError as exc:
        raise Refusal(422, {"payload": _flatten(exc.errors)}) from None
    except Exception as exc:
        log.warning("%s: the backend could not weigh a payload", endpoint.route, exc_info=True)
        reason = str(exc)[:200] or type(exc).__name__
        raise Refusal(422, {"payload": f"cannot be served: {reason}"}) from None


def _flatten(errors: dict[str, Any]) -> Any:
    """``{"": msg}`` (the whole value is wrong) becomes ``msg``."""
    if set(errors) == {""}:
        return errors[""]
    return errors
