"""Client-side routing, as Vast's newest client (vastai 1.9.1) does it.

A client request meets three parties:

1. the **console**, once: the account's key lists its endpoint groups, and the group's entry
   gives the *endpoint* key that routing needs (:mod:`._console`);
2. the **router**, for each request: ``POST {router}/route/`` with the group's name, its key and
   the request's estimated cost. The router gives the request an index (``request_idx``) and,
   once a worker can take it, answers with the worker's ``url`` and the signed ``auth_data``;
   an answer without ``url`` means "wait", and the client polls again with the same index
   (:func:`find_worker`);
3. the **worker**: ``POST {url}{path}`` with ``{"auth_data", "session_id", "payload"}``. A
   worker that answers 408, 429 or 5xx, or that cannot be reached, sends the client back to the
   router, with the same index, for another worker (:func:`call_endpoint`).

Every re-route is counted in the :class:`Answer`, and a :class:`CallWatcher` sees each phase
as it happens (the load tester's live display is one).
"""

from __future__ import annotations

import json
import random
from typing import Any

import attrs
import httpx
import trio

from .._version import __version__

__all__ = [
    "ROUTER_URL",
    "Answer",
    "CallWatcher",
    "Patience",
    "Retry",
    "RouteError",
    "Target",
    "WorkerError",
    "ask_router",
    "call_endpoint",
    "describe_error",
    "find_worker",
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


_QUIET = CallWatcher()


def _streamed(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "").lower()
    if content_type.startswith("text/event-stream") or "ndjson" in content_type:
        return True
    if "jsonl" in content_type or "stream" in content_type:
        return True
    chunked = "chunked" in response.headers.get("transfer-encoding", "").lower()
    return chunked and "json" not in content_type


def _index(answer: dict[str, Any], fallback: int) -> int:
    value = answer.get("request_idx")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return fallback


async def ask_router(
    http: httpx.AsyncClient,
    target: Target,
    *,
    cost: float,
    request_idx: int = 0,
    route_timeout: float = 10.0,
) -> dict[str, Any]:
    """One ``POST {router}/route/``, as Vast's client sends it.

    Args:
        http: the client to use.
        target: the router, the group and its key.
        cost: the request's estimated workload.
        request_idx: 0 for a new request, else the index the router gave it.
        route_timeout: seconds for the call.

    Returns:
        The router's answer: with ``url``, the ``auth_data`` to send the worker (verbatim);
        without, "wait" (its ``request_idx`` is the request's index).

    Raises:
        RouteError: the router answered non-2xx, not a JSON object, or could not be reached.
    """
    body: dict[str, Any] = {"endpoint": target.endpoint}
    if target.api_key is not None:
        body["api_key"] = target.api_key
    body.update(cost=cost, request_idx=request_idx, replay_timeout=REPLAY_TIMEOUT)
    headers, params = target.key_headers()
    try:
        response = await http.post(
            f"{target.router.rstrip('/')}/route/",
            json=body,
            headers=headers,
            params=params,
            timeout=route_timeout,
        )
    except httpx.RequestError as exc:
        raise RouteError(0, describe_error(exc)) from exc
    if not response.is_success:
        raise RouteError(response.status_code, response.text[:500])
    try:
        answer = response.json()
    except ValueError:
        raise RouteError(response.status_code, f"not JSON: {response.text[:200]}") from None
    if not isinstance(answer, dict):
        raise RouteError(response.status_code, f"not a JSON object: {response.text[:200]}")
    url = answer.get("url", "")
    if "url" in answer and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        raise RouteError(response.status_code, f"not a worker URL: {url!r}")
    return answer


async def find_worker(
    http: httpx.AsyncClient,
    target: Target,
    *,
    cost: float,
    request_idx: int = 0,
    patience: Patience = DEFAULT_PATIENCE,
    watcher: CallWatcher = _QUIET,
) -> dict[str, Any]:
    """Ask the router for a worker until it names one, polling while it says "wait".

    Unbounded in time, as Vast's client is: bound it with a cancel scope.

    Returns:
        The answer that names a worker (see :func:`ask_router`).

    Raises:
        RouteError: a call failed (see :func:`ask_router`).
    """
    polls = 0
    while True:
        watcher.routing(request_idx)
        answer = await ask_router(
            http,
            target,
            cost=cost,
            request_idx=request_idx,
            route_timeout=patience.route_timeout,
        )
        request_idx = _index(answer, request_idx)
        if "url" in answer:
            return answer
        watcher.waiting(request_idx)
        await trio.sleep(patience.poll_pause(polls))
        polls += 1


class _NoAnswer(Exception):
    """The worker gave no answer, or a retryable one that broke off (the cause is chained);
    the call re-routes."""

    def __init__(self, status: int = 0) -> None:
        super().__init__(status)
        self.status = status


async def _attempt(
    http: httpx.AsyncClient,
    target: Target,
    url: str,
    path: str,
    envelope: dict[str, Any],
    watcher: CallWatcher,
) -> Answer:
    """One request to one worker; raises :class:`_NoAnswer` or :class:`WorkerError`."""
    headers, params = target.key_headers()
    full_url = f"{url.rstrip('/')}/{path.lstrip('/')}"
    try:
        request = http.build_request(
            "POST", full_url, json=envelope, headers=headers, params=params
        )
        response = await http.send(request, stream=True)
    except httpx.RequestError as exc:
        raise _NoAnswer from exc
    try:
        streamed = _streamed(response)
        watcher.answered(response.status_code, streamed)
        chunks = []
        try:
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                if response.is_success:
                    watcher.chunk(chunk)
        except httpx.RequestError as exc:
            if is_retryable(response.status_code):
                # A refusal cut short is still a refusal.
                raise _NoAnswer(response.status_code) from exc
            raise WorkerError(url, exc, status=response.status_code) from exc
        return Answer(
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            streamed=streamed,
            chunks=tuple(chunks),
            url=url,
        )
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def call_endpoint(
    http: httpx.AsyncClient,
    target: Target,
    path: str,
    payload: object,
    *,
    cost: float,
    patience: Patience = DEFAULT_PATIENCE,
    watcher: CallWatcher = _QUIET,
) -> Answer:
    """Route one request and send it to the worker, re-routing as Vast's client does.

    A worker that answers 408, 429 or 5xx sends the request back to the router after a pause
    (:meth:`Patience.retry_pause`), one that cannot be reached at once, each time with the
    request's index, until ``patience.max_attempts`` workers have been tried. A 2xx answer
    that breaks off is not retried (the work was done, and a stream's start was seen).

    Unbounded in time while the router says "wait", as Vast's client is: bound it with a
    cancel scope. The worker's answer is read with ``http``'s timeouts.

    Args:
        http: the client to use.
        target: the router, the group and its key.
        path: the worker's route, e.g. ``"/generate"``.
        payload: the backend's payload (any JSON value).
        cost: the estimated workload told to the router.
        patience: pauses and bounds.
        watcher: sees each phase.

    Returns:
        The last worker's answer: 2xx, another status that does not re-route, or a retryable
        one once ``max_attempts`` workers were tried.

    Raises:
        RouteError: the router did not route (refused, unreachable, or not a route).
        WorkerError: the last worker tried could not be reached, or its answer broke off.
    """
    retries: list[Retry] = []
    request_idx = 0
    while True:
        auth = await find_worker(
            http, target, cost=cost, request_idx=request_idx, patience=patience, watcher=watcher
        )
        request_idx = _index(auth, request_idx)
        url: str = auth["url"]
        watcher.routed(url, request_idx)
        envelope = {"auth_data": auth, "session_id": None, "payload": payload}
        last_try = len(retries) + 1 >= patience.max_attempts
        try:
            answer = await _attempt(http, target, url, path, envelope, watcher)
        except _NoAnswer as failure:
            cause = failure.__cause__ or failure
            if last_try:
                raise WorkerError(url, cause, retries=tuple(retries)) from cause
            retry = Retry(url=url, status=failure.status, error=describe_error(cause))
            retries.append(retry)
            watcher.retrying(retry)
            continue
        except WorkerError as failure:
            failure.retries = tuple(retries)
            raise
        if last_try or not is_retryable(answer.status):
            return attrs.evolve(answer, request_idx=request_idx, retries=tuple(retries))
        retry = Retry(url=url, status=answer.status)
        retries.append(retry)
        watcher.retrying(retry)
        await trio.sleep(patience.retry_pause(len(retries)))
