"""Sending the load: requests arrive on a fixed schedule (open loop), each routed and sent as
Vast's client does, and each ends in a :class:`~._tally.Result`.

With a rate, request ``i`` arrives at ``i / rps`` seconds whatever the answers do, as the
original ``test_load`` started a client every ``1/rps`` s; without one, requests go out as fast
as the concurrency cap lets them (closed loop). A request that arrives while ``concurrency``
requests are in flight waits for a slot ("queued"); its latency still counts from its arrival,
so a worker that answers slowly shows in every request it held back (no coordinated omission),
and the wait is reported on its own too.
"""

from __future__ import annotations

import random
from functools import partial

import attrs
import httpx
import trio

from ..devtools import (
    CallWatcher,
    Patience,
    Retry,
    RouteError,
    Target,
    WorkerError,
    call_endpoint,
)
from ._requests import RequestMaker
from ._tally import Outcome, Phase, Result, Tally

__all__ = ["LoadPlan", "run_load"]


def _positive_or_none(
    _: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.frozen(kw_only=True)
class LoadPlan:
    """How much load, how fast.

    Attributes:
        requests: requests to send at most.
        rps: arrivals per second (open loop); None: as fast as ``concurrency`` allows.
        concurrency: requests in flight at most.
        timeout: seconds each request may take in all: routing, polls, re-routes, answer.
        duration: stop sending new requests after this many seconds (None: no limit).
        seed: seeds the payload generator, so two runs send the same payloads.
    """

    requests: int = attrs.field(validator=attrs.validators.ge(1))
    rps: float | None = attrs.field(default=None, validator=_positive_or_none)
    concurrency: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    duration: float | None = attrs.field(default=None, validator=_positive_or_none)
    seed: int = 0


class _Watcher(CallWatcher):
    """Follows one request: moves it between phases in the tally and times its answer."""

    def __init__(self, tally: Tally, arrived: float, sent: float) -> None:
        self.tally = tally
        self.arrived = arrived
        self.sent = sent
        self.phase = Phase.ROUTING
        self.url = ""
        self.routed_at: float | None = None
        self.status = 0
        self.streamed = False
        self.first_byte: float | None = None
        self.last_byte = 0.0
        self.gaps: list[float] = []

    def _enter(self, phase: Phase) -> None:
        if phase is not self.phase:
            self.tally.move(self.phase, phase)
            self.phase = phase

    def routing(self, request_idx: int) -> None:
        self._enter(Phase.ROUTING)

    def routed(self, url: str, request_idx: int) -> None:
        self.url = url
        self.status = 0
        if self.routed_at is None:
            self.routed_at = trio.current_time()
        self.tally.route_to(url)
        self._enter(Phase.FETCHING)

    def answered(self, status: int, streamed: bool) -> None:
        self.status = status
        self.streamed = streamed
        self.first_byte = None
        self.gaps = []

    def chunk(self, data: bytes) -> None:
        now = trio.current_time()
        if self.first_byte is None:
            self.first_byte = now
        else:
            self.gaps.append(now - self.last_byte)
        self.last_byte = now

    def retrying(self, retry: Retry) -> None:
        self.tally.retry(retry)

    def result(
        self,
        index: int,
        workload: float,
        outcome: Outcome,
        *,
        retries: tuple[Retry, ...] = (),
        error: str = "",
    ) -> Result:
        """The request's result, ending now."""
        now = trio.current_time()
        ttfb = None
        if self.streamed and outcome is Outcome.OK and self.first_byte is not None:
            ttfb = self.first_byte - self.arrived
        return Result(
            index=index,
            arrived_at=self.arrived - self.tally.started,
            queued=self.sent - self.arrived,
            latency=now - self.arrived,
            outcome=outcome,
            workload=workload,
            status=self.status,
            worker=self.url,
            routing=None if self.routed_at is None else self.routed_at - self.sent,
            streamed=self.streamed,
            ttfb=ttfb,
            gaps=() if ttfb is None else tuple(self.gaps),
            retries=retries,
            error=error,
        )


async def _request(
    index: int,
    payload: object,
    workload: float,
    arrived: float,
    *,
    plan: LoadPlan,
    maker: RequestMaker,
    target: Target,
    http: httpx.AsyncClient,
    patience: Patience,
    tally: Tally,
) -> None:
    """Send one request (its slot taken) and put how it ended in the tally."""
    tally.send()
    watcher = _Watcher(tally, arrived, trio.current_time())
    cost = int(workload) if float(workload).is_integer() else workload
    try:
        with trio.move_on_after(plan.timeout):
            try:
                answer = await call_endpoint(
                    http,
                    target,
                    maker.route,
                    payload,
                    cost=cost,
                    patience=patience,
                    watcher=watcher,
                )
            except RouteError as exc:
                result = watcher.result(index, workload, Outcome.ROUTE_ERROR, error=str(exc))
            except WorkerError as exc:
                watcher.url = exc.url
                result = watcher.result(
                    index, workload, Outcome.CONNECTION_ERROR, retries=exc.retries, error=str(exc)
                )
            else:
                outcome = Outcome.OK if 200 <= answer.status < 300 else Outcome.HTTP_ERROR
                result = watcher.result(index, workload, outcome, retries=answer.retries)
            tally.end(result, watcher.phase, trio.current_time())
            return
        timeout = f"no answer within {plan.timeout:g} s"
        result = watcher.result(index, workload, Outcome.TIMEOUT, error=timeout)
    except trio.Cancelled:
        # Stopped by the user: the request stays in the figures, as cancelled.
        result = watcher.result(index, workload, Outcome.CANCELLED)
        tally.end(result, watcher.phase, trio.current_time())
        raise
    tally.end(result, watcher.phase, trio.current_time())


async def run_load(
    plan: LoadPlan,
    maker: RequestMaker,
    target: Target,
    http: httpx.AsyncClient,
    *,
    patience: Patience,
    tally: Tally,
) -> None:
    """Send the load; return once every request sent has ended.

    Cancel it to stop early: requests in flight end as :attr:`Outcome.CANCELLED`, and those
    still waiting for a slot are dropped (never sent, never counted).

    Args:
        plan: how much, how fast.
        maker: makes the payloads.
        target: where they are routed.
        http: the client (its timeouts bound each read; ``plan.timeout`` each request).
        patience: polls and re-routes.
        tally: receives the counts and results; its ``started`` is set to now.
    """
    rng = random.Random(plan.seed)
    slots = trio.CapacityLimiter(plan.concurrency)
    start = trio.current_time()
    tally.started = start
    request = partial(
        _request,
        plan=plan,
        maker=maker,
        target=target,
        http=http,
        patience=patience,
        tally=tally,
    )

    async def queued(index: int, payload: object, workload: float, arrived: float) -> None:
        try:
            await slots.acquire_on_behalf_of(index)
        except trio.Cancelled:
            tally.phases[Phase.QUEUED] -= 1
            raise
        await sent(index, payload, workload, arrived)

    async def sent(index: int, payload: object, workload: float, arrived: float) -> None:
        try:
            await request(index, payload, workload, arrived)
        finally:
            slots.release_on_behalf_of(index)

    async with trio.open_nursery() as nursery:
        for index in range(plan.requests):
            if plan.rps is None:
                # Closed loop: the next request waits here for a slot.
                await slots.acquire_on_behalf_of(index)
                arrived = trio.current_time()
            else:
                # Open loop: it arrives on the schedule, however late this loop wakes.
                arrived = start + index / plan.rps
                await trio.sleep_until(arrived)
            if plan.duration is not None and trio.current_time() - start >= plan.duration:
                if plan.rps is None:
                    slots.release_on_behalf_of(index)
                break
            payload, workload = maker.make(rng)
            tally.arrive()
            run = queued if plan.rps is not None else sent
            nursery.start_soon(run, index, payload, workload, arrived)
