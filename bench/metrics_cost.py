"""Micro-benchmark: what ``/metrics`` costs a proxied request on the hot path.

``python -m bench.metrics_cost [--requests N] [--rounds N]``

Two timings in the same run, CPU time per request, the best of ``--rounds``:

* ``pipeline``: one signed request through the whole in-process pipeline (the ASGI app the
  worker serves: body, envelope, signature, admission, a backend ``run`` answering at once,
  the relay), with no sockets, so that the worker's own work is all that is measured: the
  baseline;
* ``metrics``: the bookkeeping that request does for ``/metrics`` alone: its status counted,
  its duration and first byte timed (:class:`~pyworker._metrics.RequestMetrics`), and the
  first-byte note on each of its two ASGI messages.

The ratio metrics / pipeline is the share of a request's CPU that the metrics take; a real
request also pays for two sockets and the model server's answer, so its share is smaller still.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from random import Random
from typing import Any

import httpx
import trio

from pyworker import Backend, Endpoint, Job, Reply, RunContext
from pyworker._admission import Admission
from pyworker._auth import Authenticator
from pyworker._lifecycle import Trigger
from pyworker._load import LoadTracker
from pyworker._machine import Lifecycle
from pyworker._metrics import RequestMetrics
from pyworker._model import ModelServer
from pyworker._pipeline import Pipeline, _FirstByte
from pyworker._records import RequestLog
from pyworker._sessions import Sessions
from pyworker._typing import Message
from pyworker._upstream import UpstreamPool
from pyworker._watchdog import Watchdog
from pyworker.devtools import RouterSigner

URL = "http://127.0.0.1:41234"


def _parse(payload: object) -> Job:
    return Job(workload=10.0, body=json.dumps(payload).encode(), upstream_path="/x")


def _payload(rng: Random) -> object:
    return {}


async def _run(job: Job, context: RunContext) -> Reply:
    return Reply.json({"ok": True})


async def _no_fallback(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("only the proxied route")


async def _discard(message: Message) -> None:
    pass


class _Client:
    """One request's ``receive``: the body, then a client that waits for its answer."""

    def __init__(self, body: bytes) -> None:
        self._pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive(self) -> Message:
        if self._pending:
            return self._pending.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def time_pipeline(requests: int, signer: RouterSigner) -> float:
    """Seconds of CPU per request through the in-process pipeline."""
    backend = Backend(
        name="bench",
        model_server_url="http://127.0.0.1:9",
        endpoints=(
            Endpoint(route="/generate", parse=_parse, benchmark_payload=_payload, run=_run),
        ),
        benchmark_route="/generate",
        log_rules=(),
    )
    lifecycle = Lifecycle(started_at=0.0)
    lifecycle.fire(Trigger.MODEL_LOADED, now=0.0)
    lifecycle.fire(Trigger.BENCHMARK_DONE, now=0.0, max_perf=1e9)
    authenticator = Authenticator(own_url=URL)
    authenticator.set_public_key(signer.public_pem())
    tracker = LoadTracker(now=trio.current_time())
    records = RequestLog()
    # One 2025 signature for every request, as the newest router sends (verified once).
    auth = signer.sign_2025(URL, cost=10, endpoint="e", reqnum=1)
    body = json.dumps({"auth_data": auth, "payload": {"prompt": "hi"}}).encode()
    scope = {"type": "http", "path": "/generate", "method": "POST", "headers": []}
    async with httpx.AsyncClient() as http, UpstreamPool(host="127.0.0.1", port=9) as pool:
        pipeline = Pipeline(
            backend=backend,
            lifecycle=lifecycle,
            authenticator=authenticator,
            admission=Admission(tracker=tracker, capacity=lambda: 1e9, records=records),
            sessions=Sessions(tracker=tracker, records=records, model_url=URL, http=http),
            model=ModelServer(url=URL, upstream=pool, http=http),
            watchdog=Watchdog(),
            fallback=_no_fallback,
        )
        started = time.process_time()
        for _ in range(requests):
            await pipeline(scope, _Client(body).receive, _discard)
        return (time.process_time() - started) / requests


async def time_metrics(requests: int) -> float:
    """Seconds of CPU per request of the metrics' own bookkeeping."""
    metrics = RequestMetrics()
    start = {"type": "http.response.start", "status": 200, "headers": []}
    end = {"type": "http.response.body", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        pass

    started = time.process_time()
    for _ in range(requests):
        timed = _FirstByte(send)
        await timed(start)
        await timed(end)
        metrics.answered("/generate", 200)
        now = trio.current_time()
        metrics.timed("/generate", now - 1.0, None if timed.at is None else timed.at - 1.0)
    return (time.process_time() - started) / requests


async def _main(requests: int, rounds: int) -> None:
    signer = await RouterSigner.create()
    pipeline = min([await time_pipeline(requests, signer) for _ in range(rounds)])
    metrics = min([await time_metrics(requests) for _ in range(rounds)])
    print(f"{'case':<10} {'us/request':>11} {'share':>8}")
    print(f"{'pipeline':<10} {pipeline * 1e6:>11.2f} {'1':>8}")
    print(f"{'metrics':<10} {metrics * 1e6:>11.2f} {metrics / pipeline:>8.4f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    trio.run(_main, args.requests, args.rounds)


if __name__ == "__main__":
    main()
