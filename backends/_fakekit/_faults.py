"""Injected failures, the same in every fake: failed requests, hangs, crashes, slow health.

A fake decides *where* a failure strikes and *how* its server words it; this module decides
*whether* it strikes, so that ``--error-rate``, ``--hang-after``, ``--crash-after`` and
``--slow-health`` mean the same thing whichever fake they are given to. Progress is counted in
the fake's units: tokens for the LLM servers, sampler steps for ComfyUI.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable

import attrs
import trio

from ._capacity import Job

FaultLines = Callable[[int], object]
"""Logs a failure as the fake's server would, given the units done when it strikes."""


@attrs.define(eq=False)
class Faults:
    """The failure knobs in action (make one with :meth:`Knobs.faults`).

    Attributes:
        hang_after: a request stops making progress once it has done this many units; nothing
            is closed, so its client waits (None: never).
        crash_after: the process dies with exit status 1 once a request has done this many
            units, without any cleanup, as a crashing engine does (None: never).
        error_rate: the fraction of requests that fail (see :meth:`fail_request`).
        slow_health: seconds the health route takes to answer.
        seed: seeds which requests fail: the same seed fails the same requests.
    """

    hang_after: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )
    crash_after: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )
    error_rate: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    slow_health: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    seed: int = 0
    _draws: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Its own generator, so that injected errors do not shift the generated text.
        self._draws = random.Random(f"errors:{self.seed}")

    def fail_request(self) -> bool:
        """Whether the request at hand fails (``--error-rate``).

        Each call is one draw from a generator seeded by ``--seed``: the n-th request asked
        about fails or not the same way in every run.
        """
        return bool(self.error_rate) and self._draws.random() < self.error_rate

    async def health_delay(self) -> None:
        """Take ``--slow-health`` seconds, before the health route answers."""
        if self.slow_health:
            await trio.sleep(self.slow_health)

    def until_fault(self, done: int, wanted: int) -> int:
        """How many units to produce next: all that are left, up to the next failure point.

        A fake that produces units in batches stops each batch here, so that the failure
        strikes after exactly ``--hang-after`` or ``--crash-after`` units.
        """
        limit = wanted - done
        for point in (self.hang_after, self.crash_after):
            if point is not None and point > done:
                limit = min(limit, point - done)
        return limit

    async def fail_point(
        self,
        done: int,
        *,
        on_crash: FaultLines,
        on_hang: FaultLines,
        hang_until: Callable[[], Awaitable[object]] = trio.sleep_forever,
    ) -> None:
        """Crash or hang here if a knob says so for a request that has done ``done`` units.

        Call it before each unit (or batch) and once after the last: a crash comes before a
        hang at the same point.

        Args:
            done: units the request has produced so far.
            on_crash: logs the server's last words; the process then exits with status 1
                (``os._exit``: no ``finally`` runs, no connection is closed properly).
            on_hang: logs the hang, which lasts until ``hang_until`` returns.
            hang_until: what ends a hang (by default nothing: it lasts until cancelled).
        """
        if done == self.crash_after:
            on_crash(done)
            os._exit(1)
        if done == self.hang_after:
            on_hang(done)
            await hang_until()

    async def produce(
        self, job: Job, done: int, wanted: int, *, on_crash: FaultLines, on_hang: FaultLines
    ) -> int:
        """Wait for the next units of ``job``, stopping at failure points; returns how many.

        Use as ``while count := await faults.produce(job, done, wanted, ...): done += count``:
        it returns 0 once ``wanted`` units are done, after their last failure point.

        Args:
            job: the request's share of the capacity model.
            done: units produced so far.
            wanted: units the request produces in all.
            on_crash: see :meth:`fail_point`.
            on_hang: see :meth:`fail_point`.
        """
        await self.fail_point(done, on_crash=on_crash, on_hang=on_hang)
        if done >= wanted:
            return 0
        return await job.serve_some(self.until_fault(done, wanted))
