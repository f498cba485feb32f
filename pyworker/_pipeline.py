"""The proxied routes: one request's path from the client's socket to the model server and back.

:meth:`Pipeline.handle` is that path, one call per stage, in this order:

1. read the body, bounded in size and time (413, 408);
2. parse the envelope: JSON, ``auth_data``'s fields, a ``payload`` present (400, 422);
3. find the request's session, if it names one (410 when it has ended);
4. verify the router's signature and the replay window (401; 503 while no key is known);
5. check the lifecycle state (503);
6. parse the payload: the backend's own hook, reached only by signed requests (422);
7. admit: the 429 decision, the request's number remembered, its session extended, its turn
   awaited;
8. send the job to the model server (its own 502/504 when it fails; 503 when the worker stopped
   serving the model while the request waited for its turn);
9. relay the answer as it arrives, until it ends, the client leaves, its session ends, or the
   watchdog ends it: the model server stalled, or the total timeout passed (504, or a cut
   stream);
10. record the outcome (on leaving the admission block, whatever happened), and count it for
    ``/metrics``.

The session routes (``/session/create``, ``/get``, ``/health``, ``/end``) share the first stages
(:mod:`pyworker._session_routes`).

Proxied routes are the hot path, so they bypass Quart's request machinery; everything else
(``/ping``, ``/healthcheck``, ``/status``) is served by a Quart-Trio app behind this one
(``_app.py``). A client that disconnects cancels its request at once: the upstream connection
is closed, which is how model servers learn to stop generating.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import attrs
import trio

from ._admission import Admission, Overloaded
from ._auth import Authenticator, AuthError, Signed
from ._backend import Backend, Endpoint, Job
from ._load import CANCELLED, Outcome
from ._logs import ACCESS
from ._machine import Lifecycle
from ._metrics import CLIENT_LEFT, RequestMetrics
from ._model import ModelServer, observe, send_job
from ._relay import ClientWatch, relay, send_json, watch_client
from ._session_routes import SESSION_ROUTES
from ._sessions import Session, Sessions
from ._stages import ClientGone, Envelope, Limits, Refusal, parse_envelope, parse_payload, read_body
from ._typing import ASGIApp, Message, Receive, Scope, Send
from ._watchdog import Watchdog

log = logging.getLogger("pyworker.proxy")


# -- the pipeline --------------------------------------------------------------------------
@attrs.define(eq=False, kw_only=True)
class Pipeline:
    """The worker's ASGI application: proxied and session routes here, every other one to
    ``fallback``.

    Args:
        backend: the backend whose endpoints are proxied.
        lifecycle: whether requests are admitted now, and why not.
        authenticator: checks the router's signature.
        admission: 429s, turns, and the accounting of every admitted request.
        sessions: the open sessions.
        model: the model server.
        watchdog: follows every request sent to the model server.
        fallback: the ASGI app for every other route and for lifespan.
        limits: body size and time bounds.
        metrics: what ``/metrics`` shows of the requests.
        on_model_failure: told why, when the model server could not be reached or broke off
            (the worker's own 502): it may have died.
    """

    backend: Backend
    lifecycle: Lifecycle
    authenticator: Authenticator
    admission: Admission
    sessions: Sessions
    model: ModelServer
    watchdog: Watchdog
    fallback: ASGIApp
    limits: Limits = attrs.Factory(Limits)
    metrics: RequestMetrics = attrs.Factory(RequestMetrics)
    on_model_failure: Callable[[str], object] = lambda why: None
    _routes: dict[str, Endpoint] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._routes = {e.route: e for e in self.backend.endpoints}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            endpoint = self._routes.get(path)
            if endpoint is not None:
                await self.handle(endpoint, scope, receive, send)
                return
            session_route = SESSION_ROUTES.get(path)
            if session_route is not None:
                await session_route(self, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    async def handle(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one proxied request, from the client's socket to the model server and back."""
        arrived = trio.current_time()
        try:
            body = await read_body(scope, receive, self.limits)
            envelope = parse_envelope(body, unsigned_ok=self.authenticator.unsecured)
            session = self.find_session(envelope)
            signed = self.verify(envelope, session)
            self.check_state()
            job = parse_payload(endpoint, envelope.payload)
        except Refusal as refusal:
            self.count(endpoint.route, refusal.status, arrived)
            await send_json(send, refusal.status, refusal.body, refusal.headers)
            return
        except ClientGone:
            self.count(endpoint.route, CLIENT_LEFT, arrived)
            return
        # From admission on, the client leaving (or its session ending) cancels the rest at
        # once, the wait for a turn included: a request nobody waits for never reaches the
        # model server.
        timed = _FirstByte(send)
        outcome = CANCELLED
        async with watch_client(receive, session) as client:
            try:
                async with self.admission.admit(
                    job.workload,
                    idx=envelope.auth.idx,
                    in_session=session is not None,
                    on_admit=partial(self.accept, envelope, signed, session),
                ) as ticket:
                    outcome = await self.exchange(endpoint, job, timed, client)
                    ticket.end(outcome)
            except Overloaded as exc:
                retry_after = str(exc.retry_after).encode()
                self.count(endpoint.route, 429, arrived, job.workload)
                await send_json(send, 429, {"error": str(exc)}, [(b"retry-after", retry_after)])
                return
        if client.left:
            log.info("request to %s cancelled before its answer was complete", endpoint.route)
        status = outcome.status or CLIENT_LEFT
        self.count(endpoint.route, status, arrived, job.workload, timed=True, first=timed.at)

    def count(
        self,
        route: str,
        status: int,
        arrived: float,
        workload: float = 0.0,
        *,
        timed: bool = False,
        first: float | None = None,
    ) -> None:
        """Stage 10: count the request for ``/metrics`` (its times too when it reached the
        model server), and write its access log line when asked for."""
        self.metrics.answered(route, status)
        now = trio.current_time()
        if timed:
            self.metrics.timed(route, now - arrived, None if first is None else first - arrived)
        if ACCESS.isEnabledFor(logging.INFO):
            ACCESS.info(
                "%s %d workload %g in %.3f s",
                route,
                status,
                workload,
                now - arrived,
                extra={
                    "route": route,
                    "status": status,
                    "workload": workload,
                    "seconds": round(now - arrived, 6),
                },
            )

    def find_session(self, envelope: Envelope) -> Session | None:
        """Stage 3: the open session the request names, if it names one.

        Raises:
            Refusal: 410 when that session does not exist (or no longer does): the client then
                stops using it.
        """
        if envelope.session_id is None:
            return None
        session = self.sessions.get(envelope.session_id)
        if session is None:
            raise Refusal(410, {"error": "invalid session"})
        return session

    def verify(self, envelope: Envelope, session: Session | None = None) -> Signed:
        """Stage 4: the router's signature, the destination and the replay window (from which
        a session's own ``auth_data``, presented again, is exempt).

        Raises:
            Refusal: 401 refused (counted and recorded as rejected, outside sessions); 503 (with
                the state) while the router's key is unknown.
        """
        auth = envelope.auth
        reused = session is not None and envelope.raw_auth == session.auth
        try:
            return self.authenticator.verify(auth, reused=reused)
        except AuthError as exc:
            if exc.status == 503:
                # No key yet, so nothing can be checked; the lifecycle cannot be ready either
                # (ready needs the key), and its refusal says why.
                raise self._unavailable() from None
            if session is None:
                self.admission.refused(auth.cost_value or 0.0, auth.idx)
            raise Refusal(exc.status, {"error": exc.reason}) from None

    def check_state(self) -> None:
        """Stage 5: whether the lifecycle admits requests now.

        Raises:
            Refusal: 503 with the reason and the state, and a ``Retry-After``.
        """
        if not self.lifecycle.admits_requests:
            raise self._unavailable()

    def _unavailable(self) -> Refusal:
        lifecycle = self.lifecycle
        body = {"error": lifecycle.refusal_reason(), "state": lifecycle.current.value}
        return Refusal(503, body, [(b"retry-after", b"5")])

    def accept(self, envelope: Envelope, signed: Signed, session: Session | None) -> None:
        """Stage 7's moment of admission: the request's number is used up, and its session
        (if any) lives ``lifetime`` longer."""
        self.authenticator.remember(envelope.auth, signed)
        if session is not None:
            session.extend()

    async def exchange(
        self, endpoint: Endpoint, job: Job, send: Send, client: ClientWatch
    ) -> Outcome:
        """Stages 8 and 9: send the job to the model server, relay its answer.

        A request whose turn comes when the worker no longer serves the model (stalled,
        errored, reloading) is answered 503 without reaching it.
        """
        if not self.lifecycle.info.serves_admitted:
            refusal = self._unavailable()
            await send_json(send, refusal.status, refusal.body, refusal.headers)
            return Outcome.failed(refusal.status, self.lifecycle.refusal_reason())
        status = 0
        with self.watchdog.track(job.workload) as work, work.scope:
            answer = self.watchdog.answer(work, await send_job(endpoint, job, self.model))
            try:
                if answer.error and answer.status == 502:
                    self.on_model_failure(answer.error)
                observer = observe(endpoint, job, answer)
                status = answer.status
                work.relaying = True
                return await relay(answer, send, observer=observer, before_last=client.stop)
            finally:
                await answer.aclose()
        # Only the watchdog ends the block early: the model server stalled, or the request
        # took longer than the total timeout.
        error = work.ended
        if not work.relaying:
            await send_json(send, 504, {"error": error})
            return Outcome.failed(504, error)
        # The answer had begun: the final body message is withheld, so the server closes the
        # connection and the client sees a broken response, not a truncated success.
        log.warning("%s, mid-answer: the stream is cut", error)
        return Outcome.failed(status, f"{error} mid-response")


@attrs.define(eq=False)
class _FirstByte:
    """An ASGI ``send`` that notes when the answer's first body message goes out."""

    _send: Send
    at: float | None = None

    async def __call__(self, message: Message) -> None:
        if self.at is None and message["type"] == "http.response.body":
            self.at = trio.current_time()
        await self._send(message)
