"""Probe requests: the benchmark request, sent to learn whether the model server works.

A model server's log and its health route are hints; an answered request is proof. Two services
of the lifecycle table send probes:

* ``stall_probe``, in ``stalled``: at once, then every 5 s, each allowed the stall limit of a
  request sent alone; an answer means the model server works again.
* ``load_probe``, in ``loading`` and ``errored``: after a pause that grows (10 s, doubling up to
  5 min, back to 10 s once ready); an answer means the model is loaded, whatever its log said.
  It catches a log replaced under a model server that kept running (no ready line will come), a
  ready line the backend's rules do not know, and a model server that recovered by itself from
  what errored the worker. A model server still loading refuses the connection or answers 503,
  which costs nothing.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import attrs
import trio

from ._backend import Endpoint, Job
from ._model import ModelServer, send_job
from ._upstream import UpstreamError

log = logging.getLogger("pyworker.probe")

STALL_PROBE_PAUSE = 5.0
"""Seconds between two probes of a stalled model server."""
LOAD_PROBE_TIMEOUT = 120.0
"""Seconds a load probe may take: the first request after a load can be slow (lazy
initialisation, CUDA graph capture)."""


@attrs.define(eq=False, kw_only=True)
class Backoff:
    """Pauses that grow by ``factor`` from ``initial`` up to ``maximum``, until reset."""

    initial: float = attrs.field(validator=attrs.validators.gt(0))
    maximum: float
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    _next: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        """The next pause."""
        pause = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return pause

    def reset(self) -> None:
        """Start again from ``initial``."""
        self._next = self.initial


async def ask(endpoint: Endpoint, model: ModelServer, job: Job, *, within: float) -> str:
    """Send one probe; "" when it was answered in full with a status below 400, else why not."""
    with trio.move_on_after(within):
        try:
            answer = await send_job(endpoint, job, model)
            try:
                await answer.read()
            finally:
                await answer.aclose()
        except UpstreamError as exc:
            return str(exc)
        if answer.status < 400:
            return ""
        return answer.error or f"HTTP {answer.status}"
    return f"no answer within {round(within, 1):g} s"


async def probe(
    endpoint: Endpoint,
    model: ModelServer,
    *,
    within: Callable[[Job], float],
    pause: Callable[[], float],
    on_answered: Callable[[], object],
    waiting_for: str,
    first_at_once: bool = True,
    level: int = logging.WARNING,
) -> None:
    """Send ``endpoint``'s benchmark request until one is answered, then call
    ``on_answered`` and return.

    Args:
        endpoint: whose benchmark payload is sent.
        model: the model server.
        within: seconds a probe of this job may take.
        pause: seconds to wait before the next probe.
        on_answered: called once a probe is answered.
        waiting_for: what an answer would show, for the log ("works again").
        first_at_once: send the first probe at once (else after a pause).
        level: the log level of an unanswered probe.
    """
    make_payload = endpoint.benchmark_payload
    assert make_payload is not None
    rng = random.Random(0)
    attempt = 0
    if not first_at_once:
        await trio.sleep(pause())
    while True:
        attempt += 1
        job = endpoint.parse(make_payload(rng))
        why = await ask(endpoint, model, job, within=within(job))
        if not why:
            log.info("the model server answered a probe request: it %s", waiting_for)
            on_answered()
            return
        log.log(
            level,
            "probe %d unanswered (%s): the model server has not shown it %s",
            attempt,
            why,
            waiting_for,
        )
        await trio.sleep(pause())
