"""What the newest generation added on the worker's side, driven by Vast's own client (``vastai``
1.9.1) through the stand-in: sessions, the router's ``request_idx`` in reports,
``/delete_requests/``. These tests also pass against Vast's own 1.9.1 worker, so they pin the
reference's behaviour, not only ours.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from harness import add_worker
from vast_harness import (
    FIRST_IDX,
    GUARD,
    HANG_AFTER,
    generate,
    one_more_completed,
    prompt,
    tokens,
    vast_stack,
)
from vastai.serverless.client import Endpoint, Session

from pyworker.devtools import in_order


async def test_a_session_from_creation_to_its_end(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Create (routed once) → requests pinned to the worker, each extending the session by its
    lifetime → ``/session/get`` → ``/session/end`` calls ``on_close`` at the model server →
    the ended session's id is answered 410 (the client's "closed session")."""
    lifetime = 30.0
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)

        async def body(endpoint: Endpoint) -> None:
            session = await endpoint.session(
                cost=50,
                lifetime=lifetime,
                on_close_route="/generate",
                on_close_payload=prompt(1, "goodbye"),
            )
            assert isinstance(session.session_id, str)
            assert session.session_id
            assert session.url == stack.url
            assert session.auth_data["request_idx"] == FIRST_IDX
            assert session.auth_data["cost"] == 50

            for tokens_wanted in (2, 3):
                answer = await session.request("/generate", prompt(tokens_wanted))
                assert (answer["ok"], answer["status"]) == (True, 200)
                assert answer["response"]["generated_tokens"] == tokens_wanted
                assert answer["url"] == stack.url
            assert len(stack.standin.route_calls) == 1  # only the creation was routed

            fetched = await endpoint.get_session(session.session_id, session.auth_data)
            assert fetched.session_id == session.session_id
            assert fetched.auth_data == session.auth_data
            assert fetched.url == stack.url
            # Each accepted request pushed the expiration one lifetime further.
            assert fetched.expiration == pytest.approx(session.expiration + 2 * lifetime, abs=0.01)
            assert await session.is_open()

            before = await vast.in_trio(stack.stats)
            await endpoint.client.end_endpoint_session(session)  # raises unless 2xx
            # on_close: POST /generate {"prompt": "goodbye", "max_response_tokens": 1, ...}
            await vast.in_trio(partial(one_more_completed, stack, before, tokens=1))
            with pytest.raises(ValueError, match="closed session"):  # the worker's 410
                await session.request("/generate", prompt(1))
            with pytest.raises(Exception, match="Failed to get session"):
                await endpoint.get_session(session.session_id, session.auth_data)

        await vast.run(body)


async def test_a_session_expires(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A session left alone past its lifetime is closed by the worker (``on_close`` called),
    and its id is answered 410 from then on."""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)

        async def body(endpoint: Endpoint) -> None:
            before = await vast.in_trio(stack.stats)
            session = await endpoint.session(
                lifetime=0.5, on_close_route="/generate", on_close_payload=prompt(3, "expired")
            )
            await vast.in_trio(partial(one_more_completed, stack, before, tokens=3))
            with pytest.raises(ValueError, match="closed session"):
                await session.request("/generate", prompt(1))

        await vast.run(body)


async def test_a_full_worker_sends_new_sessions_elsewhere(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A worker at ``max_sessions`` answers ``/session/create`` 429, so the client re-routes
    (same ``request_idx``) and the session opens on another worker. (The option is expected
    as ``WorkerConfig.max_sessions``, as in Vast's ``WorkerConfig``.)"""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path, max_sessions=1)
        first = stack.url
        second = (await add_worker(stack)).url
        standin = stack.standin
        standin.worker_urls = [first, second]
        standin.route_policy = in_order

        async def body(endpoint: Endpoint) -> list[Session]:
            sessions = [await endpoint.session(lifetime=30) for _ in range(2)]
            for session in sessions:
                answer = await session.request("/generate", prompt(1))
                assert answer["ok"]
            for session in sessions:
                await endpoint.client.end_endpoint_session(session)
            return sessions

        sessions = await vast.run(body)

    assert [session.url for session in sessions] == [first, second]
    calls = [(c.sent_request_idx, c.request_idx, c.url) for c in standin.route_calls]
    assert calls == [
        (0, FIRST_IDX, first),
        (0, FIRST_IDX + 1, first),  # full: 429
        (FIRST_IDX + 1, FIRST_IDX + 1, second),
    ]


async def test_reports_name_requests_in_flight_by_the_routers_index(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """While a routed request is in flight, the worker's reports list it in
    ``working_request_idxs`` by the ``request_idx`` of its auth_data (not its ``reqnum``,
    nor a number of the worker's own)."""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path, "--hang-after", str(HANG_AFTER))
        standin = stack.standin

        async def busy_report() -> dict[str, Any]:
            def busy() -> bool:
                return any(r.get("num_requests_working") for r in standin.reports)

            await standin.wait_until(busy)
            return next(r for r in standin.reports if r.get("num_requests_working"))

        async def body(endpoint: Endpoint) -> dict[str, Any]:
            answer = await endpoint.request("/generate_stream", prompt(4 * HANG_AFTER), stream=True)
            try:
                await tokens(answer["response"], 1)  # in flight, and it stays so
                return await vast.in_trio(busy_report)
            finally:
                await answer["response"].aclose()

        report = await vast.run(body)

    assert report["num_requests_working"] == 1
    assert report["working_request_idxs"] == [FIRST_IDX]


async def test_finished_requests_are_sent_to_delete_requests(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A routed request that finished reaches ``POST /delete_requests/`` in the 2026 form
    (§9) within a few report ticks: ``{"worker_id", "mtoken", "requests": [{"request_idx",
    "success", "status", "entered_queue_at", "work_started_at", "work_completed_at"}]}``."""
    with trio.fail_after(GUARD):
        stack, vast = await vast_stack(nursery, tmp_path)
        standin = stack.standin

        assert (await vast.run(generate))["ok"]

        def entries() -> list[dict[str, Any]]:
            return [entry for body in standin.deletions for entry in body.get("requests", [])]

        def deleted() -> bool:
            return any(entry.get("request_idx") == FIRST_IDX for entry in entries())

        # Deletions go out on the worker's 1 s tick, as reports do: give it three ticks, each
        # made to happen by a small request (a report follows each), not three seconds.
        for _ in range(3):
            if deleted():
                break
            seen = standin.reports_received
            assert (await stack.post("/generate", prompt(1))).status_code == 200
            await standin.wait_for_reports(seen + 1)

    assert deleted(), list(standin.deletions)
    sent = next(b for b in standin.deletions if any(e in b["requests"] for e in entries()))
    assert sent["worker_id"] == stack.worker.config.container_id
    assert "mtoken" in sent
    entry = next(e for e in entries() if e.get("request_idx") == FIRST_IDX)
    assert (entry["success"], entry["status"]) == (True, "Success")
    assert 0 < entry["entered_queue_at"] <= entry["work_started_at"] <= entry["work_completed_at"]
