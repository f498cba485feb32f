"""Sessions: a client pinned to this worker for a series of requests (vast-2026.md §7).

A session holds one unit of load (its ``cost``) from creation until it ends: on request
(``/session/end``), on expiry (its ``expiration``, pushed ``lifetime`` further by each request
accepted in it), or when the worker stops serving (the model server failed or restarted, or the
worker drains). Ending a session aborts its requests in flight (their upstream work is
cancelled), counts it as work done, records it for the router, and calls its ``on_close`` hook.

:class:`Sessions` is the registry: its bookkeeping is synchronous; the I/O (``on_close`` posts)
is awaited by whoever ends a session, or by the service :meth:`Sessions.run`, which ends
sessions as they expire and, when the lifecycle table stops it (leaving ``ready`` for anything
but draining), ends them all.
"""

from __future__ import annotations

import logging
import math
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import trio

from ._load import LoadTracker, Outcome, OutcomeKind, Ticket, TicketKind
from ._records import Record, RecordStatus, RequestLog

log = logging.getLogger("pyworker.sessions")

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 13
ON_CLOSE_TIMEOUT = 10.0
"""Seconds an ``on_close`` call may take (failures are only logged)."""


class SessionsFull(Exception):
    """The session limit is reached (answered 429; the client goes to another worker)."""


@attrs.define(eq=False, kw_only=True)
class Session:
    """One open session."""

    id: str
    auth: dict[str, Any]
    """The ``auth_data`` it was created with, as received: requests in it present it again."""
    lifetime: float
    expiration: float
    """Unix time at which it ends unless a request extends it."""
    created_at: float
    on_close_route: str | None
    on_close_payload: object
    ticket: Ticket
    _requests: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    closed: bool = attrs.field(default=False, init=False)

    def describe(self) -> dict[str, Any]:
        """``/session/get``'s answer."""
        return {
            "session_id": self.id,
            "auth_data": self.auth,
            "lifetime": self.lifetime,
            "expiration": self.expiration,
            "created_at": self.created_at,
            "on_close_route": self.on_close_route,
            "on_close_payload": self.on_close_payload,
        }

    def extend(self) -> None:
        """An accepted request pushes the end ``lifetime`` further (cumulatively)."""
        self.expiration += self.lifetime

    def abort_requests(self) -> None:
        """Cancel the requests in flight in this session (their upstream work stops)."""
        for scope in list(self._requests):
            scope.cancel()

    def attach(self, scope: trio.CancelScope) -> Callable[[], None]:
        """Abort ``scope`` (a request in this session) when the session ends.

        Returns:
            A function that detaches it again (call it when the request ends).
        """
        if self.closed:
            scope.cancel()
        self._requests.add(scope)
        return lambda: self._requests.discard(scope)

    def on_close_body(self) -> dict[str, Any]:
        """What ``on_close`` posts: the payload (an object, else wrapped), with the id."""
        payload = self.on_close_payload
        if payload is None:
            body: dict[str, Any] = {}
        elif isinstance(payload, dict):
            body = dict(payload)
        else:
            body = {"payload": payload}
        body.setdefault("session_id", self.id)
        return body


@attrs.define(eq=False, kw_only=True)
class Sessions:
    """The open sessions of a worker.

    Args:
        tracker: counts each session as one unit of its cost in flight.
        records: where ended (and refused) sessions are recorded for the router.
        model_url: the model server's base URL (relative ``on_close_route``s go there).
        http: the client for ``on_close`` posts.
        max_sessions: the most open at once (None or 0: no limit).
        clock: Unix time (replaceable in tests).
    """

    tracker: LoadTracker
    records: RequestLog
    model_url: str
    http: httpx.AsyncClient
    max_sessions: int | None = 10
    clock: Callable[[], float] = time.time
    _open: dict[str, Session] = attrs.field(factory=dict, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __len__(self) -> int:
        return len(self._open)

    def get(self, session_id: object) -> Session | None:
        """The open session with this id, or None."""
        return self._open.get(session_id) if isinstance(session_id, str) else None

    def create(
        self,
        *,
        auth: dict[str, Any],
        idx: int,
        cost: float,
        lifetime: float,
        on_close_route: str | None,
        on_close_payload: object,
    ) -> Session:
        """Open a session (its cost in flight from now on).

        Raises:
            SessionsFull: the limit is reached (the refusal is counted and recorded).
        """
        now = self.clock()
        if self.max_sessions and len(self._open) >= self.max_sessions:
            self.tracker.rejected(cost, trio.current_time())
            self.records.add(
                Record(request_idx=idx, status=RecordStatus.REJECTED, entered_queue_at=now)
            )
            raise SessionsFull(f"this worker has {self.max_sessions} sessions open already")
        session_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
        ticket = self.tracker.open(cost, trio.current_time(), idx=idx, kind=TicketKind.SESSION)
        session = Session(
            id=session_id,
            auth=auth,
            lifetime=lifetime,
            expiration=now + lifetime,
            created_at=now,
            on_close_route=on_close_route,
            on_close_payload=on_close_payload if on_close_route else None,
            ticket=ticket,
        )
        self._open[session_id] = session
        self._wake()
        return session

    def close(self, session: Session, why: str) -> bool:
        """End ``session`` now (sync): abort its requests, account and record it.

        Returns:
            Whether it was open (its ``on_close`` is then the caller's to run, see
            :meth:`run_on_close`).
        """
        if session.closed:
            return False
        session.closed = True
        del self._open[session.id]
        session.abort_requests()
        # A session is served work: its unit of load ends as done (the router tracks it so).
        self.tracker.close(session.ticket, Outcome(kind=OutcomeKind.COMPLETED), trio.current_time())
        self.records.add(
            Record(
                request_idx=session.ticket.idx,
                status=RecordStatus.SUCCESS,
                entered_queue_at=session.created_at,
                work_started_at=session.created_at,
                work_completed_at=self.clock(),
            )
        )
        log.info("session %s ended: %s", session.id, why)
        self._wake()
        return True

    async def end(self, session: Session, why: str) -> bool:
        """End ``session`` and run its ``on_close`` (bounded). Returns whether it was open."""
        if not self.close(session, why):
            return False
        await self.run_on_close(session)
        return True

    async def end_all(self, why: str) -> None:
        """End every open session, their ``on_close`` calls side by side (each bounded)."""
        ended = [s for s in list(self._open.values()) if self.close(s, why)]
        async with trio.open_nursery() as nursery:
            for session in ended:
                nursery.start_soon(self.run_on_close, session)

    async def run_on_close(self, session: Session) -> None:
        """POST the session's ``on_close`` hook, if it has one; failures are only logged."""
        route = session.on_close_route
        if not route:
            return
        url = route if "://" in route else self.model_url + "/" + route.lstrip("/")
        try:
            with trio.fail_after(ON_CLOSE_TIMEOUT):
                response = await self.http.post(url, json=session.on_close_body())
            if response.status_code >= 400:
                log.warning(
                    "session %s: on_close %s answered %d", session.id, url, response.status_code
                )
        except (httpx.HTTPError, httpx.InvalidURL, trio.TooSlowError) as exc:
            log.warning(
                "session %s: on_close %s failed: %s", session.id, url, exc or type(exc).__name__
            )

    async def run(self) -> None:
        """End sessions as they expire; end them all when cancelled (the table stops this
        service when the worker can no longer serve them).

        Run it with :func:`pyworker._watch.run_in_states`.
        """
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    changed = self._changed
                    now = self.clock()
                    for session in [s for s in self._open.values() if s.expiration <= now]:
                        if self.close(session, "expired"):
                            nursery.start_soon(self.run_on_close, session)
                    soonest = min((s.expiration for s in self._open.values()), default=math.inf)
                    with trio.move_on_after(
                        max(soonest - now, 0.0) if soonest < math.inf else math.inf
                    ):
                        await changed.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self.end_all("the worker stopped serving")

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
