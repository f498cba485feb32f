"""End to end over real sockets: the hello_world model server as a process, the stand-in
autoscaler and the worker, talking HTTP. The request path when all goes well: relaying,
signatures, serial backends, overload, reports and the graceful drain. A request cut short (the
client leaving, the model server failing) is in ``test_e2e_failures.py``.

Most stacks start from a seeded benchmark cache (see ``harness.seed_benchmark``), so they are
ready at once and the fake's token rate can be slow where slowness is the point;
``test_reports_*`` runs the real benchmark.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from e2e_harness import Events, prompt, read_stream, stats_where
from harness import Stack, eventually, ready_stack

from pyworker import State, load_backend

HELLO = "hello_world"
GUARD = 30  # seconds: the absolute bound on each test


# -- relaying ------------------------------------------------------------------------------------


async def test_json_and_stream_are_relayed(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "40")
        response = await stack.post("/generate", prompt(3, "hello there"))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["generated_tokens"] == 3
        assert body["prompt_tokens"] == 2
        assert len(body["response"].split()) == 3

        # 20 tokens at 40 per second: the first event must arrive long before the last one
        # is generated, i.e. the worker relays events as they come.
        events = Events(started=trio.current_time())
        await read_stream(stack, prompt(20), events)
        assert len(events.tokens) == 20
        assert events.events[-1][1] == {"done": True, "prompt_tokens": 1, "generated_tokens": 20}
        first = events.events[0][0] - events.started
        last = events.events[-1][0] - events.started
        assert first < last / 4, (first, last)
        assert events.chunks >= 10  # not buffered into one or two writes

        # The model server's health answer, relayed.
        health = await stack.http.get(stack.url + "/healthcheck")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})


async def test_signatures_tampering_and_replays(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path)
        url = stack.url + "/generate"
        payload = prompt(1)

        async def send(auth: dict[str, Any]) -> httpx.Response:
            return await stack.http.post(url, json={"auth_data": auth, "payload": payload})

        assert (await send(stack.auth_data())).status_code == 200
        for field, value in (("cost", 1), ("reqnum", 10_000), ("url", "http://127.0.0.1:1")):
            auth = stack.auth_data(cost=100)
            auth[field] = value if field != "reqnum" else auth["reqnum"] + value
            response = await send(auth)
            assert response.status_code == 401, (field, response.text)
            assert response.json()["error"]

        envelope = stack.envelope(payload)
        assert (await stack.http.post(url, json=envelope)).status_code == 200
        replayed = await stack.http.post(url, json=envelope)
        assert replayed.status_code == 401
        assert "replay" in replayed.json()["error"]

        # The 2025 router signs the URL only, and adds fields of its own: accepted, and outside
        # the replay window (the signature is the same for every request to this worker, and
        # its reqnum the client's choice: a huge one must not lock the genuine ones out).
        signer = stack.standin.signer
        auth_2025 = signer.sign_2025(stack.info.url, cost=5, endpoint="e", reqnum=10**18)
        auth_2025["request_idx"] = 500
        assert (await send(auth_2025)).status_code == 200
        assert (await send(auth_2025)).status_code == 200
        # A signature over another worker's URL: refused.
        other = stack.auth_data()
        other["signature"] = signer.sign_2025("http://elsewhere:1", reqnum=1)["signature"]
        assert (await send(other)).status_code == 401

        # A router-signed reqnum of 500 was accepted: one more than 100 below it is too old.
        assert (
            await send(signer.sign(cost=1, endpoint="e", reqnum=500, url=stack.info.url))
        ).status_code == 200
        old = signer.sign(cost=1, endpoint="e", reqnum=399, url=stack.info.url)
        response = await send(old)
        assert response.status_code == 401
        assert "too old" in response.json()["error"]
        recent = signer.sign(cost=1, endpoint="e", reqnum=401, url=stack.info.url)
        assert (await send(recent)).status_code == 200


# -- admission -----------------------------------------------------------------------------------


async def test_serial_backend_gets_one_request_at_a_time_in_order(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    serial = attrs.evolve(load_backend(HELLO), allow_parallel_requests=False)
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "200", backend=serial)
        done: list[int] = []

        async def client(i: int) -> None:
            response = await stack.post("/generate", prompt(40, f"request number {i}"))
            assert response.status_code == 200, response.text
            done.append(i)

        async with trio.open_nursery() as clients:
            for i in range(4):
                clients.start_soon(client, i)
                # Arrival order: each request is admitted before the next one is sent.
                await _wait_admitted(stack, i + 1)
            # A fifth client gives up while waiting for its turn: it never reaches the model.
            with trio.CancelScope() as impatient:
                clients.start_soon(_cancel_when_admitted, stack, 5, impatient)
                await stack.post("/generate", prompt(40, "impatient"))
        assert done == [0, 1, 2, 3]
        stats = await stack.stats()
        assert stats["max_concurrent"] == 1
        assert stats["completed"] == 4
        assert stats["cancelled"] == 0
        await eventually(lambda: stack.worker.tracker.in_flight == 0, what="tracker idle")


async def _wait_admitted(stack: Stack, in_flight: int) -> None:
    await eventually(lambda: stack.worker.tracker.in_flight == in_flight, what="admitted")


async def _cancel_when_admitted(stack: Stack, in_flight: int, scope: trio.CancelScope) -> None:
    await _wait_admitted(stack, in_flight)
    scope.cancel()


async def test_overload_answers_429_and_reports_rejected_load(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        # Capacity 100/s and a 1 s queue limit; the fake serves 100 tokens/s per request.
        stack = await ready_stack(
            nursery, tmp_path, "--token-rate", "100", max_perf=100.0, max_queue_time=1.0
        )
        async with trio.open_nursery() as clients:
            results: dict[str, httpx.Response] = {}

            async def first() -> None:
                results["first"] = await stack.post("/generate", prompt(60))  # workload 61

            clients.start_soon(first)
            await eventually(lambda: stack.worker.tracker.in_flight == 1, what="admitted")
            # (61 + 101) / 100 = 1.6 s expected wait > 1 s.
            refused = await stack.post("/generate", prompt(100))
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert "queue" in refused.json()["error"]
            # (61 + 11) / 100 = 0.7 s: admitted alongside.
            small = await stack.post("/generate", prompt(10))
            assert small.status_code == 200
        assert results["first"].status_code == 200
        reports = stack.standin.reports
        await eventually(lambda: any(r["rej_load"] > 0 for r in reports), what="rej_load")
        stack.shutdown.set()
        await eventually(lambda: reports[-1]["state"] == "stopped", what="final report")
        # The refused request's workload, once; the two admitted ones only as received.
        assert sum(r["rej_load"] for r in reports) == pytest.approx(101)
        assert reports[-1]["num_requests_recieved"] == 2


# -- reports -------------------------------------------------------------------------------------

REPORT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int,
    "url": str,
    "loadtime": (int, float),
    "max_perf": (int, float),
    "cur_perf": (int, float),
    "cur_load": (int, float),
    "error_msg": str,
    "num_requests_working": int,
    "num_requests_recieved": int,
    "additional_disk_usage": (int, float),
    "cur_capacity": int,
    "max_capacity": int,
    "new_load": (int, float),
    "rej_load": (int, float),
    "working_request_idxs": list,
    "version": str,
    "mtoken": str,
    "disk_usage": (int, float),
}


async def test_reports_carry_every_field_in_the_newest_meanings(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "1000", max_perf=None)
        reports = stack.standin.reports
        await eventually(lambda: any(r["state"] == "ready" for r in reports), what="ready report")
        response = await stack.post("/generate", prompt(50))
        assert response.status_code == 200
        await eventually(
            lambda: any(r["num_requests_recieved"] for r in reports), what="load report"
        )
        stack.shutdown.set()
        await eventually(lambda: reports[-1]["state"] == "stopped", what="final report")

        for report in reports:
            for field, kind in REPORT_FIELDS.items():
                assert isinstance(report[field], kind), (field, report)
            assert report["id"] == 7
            assert report["url"] == stack.info.url
            assert report["cur_capacity"] == report["max_capacity"] == 0
            assert report["error_msg"] == ""
            assert report["version"]
            assert all(math.isfinite(report[f]) for f in ("cur_load", "cur_perf", "max_perf"))
        sent = list(reports)  # a list, to slice (the stand-in keeps a deque)
        states = [r["state"] for r in sent]
        assert states[0] == "loading"
        # Vast's newest meanings (the default): the load time in every report once loaded.
        first_ready = states.index("ready")
        assert all(r["loadtime"] == 0 for r in sent[:first_ready])
        loadtime = sent[first_ready]["loadtime"]
        assert 0 < loadtime < GUARD
        assert all(r["loadtime"] == loadtime for r in sent[first_ready:])
        assert sent[first_ready]["max_perf"] == pytest.approx(stack.worker.lifecycle.max_perf)
        assert sent[first_ready]["max_perf"] > 0
        # One request: received (and its work done) once over the reports; counted since start.
        assert sum(r["new_load"] for r in sent) == pytest.approx(51)
        assert sum(r["cur_perf"] for r in sent) == pytest.approx(51)
        assert sent[-1]["num_requests_recieved"] == 1
        assert sent[-1]["num_requests_working"] == 0
        assert sent[-1]["working_request_idxs"] == []
        assert sent[-1]["cur_load"] == 0


# -- graceful drain ------------------------------------------------------------------------------


async def test_graceful_drain_finishes_requests_in_flight(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--token-rate", "100")
        results: dict[str, Any] = {}

        async def json_request() -> None:
            results["json"] = await stack.post("/generate", prompt(50))

        async def stream_request() -> None:
            events = Events(started=trio.current_time())
            await read_stream(stack, prompt(50), events)
            results["stream"] = events

        async with trio.open_nursery() as clients:
            clients.start_soon(json_request)
            clients.start_soon(stream_request)
            await stats_where(stack, lambda s: s["in_flight"] == 2)
            stack.shutdown.set()
            await stack.wait_state(State.DRAINING)
            refused = await stack.post("/generate", prompt(2))
            assert refused.status_code == 503
            assert refused.json() == {"error": "worker is shutting down", "state": "draining"}
        # Zero loss: both answers are whole.
        assert results["json"].status_code == 200
        assert results["json"].json()["generated_tokens"] == 50
        assert len(results["stream"].tokens) == 50
        assert results["stream"].events[-1][1]["done"] is True

        await stack.wait_state(State.STOPPED)
        reports = stack.standin.reports
        await eventually(lambda: reports[-1]["state"] == "stopped", what="final report")
        assert reports[-1]["num_requests_working"] == 0
        stats = await stack.stats()
        assert stats["completed"] == 2
        assert stats["cancelled"] == 0
        # The worker no longer listens.
        with pytest.raises(httpx.ConnectError):
            await stack.http.get(stack.url + "/ping")
