"""The router's signature on each request, and protection against replayed requests.

Vast's router hands every client a signed ``auth_data`` object that the client passes on to the
worker. The worker checks the RSA signature (PKCS#1 v1.5 over SHA-256) against the router's public
key, checks that the request was meant for this worker, and refuses replays. The checks are
synchronous and cheap, so they run on the event loop; only fetching the key does I/O.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import json
import logging
import math

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._payload import Fields, PayloadError, json_type_name

__all__ = [
    "AuthData",
    "AuthError",
    "Authenticator",
    "ReplayGuard",
    "Signed",
    "load_public_key",
    "message_2024",
    "message_2025",
]

logger = logging.getLogger("pyworker.auth")

# An RSA-8192 signature is 1366 base64 characters; anything much longer is not a signature, and
# refusing it early keeps a hostile client from making us decode megabytes.
_MAX_SIGNATURE_CHARS = 1400
_MAX_CACHED_2025 = 64
"""Verified 2025 signatures remembered (one per router key and worker URL in practice)."""


def _string_or_number(fields: Fields, name: str) -> object:
    """A field that must be present and a string or a number, returned unchanged."""
    if name not in fields.data:
        fields.errors[name] = "missing parameter"
        return None
    value = fields.data[name]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        fields.errors[name] = f"must be a string or a number, not {json_type_name(value)}"
    return value


@attrs.frozen(kw_only=True)
class AuthData:
    """The router's signed ``auth_data``, with every value exactly as the client sent it.

    Values are never coerced: the signature covers their JSON form, so ``"256"`` and ``256`` are
    different costs.

    Attributes:
        signature: base64 RSA signature.
        cost: the workload the client announced to the router (string or number).
        endpoint: the endpoint group's name.
        reqnum: the router's request counter; increases with every request it routes.
        url: the public URL of the worker the router chose.
        request_idx: the router's identity of the request (newest generation); older routers
            omit it.
    """

    signature: str
    cost: object
    endpoint: object
    reqnum: int
    url: str
    request_idx: int | None = None

    @property
    def idx(self) -> int:
        """The request's identity for the router: ``request_idx``, else ``reqnum``."""
        return self.reqnum if self.request_idx is None else self.request_idx

    @property
    def cost_value(self) -> float | None:
        """``cost`` as a finite number, when it is one (numbers and numeric strings)."""
        try:
            value = float(self.cost)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) and not isinstance(self.cost, bool) else None

    @classmethod
    def parse(cls, obj: object) -> AuthData:
        """Read ``auth_data`` from a decoded JSON value; unknown extra fields are ignored.

        Args:
            obj: the decoded ``auth_data`` value.

        Returns:
            The fields, unchanged.

        Raises:
            PayloadError: ``obj`` is not an object (the message is under ``""``), or fields are
                missing or of the wrong type (one message per field).
        """
        if not isinstance(obj, dict):
            raise PayloadError({"": f"must be a JSON object, not {json_type_name(obj)}"})
        fields = Fields(obj)
        signature = fields.string("signature")
        cost = _string_or_number(fields, "cost")
        endpoint = _string_or_number(fields, "endpoint")
        reqnum = fields.integer("reqnum")
        url = fields.string("url")
        request_idx = fields.integer("request_idx", default=None)
        fields.check()
        return cls(
            signature=signature,
            cost=cost,
            endpoint=endpoint,
            reqnum=reqnum,
            url=url,
            request_idx=request_idx,
        )


_dumps = json.dumps


def message_2024(auth: AuthData) -> bytes:
    """The message the 2024 router signs: the unsigned fields, in order, as ``json.dumps`` writes.

    Args:
        auth: the received fields.

    Returns:
        ``json.dumps({"cost", "endpoint", "reqnum", "url"}, indent=4)`` as bytes (ASCII-escaped).
    """
    # The fields are scalars (AuthData.parse sees to it), so the indented layout can be put
    # together around the C encoder's output: byte for byte what json.dumps(indent=4) writes,
    # at a fraction of its cost (indent forces the pure-Python encoder).
    return (
        f'{{\n    "cost": {_dumps(auth.cost)},\n    "endpoint": {_dumps(auth.endpoint)},\n'
        f'    "reqnum": {_dumps(auth.reqnum)},\n    "url": {_dumps(auth.url)}\n}}'
    ).encode("ascii")


def message_2025(auth: AuthData) -> bytes:
    """The message the 2025 router signs: ``json.dumps({"url": url}, indent=4)`` as bytes.

    It binds nothing but the worker's URL, so one captured signature serves any request to it.
    """
    return f'{{\n    "url": {_dumps(auth.url)}\n}}'.encode("ascii")


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """Parse a PEM public key and check that it is RSA.

    Raises:
        ValueError: ``pem`` is not a PEM public key, or the key is not RSA.
    """
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:  # cryptography raises either, depending on the damage
        raise ValueError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"the router's key must be RSA, not {type(key).__name__}")
    return key


class Signed(enum.Enum):
    """What a verified signature covers."""

    NOTHING = "nothing: signatures are not checked (unsecured)"
    WORKER = "this worker's URL only (the 2025 message): the same for every request"
    REQUEST = "the request's cost, endpoint, reqnum and URL (the 2024 message)"


class AuthError(Exception):
    """A request's ``auth_data`` was refused.

    Attributes:
        status: the HTTP status to answer with (401 refused, 503 cannot check yet).
        reason: a short human explanation, safe to send to the client.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


@attrs.define(eq=False)
class ReplayGuard:
    """Refuses requests that are too old or that repeat a recently accepted one.

    The highest accepted ``reqnum`` is kept; a ``reqnum`` more than ``window`` below it is refused,
    and so is an exact repeat of a recently accepted ``(cost, endpoint, reqnum, url)``. Both checks
    and :meth:`record` are O(1).

    Args:
        window: how far below the highest ``reqnum`` a request may be (Vast uses 100).
    """

    window: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    _highest: int | None = attrs.field(default=None, init=False)
    _recent: collections.deque[bytes] = attrs.field(init=False)
    _recent_set: set[bytes] = attrs.field(factory=set, init=False)

    @_recent.default
    def _make_recent(self) -> collections.deque[bytes]:
        # Remembering only the last `window` requests leaves a gap: accept reqnum 100, then 0..99
        # (all within the window) and 100 has been forgotten while still inside the window. Every
        # request accepted since one with reqnum r has a reqnum within `window` of r, so (while r is
        # replayable) at most 2 * window distinct ones can have pushed it out; remember that many.
        return collections.deque(maxlen=2 * self.window + 1)

    @staticmethod
    def key(auth: AuthData) -> bytes:
        """The identity of a request: its 2024 message (so ``"256"`` and ``256`` differ)."""
        return message_2024(auth)

    def problem(self, auth: AuthData, key: bytes | None = None) -> str | None:
        """Why ``auth`` is a replay, or None if it is not. Changes nothing.

        Args:
            auth: the request's fields.
            key: ``self.key(auth)`` if the caller already has it.
        """
        if self._highest is not None and auth.reqnum < self._highest - self.window:
            return f"reqnum {auth.reqnum} is too old (more than {self.window} below the latest)"
        if (self.key(auth) if key is None else key) in self._recent_set:
            return "request replayed (this auth_data was already used)"
        return None

    def record(self, auth: AuthData, key: bytes | None = None) -> None:
        """Remember an accepted request."""
        key = self.key(auth) if key is None else key
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])  # the append below evicts it
        self._recent.append(key)
        self._recent_set.add(key)
        if self._highest is None or auth.reqnum > self._highest:
            self._highest = auth.reqnum


@attrs.define(eq=False, kw_only=True)
class Authenticator:
    """Checks each request's ``auth_data``: signature, destination and freshness.

    Args:
        unsecured: accept every request without checking (local testing only; logged loudly).
        accept_2025: also accept signatures over the 2025 message (``{"url": ...}`` only).
        own_url: this worker's public URL; when known, ``auth_data.url`` must match it.
        public_key: the router's key, if already known (else see :meth:`set_public_key`).
        replay: the replay guard.
    """

    unsecured: bool = False
    accept_2025: bool = True
    own_url: str | None = None
    public_key: rsa.RSAPublicKey | None = None
    replay: ReplayGuard = attrs.Factory(ReplayGuard)
    _good_2025: dict[bytes, bytes] = attrs.field(factory=dict, init=False, repr=False)
    public_pem: bytes = attrs.field(default=b"", init=False, repr=False)
    """The PEM of :attr:`public_key` (to tell a changed key from the same one)."""
    bad_signatures: int = attrs.field(default=0, init=False)
    """Signatures that did not verify (forgeries, or a router key rotated since it was
    fetched: the key fetcher watches this)."""

    def __attrs_post_init__(self) -> None:
        if self.unsecured:
            logger.warning(
                "UNSECURED mode: router signatures are NOT checked and any client may use this "
                "worker. Use it for local testing only."
            )

    @property
    def has_key(self) -> bool:
        """Whether signed requests can be checked: the router's key is known (or, unsecured,
        nothing needs checking)."""
        return self.unsecured or self.public_key is not None

    def set_public_key(self, pem: bytes) -> None:
        """Use the router's PEM public key from now on.

        Raises:
            ValueError: ``pem`` is not an RSA public key in PEM.
        """
        self.public_key = load_public_key(pem)
        self.public_pem = pem
        self._good_2025.clear()

    def verify(self, auth: AuthData, *, reused: bool = False) -> Signed:
        """Check ``auth``'s destination and signature, and the replay window where it applies.

        The replay window guards only requests signed over the 2024 message, whose ``reqnum``
        the router signed: a 2025 signature covers only this worker's URL, so its ``reqnum`` is
        whatever the client chose and must never move the window (nor can a replay of it be
        told from a new request: the signature is the same for every request to this worker).
        Nothing is remembered here: call :meth:`remember` once the request is accepted, so that
        a request refused later (a 422, a 429, a 503) does not use up its number.

        RSA-2048 verification costs tens of microseconds, so this runs on the event loop rather
        than in a thread (which would cost more than it saves).

        Args:
            auth: the request's ``auth_data``.
            reused: the client presents the very ``auth_data`` its session was created with
                (every request in a session does): exempt from the replay window.

        Returns:
            What the signature covers (see :class:`Signed`).

        Raises:
            AuthError: 503 when no public key is known yet; 401 for a request meant for another
                worker, a bad signature, a replay or a too old ``reqnum``.
        """
        if self.unsecured:
            return Signed.NOTHING
        key = self.public_key
        if key is None:
            raise AuthError(503, "no public key yet: the router's key has not been fetched")
        if self.own_url is not None and auth.url.rstrip("/") != self.own_url.rstrip("/"):
            raise AuthError(401, "auth_data.url is not this worker's URL")
        signed = self._signed(key, _decode_signature(auth.signature), auth)
        if signed is None:
            self.bad_signatures += 1
            raise AuthError(401, "invalid signature")
        if signed is Signed.REQUEST and not reused:
            problem = self.replay.problem(auth)
            if problem is not None:
                raise AuthError(401, problem)
        return signed

    def remember(self, auth: AuthData, signed: Signed) -> None:
        """Remember an accepted request against replays (only 2024-signed ones are)."""
        if signed is Signed.REQUEST:
            self.replay.record(auth)

    def _signed(self, key: rsa.RSAPublicKey, signature: bytes, auth: AuthData) -> Signed | None:
        # A 2025 signature covers only the URL, so a client reuses it for every request:
        # remember the ones already verified and skip the RSA work on later requests
        # (verification is a pure function of key, message and signature; set_public_key
        # clears the memory). 2024 signatures differ per request, so they are not cached.
        message_25 = message_2025(auth) if self.accept_2025 else None
        known = self._good_2025
        if message_25 is not None and known.get(signature) == message_25:
            return Signed.WORKER
        if _verifies(key, signature, message_2024(auth)):
            return Signed.REQUEST
        if message_25 is None or not _verifies(key, signature, message_25):
            return None
        if len(known) >= _MAX_CACHED_2025:
            known.clear()
        known[signature] = message_25
        return Signed.WORKER


def _decode_signature(text: str) -> bytes:
    if len(text) > _MAX_SIGNATURE_CHARS:
        raise AuthError(401, "signature is too long")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise AuthError(401, "signature is not valid base64") from None


def _verifies(key: rsa.RSAPublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
