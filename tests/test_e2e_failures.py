"""End to end over real sockets: the hello_world model server as a process, the stand-in
autoscaler and the worker, talking HTTP. A request cut short: the client leaving (the request
cancelled upstream, the load tracker told so), and the model server failing (its errors passed
through; dead, hung, or crashing mid-stream). The request path when all goes well (relaying,
signatures, serial backends, overload, reports, the graceful drain) is in ``test_e2e.py``.

The stacks start from a seeded benchmark cache (see ``harness.seed_benchmark``), so they are
ready at once and the fake's token rate can be slow where slowness is the point.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import httpx
import pytest
import trio
from e2e_harness import Events, prompt, read_stream, stats_where
from harness import eventually, ready_stack

from pyworker import State
from pyworker._load import LoadTracker, Outcome, OutcomeKind, Ticket

GUARD = 30  # seconds: the absolute bound on each test


@attrs.define
class Spy:
    """How the worker's load tracker saw each request end."""

    outcomes: list[Outcome] = attrs.Factory(list)

    def kinds(self) -> list[OutcomeKind]:
        return [outcome.kind for outcome in self.outcomes]


@pytest.fixture
def tracker_spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy()
    close = LoadTracker.close

    def on_close(self: LoadTracker, ticket: Ticket, outcome: Outcome, now: float) -> None:
        spy.outcomes.append(outcome)
        close(self, ticket, outcome, now)

    monkeypatch.setattr(LoadTracker, "close", on_close)
    return spy


# -- the model server's errors, passed through ---------------------------------------------------


async def test_model_server_errors_are_passed_through(
    nursery: trio.Nursery, tmp_path: Path, tracker_spy: Spy
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--error-rate", "1")
        response = await stack.post("/generate", prompt(2))
        assert response.status_code == 500
        assert response.json() == {"error": "injected failure"}
        response = await stack.post("/generate_stream", prompt(2))
        assert response.status_code == 500
        await eventually(lambda: stack.worker.tracker.in_flight == 0, what="tracker idle")
        # The model server answered, with an error: failed (no work done), not cancelled.
        assert tracker_spy.kinds() == [OutcomeKind.FAILED] * 2
        assert [outcome.status for outcome in tracker_spy.outcomes] == [500, 500]


# -- cancellation --------------------------------------------------------------------------------


async def test_client_leaving_mid_stream_cancels_upstream(
    nursery: trio.Nursery, tmp_path: Path, tracker_spy: Spy
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "50")
        events = Events(started=trio.current_time())
        url = stack.url + "/generate_stream"
        with trio.CancelScope() as scope:
            async with stack.http.stream("POST", url, json=stack.envelope(prompt(500))) as stream:
                async for chunk in stream.aiter_raw():
                    if events.feed(chunk):
                        scope.cancel()  # gone after the first event, ~490 tokens early
        assert events.tokens
        stats = await stats_where(stack, lambda s: s["cancelled"] == 1 and s["in_flight"] == 0)
        assert stats["completed"] == 0
        assert stats["tokens_generated"] < 100
        await eventually(lambda: stack.worker.tracker.in_flight == 0, what="tracker idle")
        assert tracker_spy.kinds() == [OutcomeKind.CANCELLED]


async def test_client_leaving_mid_json_request_cancels_upstream(
    nursery: trio.Nursery, tmp_path: Path, tracker_spy: Spy
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "50")
        async with trio.open_nursery() as clients:
            clients.start_soon(stack.post, "/generate", prompt(500))
            await stats_where(stack, lambda s: s["in_flight"] == 1)
            clients.cancel_scope.cancel()
        stats = await stats_where(stack, lambda s: s["cancelled"] == 1 and s["in_flight"] == 0)
        assert stats["completed"] == 0
        await eventually(lambda: stack.worker.tracker.in_flight == 0, what="tracker idle")
        assert tracker_spy.kinds() == [OutcomeKind.CANCELLED]
        # The worker still serves the next client.
        assert (await stack.post("/generate", prompt(2))).status_code == 200


# -- model server failures -----------------------------------------------------------------------


async def test_dead_model_server_is_502(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        assert (await stack.post("/generate", prompt(2))).status_code == 200
        await stack.fake.aclose()
        for _ in range(2):  # a stale pooled connection, then a refused one
            response = await stack.post("/generate", prompt(2))
            assert response.headers["content-type"] == "application/json"
            assert "model server" in response.json()["error"]
            if response.status_code == 503:
                break  # the health check the first 502 asked for has confirmed it already
            assert response.status_code == 502
        await stack.wait_state(State.ERRORED)
        await eventually(lambda: stack.worker.tracker.in_flight == 0, what="tracker idle")


async def test_hung_model_server_times_out(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--hang-after", "10", read_timeout=0.5)
        response = await stack.post("/generate", prompt(20))
        assert response.status_code == 504
        assert "sent nothing" in response.json()["error"]

        events = Events(started=trio.current_time())
        with pytest.raises(httpx.RemoteProtocolError):
            await read_stream(stack, prompt(20), events)
        assert len(events.tokens) == 10
        assert not any(event.get("done") for _, event in events.events)
        # Both hung requests were abandoned upstream, so the model server stopped them.
        await stats_where(stack, lambda s: s["cancelled"] == 2 and s["in_flight"] == 0)
        await eventually(lambda: stack.worker.tracker.in_flight == 0, what="tracker idle")


async def test_model_server_crash_mid_stream_breaks_the_response(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--crash-after", "10")
        events = Events(started=trio.current_time())
        with pytest.raises(httpx.RemoteProtocolError):
            await read_stream(stack, prompt(20), events)
        assert len(events.tokens) <= 10
        assert not any(event.get("done") for _, event in events.events)
        assert await stack.fake.wait() == 1
        await eventually(lambda: stack.worker.tracker.in_flight == 0, what="tracker idle")
        assert (await stack.post("/generate", prompt(2))).status_code == 502
