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
as it happens (the load tester's live display is one); both, and the refusals, are records of
:mod:`._route_records`.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import trio

from ._route_records import (
    DEFAULT_PATIENCE,
    REPLAY_TIMEOUT,
    Answer,
    CallWatcher,
    Patience,
    Retry,
    RouteError,
    Target,
    WorkerError,
    describe_error,
    is_retryable,
)

__all__ = ["ask_router", "call_endpoint", "find_worker"]

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
