"""Poll the model server's health route while ready; mark the worker errored when it fails."""

from __future__ import annotations

import logging

import attrs
import trio

from ._lifecycle import Lifecycle, Trigger
from ._upstream import UpstreamError, UpstreamPool

log = logging.getLogger("pyworker.health")


@attrs.define(eq=False, kw_only=True)
class HealthChecker:
    """Checks ``GET {path}`` every ``interval`` seconds.

    A check fails on a connection error, a timeout or a status of 500 or more. After
    ``failures`` consecutive failures the lifecycle gets ``health_failed`` with the last reason.
    One failure alone is not enough: a model server busy with a long batch can miss one check.
    """

    upstream: UpstreamPool
    path: str
    lifecycle: Lifecycle
    interval: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    failures: int = attrs.field(default=3, validator=attrs.validators.ge(1))

    async def check_once(self) -> str:
        """One check; returns "" when healthy, else the reason."""
        try:
            with trio.fail_after(self.timeout):
                async with await self.upstream.request(b"GET", self.path.encode()) as response:
                    await response.read(limit=1 << 20)
        except trio.TooSlowError:
            return f"health check timed out after {self.timeout:g} s"
        except UpstreamError as exc:
            return str(exc)
        if response.status >= 500:
            return f"health check answered HTTP {response.status}"
        return ""

    async def run(self) -> None:
        """Check until the failures add up (then fire ``health_failed`` and return).

        Run it with :func:`pyworker._watch.run_in_states`: one run per stay in ``ready``, so
        a restarted model server never inherits the old one's failures, and an answer about a
        model server that has been replaced is never acted on (the run is cancelled first).
        """
        failed = 0
        while True:
            reason = await self.check_once()
            if not reason:
                failed = 0
            else:
                failed += 1
                log.warning(
                    "model server health check failed (%d/%d): %s", failed, self.failures, reason
                )
                if failed >= self.failures:
                    self.lifecycle.fire(
                        Trigger.HEALTH_FAILED,
                        now=trio.current_time(),
                        reason=f"model server unhealthy: {reason}",
                    )
                    return
            await trio.sleep(self.interval)
