"""The request pipeline in-process, stage by stage: its order and what each stage may touch.

The pipeline is driven as an ASGI app with hand-made ``receive``/``send``; the model server is
an endpoint's own ``run`` that records every job it gets. ``tests/test_proxy.py`` and
``tests/test_e2e.py`` check the same over real sockets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from harness import URL

from pyworker import Backend, Endpoint, Fields, Job, Reply, RunContext, Trigger
from pyworker._admission import Admission
from pyworker._auth import Authenticator
from pyworker._lifecycle import State
from pyworker._load import LoadTracker
from pyworker._machine import Lifecycle
from pyworker._model import ModelServer
from pyworker._pipeline import Pipeline
from pyworker._records import RequestLog
from pyworker._sessions import Sessions
from pyworker._stages import Limits
from pyworker._typing import Message
from pyworker._upstream import UpstreamPool
from pyworker._watchdog import Watchdog
from pyworker.devtools import RouterSigner

PAYLOAD = {"prompt": "hi", "work": 10}


@attrs.define
class Model:
    """The backend's hooks, recording what reached them."""

    parsed: list[object] = attrs.Factory(list)
    ran: list[Job] = attrs.Factory(list)
    status: int = 200
    gate: trio.Event | None = None
    """When set, each run waits for it (a model server busy with the request)."""
    started: trio.Event = attrs.Factory(trio.Event)

    def parse(self, payload: object) -> Job:
        self.parsed.append(payload)
        fields = Fields(payload)
        prompt = fields.string("prompt")
        work = fields.number("work", default=1.0, minimum=0)
        fields.check()
        return Job(workload=work, body=json.dumps(prompt).encode(), upstream_path="/x")

    async def run(self, job: Job, context: RunContext) -> Reply:
        self.ran.append(job)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return Reply.json({"echo": json.loads(job.body)}, status=self.status)

    def backend(self) -> Backend:
        endpoint = Endpoint(
            route="/generate", parse=self.parse, benchmark_payload=lambda r: {}, run=self.run
        )
        return Backend(
            name="recorder",
            model_server_url="http://127.0.0.1:9",
            endpoints=(endpoint,),
            benchmark_route="/generate",
            log_rules=(),
        )


@attrs.define
class Rig:
    model: Model
    pipeline: Pipeline
    lifecycle: Lifecycle
    tracker: LoadTracker
    signer: RouterSigner
    reqnum: int = 0

    def auth(self) -> dict[str, Any]:
        self.reqnum += 1
        return self.signer.sign(cost=10, endpoint="e", reqnum=self.reqnum, url=URL)

    async def post(self, body: object, *, method: str = "POST") -> tuple[int, Any]:
        """One request through the pipeline; (status, decoded JSON body)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent: list[Message] = []
        pending = [{"type": "http.request", "body": data, "more_body": False}]

        async def receive() -> Message:
            if pending:
                return pending.pop()
            await trio.sleep_forever()
            raise AssertionError

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/generate", "method": method, "headers": []}
        await self.pipeline(scope, receive, send)
        status = sent[0]["status"]
        return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


async def _no_fallback(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("only proxied routes here")


@asynccontextmanager
async def rig(
    signer: RouterSigner, *, state: State = State.READY, **admission: Any
) -> AsyncIterator[Rig]:
    model = Model()
    lifecycle = Lifecycle(started_at=0.0)
    if state is State.READY:
        lifecycle.fire(Trigger.MODEL_LOADED, now=0.0)
        lifecycle.fire(Trigger.BENCHMARK_DONE, now=0.0, max_perf=10.0)
    authenticator = Authenticator(own_url=URL)
    authenticator.set_public_key(signer.public_pem())
    tracker = LoadTracker(now=trio.current_time())
    records = RequestLog()
    async with httpx.AsyncClient() as http, UpstreamPool(host="127.0.0.1", port=9) as pool:
        pipeline = Pipeline(
            backend=model.backend(),
            lifecycle=lifecycle,
            authenticator=authenticator,
            admission=Admission(
                tracker=tracker,
                capacity=lambda: lifecycle.max_perf,
                records=records,
                **admission,
            ),
            sessions=Sessions(
                tracker=tracker, records=records, model_url="http://127.0.0.1:9", http=http
            ),
            model=ModelServer(url="http://127.0.0.1:9", upstream=pool, http=http),
            watchdog=Watchdog(),
            fallback=_no_fallback,
            limits=Limits(max_body_bytes=1000),
        )
        yield Rig(
            model=model, pipeline=pipeline, lifecycle=lifecycle, tracker=tracker, signer=signer
        )


async def test_a_bad_signature_never_reaches_the_backend(signer: RouterSigner) -> None:
    async with rig(signer) as r:
        forged = {**r.auth(), "cost": 99}
        assert await r.post({"auth_data": forged, "payload": PAYLOAD}) == (
            401,
            {"error": "invalid signature"},
        )
        status, _ = await r.post({"auth_data": forged, "payload": {"not": "valid"}})
        assert status == 401
        assert r.model.parsed == []
        assert r.model.ran == []


async def test_a_refused_request_does_not_use_up_its_number(signer: RouterSigner) -> None:
    async with rig(signer) as r:
        auth = r.auth()
        status, body = await r.post({"auth_data": auth, "payload": {"work": 1}})
        assert (status, body) == (422, {"payload": {"prompt": "missing parameter"}})
        assert await r.post({"auth_data": auth, "payload": PAYLOAD}) == (200, {"echo": "hi"})
        # Accepted: now it is used up.
        status, body = await r.post({"auth_data": auth, "payload": PAYLOAD})
        assert status == 401
        assert "replayed" in body["error"]
        assert len(r.model.ran) == 1


async def test_an_overloaded_request_does_not_use_up_its_number(signer: RouterSigner) -> None:
    async with rig(signer, max_queue_time=1.0) as r:
        # 10 units/s of capacity: a second request of 10 waits 2 s behind the first.
        r.model.gate = release = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.post, {"auth_data": r.auth(), "payload": PAYLOAD})
            await r.model.started.wait()
            auth = r.auth()
            assert (await r.post({"auth_data": auth, "payload": PAYLOAD}))[0] == 429
            release.set()
        assert await r.post({"auth_data": auth, "payload": PAYLOAD}) == (200, {"echo": "hi"})


async def test_state_is_checked_after_the_signature_and_before_the_payload(
    signer: RouterSigner,
) -> None:
    async with rig(signer, state=State.LOADING) as r:
        forged = {**r.auth(), "reqnum": 0}
        assert (await r.post({"auth_data": forged, "payload": PAYLOAD}))[0] == 401
        status, body = await r.post({"auth_data": r.auth(), "payload": {"bad": True}})
        assert (status, body) == (503, {"error": "model is loading", "state": "loading"})
        assert r.model.parsed == []


@pytest.mark.parametrize(
    ("body", "method", "status"),
    [
        (b"{}", "GET", 405),
        (b"x" * 2000, "POST", 413),
        (b"{not json", "POST", 400),
        (b"[1]", "POST", 422),
        (b"{}", "POST", 422),
        (b'{"auth_data": {"signature": "x"}, "payload": {}}', "POST", 422),
    ],
)
async def test_early_stages_answer_before_any_backend_code(
    signer: RouterSigner, body: bytes, method: str, status: int
) -> None:
    async with rig(signer) as r:
        assert (await r.post(body, method=method))[0] == status
        assert r.model.parsed == []
        assert r.tracker.in_flight == 0


async def test_outcomes_are_recorded(signer: RouterSigner) -> None:
    async with rig(signer) as r:
        assert (await r.post({"auth_data": r.auth(), "payload": PAYLOAD}))[0] == 200
        r.model.status = 500
        assert (await r.post({"auth_data": r.auth(), "payload": PAYLOAD}))[0] == 500
        totals = r.tracker.totals(trio.current_time())
        # Only the successful answer is work done; both arrived, neither was cancelled.
        assert (totals.accepted, totals.received, totals.completed) == (2, 20.0, 10.0)
        assert totals.cancelled == 0.0
        assert r.tracker.in_flight == 0


@attrs.define
class LeavingClient:
    """An ASGI client that sends one whole request to ``/generate``, then leaves once
    :attr:`gone` is set; nothing may be sent to it."""

    body: bytes
    gone: trio.Event = attrs.Factory(trio.Event)
    scope: dict[str, Any] = attrs.Factory(
        lambda: {"type": "http", "path": "/generate", "method": "POST", "headers": []}
    )
    _sent: bool = False

    async def receive(self) -> Message:
        if not self._sent:
            self._sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        raise AssertionError("nothing is sent to a client that left")


async def test_a_client_that_leaves_cancels_its_request(signer: RouterSigner) -> None:
    async with rig(signer) as r:
        r.model.gate = trio.Event()  # never set: the model server is still at it
        client = LeavingClient(json.dumps({"auth_data": r.auth(), "payload": PAYLOAD}).encode())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.pipeline, client.scope, client.receive, client.send)
            await r.model.started.wait()
            client.gone.set()
        assert r.tracker.in_flight == 0
        totals = r.tracker.totals(trio.current_time())
        # Received, then cancelled: no load is left, and no work was done.
        assert (totals.received, totals.cancelled, totals.completed) == (10.0, 10.0, 0.0)


async def test_a_client_that_leaves_while_queued_never_reaches_the_model(
    signer: RouterSigner,
) -> None:
    async with rig(signer, parallel=False) as r:
        r.model.gate = release = trio.Event()  # the first request holds the only turn
        client = LeavingClient(json.dumps({"auth_data": r.auth(), "payload": PAYLOAD}).encode())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.post, {"auth_data": r.auth(), "payload": PAYLOAD})
            await r.model.started.wait()
            nursery.start_soon(r.pipeline, client.scope, client.receive, client.send)
            await trio.testing.wait_all_tasks_blocked()
            assert r.tracker.in_flight == 2  # admitted, waiting for its turn
            client.gone.set()
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert len(r.model.ran) == 1
        assert r.tracker.totals(trio.current_time()).cancelled == 10.0


async def one_queued_behind_another(r: Rig, event: Trigger) -> list[tuple[int, Any]]:
    """Two requests to a one-at-a-time model: the first holds the turn while ``event`` is
    fired, with the second admitted and waiting; then the first is let go. Both answers."""
    r.model.gate = release = trio.Event()
    answers: list[tuple[int, Any]] = []

    async def post() -> None:
        answers.append(await r.post({"auth_data": r.auth(), "payload": PAYLOAD}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post)
        await r.model.started.wait()
        nursery.start_soon(post)
        await trio.testing.wait_all_tasks_blocked()
        assert r.tracker.in_flight == 2  # the second waits for its turn
        assert r.lifecycle.fire(event, now=1.0, reason="r")
        release.set()
    return answers


@pytest.mark.parametrize("leave", [Trigger.STALLED, Trigger.MODEL_FAILED, Trigger.MODEL_RESTARTED])
async def test_a_queued_request_is_refused_at_its_turn_once_the_model_is_not_served(
    signer: RouterSigner, leave: Trigger
) -> None:
    async with rig(signer, parallel=False) as r:
        answers = await one_queued_behind_another(r, leave)
        assert len(r.model.ran) == 1  # the queued one never reached the model server
        refused = answers[1]
        assert refused[0] == 503
        assert refused[1]["state"] == r.lifecycle.current.value
        assert r.tracker.in_flight == 0


async def test_a_queued_request_is_still_served_while_draining(signer: RouterSigner) -> None:
    async with rig(signer, parallel=False) as r:
        answers = await one_queued_behind_another(r, Trigger.SHUTDOWN)
        assert [status for status, _ in answers] == [200, 200]
        assert len(r.model.ran) == 2
