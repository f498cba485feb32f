"""Property test: whatever the interleaving of sessions and requests (created, extended,
expired, ended, drained; requests completing, failing, cancelled, aborted with their session),
the counts stay true while it runs, and everything returns to zero at the end: nothing in
flight, no session open, no workload pending, every workload received accounted once."""

from __future__ import annotations

import json
from functools import partial

import attrs
import httpx
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyworker._admission import Admission
from pyworker._load import CANCELLED, LoadTracker, Outcome, TicketKind
from pyworker._records import RequestLog
from pyworker._sessions import Session, Sessions, SessionsFull

HOW = st.sampled_from(["ok", "fail", "leave"])


@attrs.frozen
class Create:
    cost: int
    lifetime: float


@attrs.frozen
class Request:
    workload: int
    how: str


@attrs.frozen
class InSession:
    pick: int
    how: str


@attrs.frozen
class End:
    pick: int


@attrs.frozen
class Wait:
    seconds: float


Event = Create | Request | InSession | End | Wait

EVENTS = st.lists(
    st.one_of(
        st.builds(Create, st.integers(1, 50), st.sampled_from([0.5, 2.0, 30.0])),
        st.builds(Request, st.integers(1, 50), HOW),
        st.builds(InSession, st.integers(0, 5), HOW),
        st.builds(End, st.integers(0, 5)),
        st.builds(Wait, st.sampled_from([0.1, 0.6, 3.0])),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events=EVENTS, max_sessions=st.sampled_from([0, 2]))
# One more session than allowed, every run: random draws reach SessionsFull in only some runs.
@example(events=[Create(1, 30.0)] * 3 + [InSession(2, "ok"), End(0)], max_sessions=2)
def test_counts_return_to_zero_after_any_interleaving(
    events: list[Event], max_sessions: int
) -> None:
    trio.run(
        partial(_run, events, max_sessions), clock=trio.testing.MockClock(autojump_threshold=0)
    )


async def _run(events: list[Event], max_sessions: int) -> None:
    closed: list[str] = []

    async def model_server(request: httpx.Request) -> httpx.Response:
        closed.append(json.loads(request.content)["session_id"])
        return httpx.Response(200)

    tracker = LoadTracker(now=trio.current_time())
    records = RequestLog()
    admission = Admission(tracker=tracker, capacity=lambda: 0.0, records=records)
    async with httpx.AsyncClient(transport=httpx.MockTransport(model_server)) as http:
        sessions = Sessions(
            tracker=tracker,
            records=records,
            model_url="http://model",
            http=http,
            max_sessions=max_sessions,
            clock=trio.current_time,
        )
        created: list[Session] = []
        outside: dict[int, float] = {}  # request id -> workload, while in flight

        async def request(workload: float, how: str, session: Session | None) -> None:
            in_session = session is not None
            async with admission.admit(workload, in_session=in_session) as ticket:
                if not in_session:
                    outside[ticket.id] = workload
                try:
                    with trio.CancelScope() as scope:
                        detach = session.attach(scope) if session is not None else None
                        await trio.sleep(1.0)
                        if how == "ok":
                            ticket.end(Outcome.answered(200))
                        elif how == "fail":
                            ticket.end(Outcome.answered(500))
                        else:
                            ticket.end(CANCELLED)
                    if detach is not None:
                        detach()
                finally:
                    outside.pop(ticket.id, None)

        def check() -> None:
            assert tracker.pending_workload == pytest.approx(sum(outside.values()))
            working = list(tracker.reported())
            sessions_open = [t for t in working if t.kind is TicketKind.SESSION]
            assert len(sessions_open) == len(sessions)
            assert len(working) == len(sessions) + len(outside)
            if max_sessions:
                assert len(sessions) <= max_sessions

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sessions.run)
            async with trio.open_nursery() as requests:
                for event in events:
                    if isinstance(event, Create):
                        try:
                            session = sessions.create(
                                auth={},
                                idx=len(created),
                                cost=float(event.cost),
                                lifetime=event.lifetime,
                                on_close_route="/closed",
                                on_close_payload=None,
                            )
                        except SessionsFull:
                            assert max_sessions
                            assert len(sessions) == max_sessions
                        else:
                            created.append(session)
                    elif isinstance(event, Request):
                        requests.start_soon(request, float(event.workload), event.how, None)
                    elif isinstance(event, InSession):
                        live = [s for s in created if not s.closed]
                        if live:
                            session = live[event.pick % len(live)]
                            session.extend()
                            requests.start_soon(request, 3.0, event.how, session)
                    elif isinstance(event, End):
                        if created:
                            await sessions.end(created[event.pick % len(created)], "asked")
                    else:
                        await trio.sleep(event.seconds)
                    await trio.testing.wait_all_tasks_blocked()
                    check()
                # The drain: requests finish, then the sessions end.
            await sessions.end_all("drained")
            check()
            nursery.cancel_scope.cancel()

    assert tracker.in_flight == 0
    assert tracker.pending_workload == 0.0
    assert list(tracker.reported()) == []
    assert len(sessions) == 0
    # Every session ended once, its on_close called once.
    assert sorted(closed) == sorted(s.id for s in created)
    totals = tracker.totals(trio.current_time())
    assert totals.cancelled <= totals.received
    assert totals.completed <= totals.received
