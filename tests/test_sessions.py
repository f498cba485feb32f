"""Sessions over real sockets (vast-2026.md §7): their routes, requests within them, their ends
(asked, expired, the worker draining or the model server failing), their accounting in reports
and ``/delete_requests/`` records, and the internal listener. ``tests/test_vastai_client.py``
drives the same with Vast's own client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
from harness import Stack, eventually, ready_stack

from pyworker import State, Trigger

GUARD = 30  # seconds: the absolute bound on each test
PROMPT = {"prompt": "hi", "max_response_tokens": 2}


async def create(
    stack: Stack, *, cost: object = 100, **payload: Any
) -> tuple[int, Any, dict[str, Any]]:
    """POST /session/create; (status, answer, the auth_data it was created with)."""
    auth = stack.auth_data(cost=cost)
    body = {"auth_data": auth, "session_id": None, "payload": payload}
    response = await stack.http.post(stack.url + "/session/create", json=body)
    return response.status_code, response.json(), auth


async def in_session(stack: Stack, session_id: str, auth: dict[str, Any], **kwargs: Any) -> Any:
    """A request inside the session: its own auth_data again, as Vast's client sends it."""
    body = {"auth_data": auth, "session_id": session_id, "payload": kwargs.get("payload", PROMPT)}
    return await stack.http.post(stack.url + "/generate", json=body)


async def session_call(
    stack: Stack, route: str, session_id: str, auth: object, *, base: str = ""
) -> Any:
    body = {"session_id": session_id, "session_auth": auth}
    return await stack.http.post((base or stack.url) + route, json=body)


async def closed_at_model(stack: Stack) -> list[dict[str, Any]]:
    response = await stack.http.get(stack.fake.url + "/sessions_closed")
    closed: list[dict[str, Any]] = response.json()
    return closed


async def test_a_session_from_creation_to_its_end(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        before = time.time()
        status, created, auth = await create(
            stack,
            lifetime=30,
            on_close_route="/session_closed",
            on_close_payload={"reason": "test", "keep": [1, 2]},
        )
        assert status == 201
        session_id = created["session_id"]
        assert len(session_id) == 13
        assert session_id.isalnum()
        assert before + 30 <= created["expiration"] <= time.time() + 30

        # Requests in it present the session's own auth_data again: accepted, each one
        # extending the session by its lifetime.
        for _ in range(3):
            response = await in_session(stack, session_id, auth)
            assert response.status_code == 200, response.text
        described = (await session_call(stack, "/session/get", session_id, auth)).json()
        assert described["expiration"] == pytest.approx(created["expiration"] + 3 * 30)
        assert described["auth_data"] == auth
        assert described["on_close_route"] == "/session_closed"
        health = await session_call(stack, "/session/health", session_id, auth)
        assert (health.status_code, health.json()) == (200, {"ok": True})

        # Only with its auth_data.
        for route in ("/session/get", "/session/health", "/session/end"):
            wrong = await session_call(stack, route, session_id, {**auth, "reqnum": 0})
            assert wrong.status_code == 401, route

        ended = await session_call(stack, "/session/end", session_id, auth)
        assert (ended.status_code, ended.json()) == (
            200,
            {"ended": True, "removed_session": session_id},
        )
        # on_close reached the model server before the answer: the payload, with the id.
        assert await closed_at_model(stack) == [
            {"reason": "test", "keep": [1, 2], "session_id": session_id}
        ]
        # Gone: its requests get 410 (the client stops using it), the routes say so.
        assert (await in_session(stack, session_id, auth)).status_code == 410
        assert (await session_call(stack, "/session/get", session_id, auth)).status_code == 400
        gone = await session_call(stack, "/session/health", session_id, auth)
        assert (gone.status_code, gone.json()) == (200, {"ok": False})
        assert (await session_call(stack, "/session/end", session_id, auth)).status_code == 400


async def test_creation_is_a_signed_routed_request(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        url = stack.url + "/session/create"
        forged = {**stack.auth_data(), "cost": 5}
        response = await stack.http.post(url, json={"auth_data": forged, "payload": {}})
        assert response.status_code == 401
        status, body, _ = await create(stack, cost="lots")
        assert (status, body) == (
            422,
            {"auth_data": {"cost": "must be a non-negative number for a session"}},
        )
        status, body, _ = await create(stack, lifetime=-1, on_close_route=5)
        assert status == 422
        assert set(body["payload"]) == {"lifetime", "on_close_route"}
        assert (await create(stack, cost="12.5"))[0] == 201  # a numeric string is a number
        assert (await stack.http.post(url, content=b"{nope")).status_code == 400
        # Unknown ids: 410 for a request, 422 for a route without one.
        response = await stack.http.post(
            stack.url + "/generate",
            json={"auth_data": stack.auth_data(), "session_id": "nope", "payload": PROMPT},
        )
        assert (response.status_code, response.json()) == (410, {"error": "invalid session"})
        missing = await stack.http.post(stack.url + "/session/get", json={})
        assert (missing.status_code, missing.json()) == (422, {"error": "missing session_id"})


async def test_a_full_worker_refuses_new_sessions(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, max_sessions=2)
        assert [(await create(stack))[0] for _ in range(2)] == [201, 201]
        status, body, auth = await create(stack, cost=40)
        assert status == 429  # the client goes to another worker
        assert "sessions" in body["error"]
        # Counted as refused, and recorded for the router as such.
        reports = stack.standin.reports
        await eventually(lambda: sum(r["rej_load"] for r in reports) >= 40, what="rej_load")
        records = await eventually(lambda: _records(stack), what="records")
        assert {"request_idx": auth["request_idx"], "status": "Rejected"}.items() <= next(
            r for r in records if r["request_idx"] == auth["request_idx"]
        ).items()


def _records(stack: Stack) -> list[dict[str, Any]]:
    return [entry for body in stack.standin.deletions for entry in body["requests"]]


async def test_sessions_in_reports_and_records(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        status, created, auth = await create(stack, cost=100)
        assert status == 201
        reports = stack.standin.reports

        def with_session() -> dict[str, Any] | None:
            return next((r for r in reports if r["num_requests_working"] == 1), None)

        report = await eventually(with_session, what="a report with the session")
        # One unit of its cost in flight, under the router's request_idx.
        assert report["working_request_idxs"] == [auth["request_idx"]]
        assert report["cur_load"] == 100
        assert (await in_session(stack, created["session_id"], auth)).status_code == 200
        ended = await session_call(stack, "/session/end", created["session_id"], auth)
        assert ended.status_code == 200
        records = await eventually(lambda: _records(stack), what="records")
        # The session, once, as a success; its request is the router's business, not a record.
        (record,) = records
        assert (record["request_idx"], record["status"], record["success"]) == (
            auth["request_idx"],
            "Success",
            True,
        )
        assert record["entered_queue_at"] <= record["work_completed_at"]


async def test_a_session_expires(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        status, created, auth = await create(
            stack,
            lifetime=0.5,
            on_close_route="session_closed",  # relative, no slash
        )
        assert status == 201
        session_id = created["session_id"]
        closed = await eventually(lambda: closed_at_model(stack), what="on_close at expiry")
        assert closed == [{"session_id": session_id}]
        assert time.time() >= created["expiration"]
        assert (await in_session(stack, session_id, auth)).status_code == 410


async def test_ending_a_session_aborts_its_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "20")
        _, created, auth = await create(stack)
        session_id = created["session_id"]
        results: list[int | str] = []  # a status, or the name of the error instead

        async def slow() -> None:
            payload = {"prompt": "hi", "max_response_tokens": 400}  # 20 s of generation
            try:
                results.append(
                    (await in_session(stack, session_id, auth, payload=payload)).status_code
                )
            except Exception as exc:  # the connection closed under it
                results.append(type(exc).__name__)

        async with trio.open_nursery() as clients:
            clients.start_soon(slow)
            await eventually(lambda: stack.worker.tracker.in_flight == 1, what="in flight")
            assert (await session_call(stack, "/session/end", session_id, auth)).status_code == 200
        # The upstream work stopped with it, and the client did not get a success.
        stats = await eventually(
            lambda: _stats_where(stack, lambda s: s["cancelled"] == 1), what="upstream cancelled"
        )
        assert stats["completed"] == 0
        assert results != [200]


async def _stats_where(stack: Stack, check: Any) -> dict[str, int] | None:
    stats = await stack.stats()
    return stats if check(stats) else None


async def test_a_failing_model_server_ends_the_sessions(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        _, created, auth = await create(stack, on_close_route="/session_closed")
        session_id = created["session_id"]
        stack.worker.lifecycle.fire(Trigger.HEALTH_FAILED, now=trio.current_time(), reason="test")
        closed = await eventually(lambda: closed_at_model(stack), what="on_close")
        assert closed == [{"session_id": session_id}]
        assert (await in_session(stack, session_id, auth)).status_code == 410
        assert (await create(stack))[0] == 503  # errored: no new ones


async def test_draining_ends_sessions_after_the_requests(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "100")
        _, created, auth = await create(stack, on_close_route="/session_closed")
        session_id = created["session_id"]
        results: list[int] = []

        async def request() -> None:
            payload = {"prompt": "hi", "max_response_tokens": 50}  # 0.5 s
            results.append((await in_session(stack, session_id, auth, payload=payload)).status_code)

        async with trio.open_nursery() as clients:
            clients.start_soon(request)
            await eventually(lambda: stack.worker.tracker.in_flight == 1, what="in flight")
            stack.shutdown.set()
            await stack.wait_state(State.DRAINING)
            # Draining: no new requests, in the session or not.
            assert (await in_session(stack, session_id, auth)).status_code == 503
        assert results == [200]  # the request in flight finished
        await stack.wait_state(State.STOPPED)
        assert await closed_at_model(stack) == [{"session_id": session_id}]


async def test_the_internal_listener_serves_only_session_end(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        internal = stack.info.internal_url
        assert internal.startswith("http://")
        assert internal != stack.url
        _, created, auth = await create(stack)
        session_id = created["session_id"]
        assert (
            await session_call(stack, "/session/get", session_id, auth, base=internal)
        ).status_code == 404
        response = await stack.http.post(internal + "/generate", json={})
        assert response.status_code == 404
        ended = await session_call(stack, "/session/end", session_id, auth, base=internal)
        assert ended.json() == {"ended": True, "removed_session": session_id}


@pytest.mark.parametrize(
    ("token", "header", "status"),
    [
        ("", "Bearer x", 403),
        ("s3cret", "Bearer wrong", 401),
        ("s3cret", "", 401),
        ("s3cret", "Bearer s3cret", 200),
        ("s3cret", "s3cret", 200),
    ],
)
async def test_pyworker_update(
    nursery: trio.Nursery, tmp_path: Path, token: str, header: str, status: int
) -> None:
    with trio.fail_after(GUARD):
        flag = tmp_path / "force_update"
        stack = await ready_stack(nursery, tmp_path, mtoken=token, update_flag_file=str(flag))
        headers = {"Authorization": header} if header else {}
        response = await stack.http.post(stack.url + "/pyworker/update", headers=headers)
        assert response.status_code == status, response.text
        assert flag.exists() == (status == 200)
        if status == 200:
            assert response.json() == {"ok": True}
