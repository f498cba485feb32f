"""What a request really cost, next to its estimate: the mechanism every backend shares.

An answer says what it cost through an :class:`~pyworker.Observer` (the endpoint's, or the
job's own in its place), which reads the body and, optionally, the headers; or, for a backend's
own ``run``, in :attr:`~pyworker.Reply.actual`. A refused answer (status 400 and above) is never
work done. The backends' own observers are tested with their fakes (``test_backend_*.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from fakes import unused_http
from harness import eventually, ready_stack

from backends._fakekit import HTTPServer, Request, Response, StreamResponse
from pyworker import Endpoint, Job, Reply, RunContext, UsageObserver, estimate_tokens, load_backend
from pyworker._load import Outcome, OutcomeKind
from pyworker._model import ModelServer, observe, send_job
from pyworker._records import RecordStatus
from pyworker._relay import relay
from pyworker._typing import Message
from pyworker._upstream import UpstreamPool

GUARD = 30  # seconds: the absolute bound on each test
USAGE = {"usage": {"prompt_tokens": 5, "completion_tokens": 2}}


class HeaderCounts:
    """An observer of counts in the headers (as TGI's ``/generate`` reports them)."""

    def __init__(self) -> None:
        self.actual: float | None = None
        self.chunks = 0

    def head(self, headers: list[tuple[bytes, bytes]]) -> None:
        counts = dict(headers)
        if b"x-work" in counts:
            self.actual = float(counts[b"x-work"])

    def feed(self, chunk: bytes) -> None:
        self.chunks += 1


def _usage() -> UsageObserver:
    return UsageObserver(b'"usage"', ("prompt_tokens", "completion_tokens"))


def _endpoint(**changes: Any) -> Endpoint:
    job = Job(workload=100, body=b"{}", upstream_path="/generate")
    return Endpoint(route="/generate", parse=lambda payload: job, **changes)


async def _exchange(
    nursery: trio.Nursery, endpoint: Endpoint, job: Job, response: Response | StreamResponse
) -> Outcome:
    """Send ``job`` to a model server that answers ``response``, and relay the answer, as the
    pipeline's stages 8 and 9 do."""

    async def handle(request: Request) -> Response | StreamResponse:
        return response

    port: int = await nursery.start(HTTPServer(handle).serve)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async with UpstreamPool(host="127.0.0.1", port=port) as pool, unused_http() as http:
        model = ModelServer(url=f"http://127.0.0.1:{port}", upstream=pool, http=http)
        answer = await send_job(endpoint, job, model)
        try:
            return await relay(answer, send, observer=observe(endpoint, job, answer))
        finally:
            await answer.aclose()


async def test_the_endpoints_observer_reads_body_and_headers(nursery: trio.Nursery) -> None:
    endpoint = _endpoint(observe=_usage)
    job = endpoint.parse({})
    with trio.fail_after(GUARD):
        outcome = await _exchange(nursery, endpoint, job, Response.json(USAGE))
        assert outcome == Outcome.answered(200, 7.0)
        # Counts in the headers: an observer with a head() is shown them before any chunk.
        counted = _endpoint(observe=HeaderCounts)
        answer = Response.json({"ok": True}, status=201)
        answer = attrs.evolve(answer, headers=((b"x-work", b"12"),))
        assert await _exchange(nursery, counted, job, answer) == Outcome.answered(201, 12.0)
        # Nothing reported: the estimate stands.
        silent = await _exchange(nursery, endpoint, job, Response.json({"ok": True}))
        assert silent == Outcome.answered(200, None)


async def test_a_jobs_own_observer_takes_the_endpoints_place(nursery: trio.Nursery) -> None:
    endpoint = _endpoint(observe=_usage)
    headers = ((b"x-work", b"40"),)
    job = attrs.evolve(endpoint.parse({}), observe=HeaderCounts)
    with trio.fail_after(GUARD):
        answer = attrs.evolve(Response.json(USAGE), headers=headers)
        assert await _exchange(nursery, endpoint, job, answer) == Outcome.answered(200, 40.0)
        # A job whose answer cannot tell its whole cost: an observer that reports nothing
        # leaves the estimate standing, whatever the endpoint's would have read.
        blind = attrs.evolve(job, observe=lambda: HeaderCounts())
        outcome = await _exchange(nursery, endpoint, blind, Response.json(USAGE))
        assert outcome == Outcome.answered(200, None)


async def test_a_refused_answer_is_never_work_done(nursery: trio.Nursery) -> None:
    made: list[HeaderCounts] = []

    def make() -> HeaderCounts:
        made.append(HeaderCounts())
        return made[-1]

    endpoint = _endpoint(observe=make)
    job = endpoint.parse({})
    refused = attrs.evolve(Response.json(USAGE, status=422), headers=((b"x-work", b"9"),))
    with trio.fail_after(GUARD):
        outcome = await _exchange(nursery, endpoint, job, refused)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.actual is None
    assert made == []  # not even observed


class ErrorEvents:
    """An observer that reports an error event (as the backends' stream observers do)."""

    def __init__(self) -> None:
        self.actual: float | None = None
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        if b'{"error":' in chunk:
            self.error = "an error event"


async def _events(*events: bytes) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def test_an_error_event_in_a_2xx_stream_is_no_work_done(nursery: trio.Nursery) -> None:
    endpoint = _endpoint(observe=ErrorEvents)
    job = endpoint.parse({})
    token = b'data:{"index":1,"token":{"text":"hi"}}\n\n'
    error = b'data:{"error":"Incomplete generation stream","error_type":"incomplete"}\n\n'
    with trio.fail_after(GUARD):
        cut = StreamResponse(chunks=_events(token, error), content_type=b"text/event-stream")
        outcome = await _exchange(nursery, endpoint, job, cut)
        # Relayed as it came (status 200, no error of the worker's own: a Success record),
        # but it did no work that counts.
        assert outcome == Outcome(kind=OutcomeKind.FAILED, status=200)
        assert RecordStatus.of(outcome) is RecordStatus.SUCCESS
        whole = StreamResponse(chunks=_events(token, token), content_type=b"text/event-stream")
        assert await _exchange(nursery, endpoint, job, whole) == Outcome.answered(200, None)


def _seen(*chunks: bytes) -> float | None:
    observer = _usage()
    for chunk in chunks:
        observer.feed(chunk)
    return observer.actual


# Running usage on every event (vLLM's continuous_usage_stats).
_RUNNING = (
    b'data: {"usage":{"prompt_tokens":5,"completion_tokens":9}}\n\n'
    b'data: {"usage":{"prompt_tokens":5,"completion_tokens":12}}\n\n'
)


@pytest.mark.parametrize("cut", range(len(_RUNNING) + 1))
def test_usage_is_seen_across_any_two_reads_of_a_stream(cut: int) -> None:
    """The last report counts wherever a read ends: inside a number (``1`` of ``12``), or
    inside the marker of a report that follows a complete one."""
    stream = _RUNNING
    assert _seen(stream[:cut], stream[cut:]) == 17
    assert _seen(stream[:cut]) in {None, 14.0, 17.0}  # never a number cut short (5 + 1)


def test_reply_actual_is_a_workload_or_none() -> None:
    assert Reply.json({"ok": True}).actual is None
    assert Reply.json({"ok": True}, actual=3).actual == 3
    assert Reply(status=200, body=b"", actual=0.0).actual == 0.0
    with pytest.raises(TypeError, match="actual must be a number"):
        Reply(status=200, body=b"", actual=True)
    with pytest.raises(TypeError, match="actual must be a number"):
        Reply(status=200, body=b"", actual="5")  # type: ignore[arg-type]  # the wrong type is the test
    for bad in (-1.0, math.nan, math.inf, 1e13):
        with pytest.raises(ValueError, match="actual must be within"):
            Reply(status=200, body=b"", actual=bad)


async def test_a_runs_reply_carries_its_actual_workload(nursery: trio.Nursery) -> None:
    async def run(job: Job, context: RunContext) -> Reply:
        return Reply.json({"images": []}, actual=17.5)

    async def failing(job: Job, context: RunContext) -> Reply:
        return Reply.json({"error": "no"}, status=500, actual=17.5)

    endpoint = _endpoint(run=run)
    job = endpoint.parse({})
    with trio.fail_after(GUARD):
        outcome = await _exchange(nursery, endpoint, job, Response())
        assert outcome == Outcome.answered(200, 17.5)
        outcome = await _exchange(nursery, _endpoint(run=failing), job, Response())
        assert outcome.kind is OutcomeKind.FAILED
        assert outcome.actual is None


# -- end to end: the worker counts the actual workload as the work done -----------------------
async def _proxied_run(job: Job, context: RunContext, *, actual: float, status: int) -> Reply:
    """A ``run`` that asks the demo server and answers with ``actual`` as the work done."""
    response = await context.http.post(context.model_server_url + "/generate", content=job.body)
    return Reply.json(response.json(), status=status, actual=actual)


def _run_backend(*, actual: float, status: int = 200) -> Any:
    backend = load_backend("hello_world")
    run = partial(_proxied_run, actual=actual, status=status)
    endpoints = tuple(
        attrs.evolve(e, run=run) if e.route == "/generate" else e for e in backend.endpoints
    )
    return attrs.evolve(backend, endpoints=endpoints)


async def _completed(stack: Any) -> float:
    """The work done the worker has counted, once nothing is in flight."""
    tracker = stack.worker.tracker
    with trio.fail_after(5):
        await eventually(lambda: not tracker.in_flight, what="nothing in flight")
    completed: float = tracker.totals(trio.current_time()).completed
    return completed


async def test_the_worker_counts_a_runs_actual_workload(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, backend=_run_backend(actual=33.0))
        body = {"prompt": "hello there", "max_response_tokens": 8}
        response = await stack.post("/generate", body)
        assert response.status_code == 200, response.text
        assert response.json()["generated_tokens"] == 8
        assert await _completed(stack) == 33.0
        # The other route relays as it comes: the demo server's counts are its actual work.
        streamed = await stack.post("/generate_stream", body)
        assert streamed.status_code == 200
        assert await _completed(stack) == 33.0 + estimate_tokens("hello there") + 8


async def test_a_failed_runs_actual_workload_is_not_counted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = _run_backend(actual=33.0, status=503)
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, backend=backend)
        response = await stack.post("/generate", {"prompt": "hi", "max_response_tokens": 4})
        assert response.status_code == 503
        assert json.loads(response.content)["generated_tokens"] == 4
        assert await _completed(stack) == 0.0


async def test_hello_world_counts_what_the_demo_model_generated(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The demo model stops after 3 tokens of the 40 asked: its JSON answer's counts and its
    stream's final ``done`` event say so, and that is the work done."""
    with trio.fail_after(GUARD):
        stack = await ready_stack(nursery, tmp_path, "--eos-after", "3")
        prompt = "Tell me a story about a brave little toaster."
        body = {"prompt": prompt, "max_response_tokens": 40}
        estimate = load_backend("hello_world").endpoint("/generate").parse(body).workload
        actual = estimate_tokens(prompt) + 3
        assert actual < estimate
        answer = await stack.post("/generate", body)
        assert answer.json()["generated_tokens"] == 3
        assert await _completed(stack) == actual
        streamed = await stack.post("/generate_stream", body)
        assert streamed.content.endswith(b'"generated_tokens": 3}\n\n')
        assert await _completed(stack) == 2 * actual
