"""The model server as the worker reaches it, and the one way a job is sent to it.

:func:`send_job` is used by the proxy and the benchmark alike: an endpoint's own ``run`` for
model servers that need several calls per request, otherwise one POST over the pooled
connections. It never raises for the model server's failures: an unreachable, silent or broken
model server, or a ``run`` that fails, comes back as a 502/504 :class:`Answer`, so every caller
handles one kind of value. :func:`observe` and :func:`actual_workload` say, for both alike, what
the answer reports it cost: the proxy counts that as the work done, the benchmark measures
capacity with it.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

import attrs
import httpx

from ._backend import Endpoint, Job, Observer, RunContext
from ._typing import Headers
from ._upstream import UpstreamError, UpstreamPool, UpstreamTimeout

log = logging.getLogger("pyworker.model")


class Answer(Protocol):
    """A model server's answer, read chunk by chunk (an :class:`~pyworker._upstream.
    UpstreamResponse` is one)."""

    @property
    def status(self) -> int:
        """The HTTP status."""

    @property
    def headers(self) -> Headers:
        """Response headers, names lower-cased."""

    @property
    def complete(self) -> bool:
        """Whether the body has been read to its end."""

    @property
    def error(self) -> str:
        """Why the worker made this answer itself ("" when the model server answered)."""

    @property
    def actual(self) -> float | None:
        """The actual workload the answer carries itself (a backend's ``run`` may say, in
        :attr:`~pyworker.Reply.actual`); None for the model server's own answers, which an
        :class:`~pyworker.Observer` reads instead."""

    async def receive(self) -> bytes:
        """The next chunk of the body as it arrives; ``b""`` at the end.

        Raises:
            UpstreamError: the model server broke off mid-body.
        """

    async def read(self, limit: int | None = None) -> bytes:
        """The whole remaining body."""

    async def aclose(self) -> None:
        """Release the connection (an unfinished answer's connection is closed)."""


@attrs.define(eq=False)
class WholeAnswer:
    """An answer that is already complete: a backend's :class:`~pyworker.Reply`, or the
    worker's own 502/504 when the model server failed.

    Attributes:
        error: why the worker made this answer itself ("" for a backend's reply).
        actual: the reply's actual workload, when its ``run`` could tell.
    """

    status: int
    headers: Headers
    body: bytes
    error: str = ""
    actual: float | None = None
    _sent: bool = False

    @classmethod
    def failure(cls, status: int, error: str) -> WholeAnswer:
        """The worker's JSON error answer."""
        body = json.dumps({"error": error}).encode()
        return cls(
            status=status, headers=[(b"content-type", b"application/json")], body=body, error=error
        )

    @property
    def complete(self) -> bool:
        return self._sent

    async def receive(self) -> bytes:
        if self._sent:
            return b""
        self._sent = True
        return self.body

    async def read(self, limit: int | None = None) -> bytes:
        return await self.receive()

    async def aclose(self) -> None:
        self._sent = True


@attrs.define(eq=False, kw_only=True)
class ModelServer:
    """How the worker reaches its model server.

    Args:
        url: the model server's base URL.
        upstream: pooled connections for proxied requests, health checks and the benchmark.
        http: a general client for backends' own ``run`` procedures.
    """

    url: str
    upstream: UpstreamPool
    http: httpx.AsyncClient

    @property
    def run_context(self) -> RunContext:
        """What a backend's ``run`` gets."""
        return RunContext(model_server_url=self.url, http=self.http)


async def send_job(endpoint: Endpoint, job: Job, model: ModelServer) -> Answer:
    """Send ``job`` to the model server: the endpoint's ``run``, or a POST relayed as it comes.

    Returns:
        The answer: the model server's (any status), or the worker's own 504 (no answer in
        time) or 502 (unreachable, broken, or the backend's ``run`` failed).
    """
    if endpoint.run is not None:
        try:
            reply = await endpoint.run(job, model.run_context)
        except Exception as exc:
            # A backend procedure failing (model server gone mid-way, malformed answer) is the
            # model server's failure, not a crash of the worker.
            log.warning("%s: %s", endpoint.route, exc, exc_info=True)
            return WholeAnswer.failure(502, f"model server: {exc}")
        content_type = reply.content_type.encode()
        return WholeAnswer(
            status=reply.status,
            headers=[(b"content-type", content_type)],
            body=reply.body,
            actual=reply.actual,
        )
    try:
        return await model.upstream.request(b"POST", job.upstream_path.encode(), job.body)
    except UpstreamTimeout as exc:
        return WholeAnswer.failure(504, str(exc))
    except UpstreamError as exc:
        return WholeAnswer.failure(502, str(exc))


def observe(endpoint: Endpoint, job: Job, answer: Answer) -> Observer | None:
    """A fresh observer of ``answer``'s actual workload, already shown its headers.

    The job's own ``observe`` comes first, then the endpoint's. None when there is nothing to
    observe: neither has one, or the answer failed (a request the model server refused or
    could not serve did no work, whatever its body says).
    """
    make = job.observe or endpoint.observe
    if make is None or answer.status >= 400:
        return None
    observer = make()
    # Optional (see Observer): servers that count in their headers, as TGI does.
    head = getattr(observer, "head", None)
    if head is not None:
        head(answer.headers)
    return observer


def actual_workload(answer: Answer, observer: Observer | None) -> float | None:
    """The actual workload of a complete ``answer``: its own (a ``run``'s reply says), else
    what ``observer`` saw; None when neither knows (the estimate stands)."""
    actual = answer.actual
    if actual is not None:
        return actual
    return None if observer is None else observer.actual


def reported_error(observer: Observer | None) -> str | None:
    """The error ``observer`` saw reported inside a successful answer (its optional
    ``error``: an error event in a stream), else None."""
    error = getattr(observer, "error", None)
    return error if isinstance(error, str) and error else None
