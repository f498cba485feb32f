"""What client-side routing deals in: the router's and the worker's refusals, the pauses
between attempts, a worker's answer and the watcher that sees a call's progress.

:mod:`._routing` makes the calls; the console's key lookup (:mod:`._console`) and the load
tester share these records.
"""

from __future__ import annotations

import json
import random
from typing import Any

import attrs

from .._version import __version__

__all__ = [
    "DEFAULT_PATIENCE",
    "REPLAY_TIMEOUT",
    "ROUTER_URL",
    "USER_AGENT",
    "Answer",
    "CallWatcher",
    "Patience",
    "Retry",
    "RouteError",
    "Target",
    "WorkerError",
    "describe_error",
    "is_retryable",
]

ROUTER_URL = "https://run.vast.ai"
"""Vast's router (and autoscaler)."""
REPLAY_TIMEOUT = 60.0
"""Sent with each route, as Vast's client sends it."""
USER_AGENT = f"pyworker/{__version__}"


def is_retryable(status: int) -> bool:
    """Whether a worker's answer sends the client back to the router: 408, 429 and 5xx, as
    Vast's client decides (a worker that is loading, full, draining or failing)."""
    return status in (408, 429) or 500 <= status <= 599


def describe_error(exc: BaseException) -> str:
    """A transport failure in one line, e.g. ``ConnectError: [Errno 111] Connection refused``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class RouteError(Exception):
    """The router refused to route, answered something that is not a route, or could not be
    reached.

    Attributes:
        status: the router's HTTP status; 0 when it gave none (unreachable, timed out).
        body: the router's answer as text, or the failure.
    """

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body

    def __str__(self) -> str:
        if self.status == 0:
            return f"cannot reach the router: {self.body}"
        return f"router answered {self.status}: {self.body}"


@attrs.frozen(kw_only=True)
class Retry:
    """One attempt at a worker that sent the client back to the router.

    Attributes:
        url: the worker.
        status: its answer's status; 0 when there was no answer (connection refused or reset,
            timed out).
        error: for status 0, the failure (:func:`describe_error`); else "".
    """

    url: str
    status: int
    error: str = ""


class WorkerError(Exception):
    """The last worker tried could not be reached, or its answer broke off.

    Attributes:
        url: that worker.
        cause: the transport failure.
        status: the status of the answer that broke off; 0 when there was no answer.
        retries: the attempts before it, which re-routed.
    """

    def __init__(
        self, url: str, cause: BaseException, *, status: int = 0, retries: tuple[Retry, ...] = ()
    ) -> None:
        super().__init__(url, cause)
        self.url = url
        self.cause = cause
        self.status = status
        self.retries = retries

    def __str__(self) -> str:
        during = f" (its {self.status} answer broke off)" if self.status else ""
        return f"worker {self.url}: {describe_error(self.cause)}{during}"


@attrs.frozen(kw_only=True)
class Target:
    """Where requests are routed, and as whom.

    Attributes:
        endpoint: the endpoint group's name.
        router: the router's base URL.
        api_key: the endpoint group's own key (from :func:`endpoint_key`); None sends none,
            which only a local stand-in accepts.
    """

    endpoint: str
    router: str = ROUTER_URL
    api_key: str | None = None

    def key_headers(self) -> tuple[dict[str, str], dict[str, str]]:
        """The headers and query parameters that carry the key, as Vast's client sends them to
        the router and to workers alike."""
        headers = {"User-Agent": USER_AGENT}
        if self.api_key is None:
            return headers, {}
        headers["Authorization"] = f"Bearer {self.api_key}"
        return headers, {"api_key": self.api_key}


@attrs.frozen(kw_only=True)
class Patience:
    """How long the client waits, and how often it tries.

    The pauses are Vast's client's: the first poll after 1 s, the next ones after a random
    0.1 s to ``2**polls + U(0, 1)`` s, and before a re-route after a retryable status
    ``2**attempts + U(0, 1)`` s; all capped at ``max_poll_interval``. A worker that cannot be
    reached is left at once.

    Attributes:
        max_poll_interval: the longest pause between polls or before a re-route (seconds).
        first_poll: the pause before the first poll (capped by ``max_poll_interval`` too).
        route_timeout: seconds for one ``/route/`` call.
        max_attempts: workers tried at most for one request (Vast's client has no bound; a
            call bounded by time alone could re-route for ever against a failing group).
    """

    max_poll_interval: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    first_poll: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    route_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))

    def poll_pause(self, polls: int) -> float:
        """Seconds to wait before the next poll, ``polls`` polls having been sent."""
        if polls == 0:
            return min(self.first_poll, self.max_poll_interval)
        high = min(2.0 ** min(polls, 20) + random.uniform(0, 1), self.max_poll_interval)
        return random.uniform(min(0.1, high), high)

    def retry_pause(self, attempts: int) -> float:
        """Seconds to wait before re-routing after a retryable status, ``attempts`` workers
        having been tried."""
        return min(2.0 ** min(attempts, 20) + random.uniform(0, 1), self.max_poll_interval)


DEFAULT_PATIENCE = Patience()
"""Vast's client's pauses, and at most 5 workers per request."""


@attrs.frozen(kw_only=True)
class Answer:
    """A worker's answer.

    Attributes:
        status: the HTTP status.
        content_type: the ``content-type`` header ("" if none).
        streamed: whether it was a stream (``text/event-stream``, JSON lines, or chunked with
            another type than JSON).
        chunks: the body as it arrived.
        url: the worker that answered.
        request_idx: the router's index for the request (0 if it gave none).
        retries: the attempts before this one, which re-routed.
    """

    status: int
    content_type: str
    streamed: bool
    chunks: tuple[bytes, ...]
    url: str = ""
    request_idx: int = 0
    retries: tuple[Retry, ...] = ()

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


class CallWatcher:
    """Sees one call's progress as it happens; every method here does nothing.

    Subclass it and override what you need. The methods are called from the calling task, so
    keep them quick and never let them raise.
    """

    def routing(self, request_idx: int) -> None:
        """A ``/route/`` call is about to go out: the first (``request_idx`` 0), a poll, or a
        re-route."""

    def waiting(self, request_idx: int) -> None:
        """The router answered "wait" (no ``url``): a poll follows after a pause."""

    def routed(self, url: str, request_idx: int) -> None:
        """The router chose worker ``url``; the request goes to it now."""

    def answered(self, status: int, streamed: bool) -> None:
        """The worker's answer head arrived."""

    def chunk(self, data: bytes) -> None:
        """A piece of a 2xx answer's body arrived."""

    def retrying(self, retry: Retry) -> None:
        """An attempt failed in a way that re-routes (before the pause, if any)."""
