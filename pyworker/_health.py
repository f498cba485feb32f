"""Poll the model server's health route once it is ready; mark the worker errored when it fails."""

from __future__ import annotations

import logging

import attrs
import trio

from ._lifecycle import State, Trigger
from ._upstream import UpstreamError, UpstreamPool
from ._watch import LifecycleWatch

log = logging.getLogger("pyworker.health")


@attrs.define(eq=False)
class HealthChecker:
    """Checks ``GET {path}`` every ``interval`` seconds while the worker is ready.

    A check fails on a connection error, a timeout or a status of 500 or more. After
    ``failures`` consecutive failures the lifecycle gets ``health_failed`` with the last reason.
    One failure alone is not enough: a model server busy with a long batch can miss one check.
    """

    upstream: UpstreamPool
    path: str
    watch: LifecycleWatch
    interval: float = 10.0
    timeout: float = 10.0
    failures: int = 3

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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run forever; ``task_status.started()`` at once."""
        task_status.started()
        lifecycle = self.watch.lifecycle
        while True:
            await self.watch.wait_state(State.READY)
            failed = 0
            # A restart can pass through loading and back to ready between two checks (a fast
            # load, a cached benchmark) without this task seeing it: the load count tells, so
            # the old server's failures are never held against the new one.
            load = lifecycle.loads_completed
            while lifecycle.current is State.READY and lifecycle.loads_completed == load:
                reason = await self.check_once()
                if lifecycle.current is not State.READY or lifecycle.loads_completed != load:
                    break  # the answer is about a model server that has been replaced
                if not reason:
                    failed = 0
                else:
                    failed += 1
                    log.warning(
                        "model server health check failed (%d/%d): %s",
                        failed,
                        self.failures,
                        reason,
                    )
                    if failed >= self.failures:
                        lifecycle.fire(
                            Trigger.HEALTH_FAILED,
                            now=trio.current_time(),
                            reason=f"model server unhealthy: {reason}",
                        )
                        break
                with trio.move_on_after(self.interval):
                    await self.watch.wait_leave(State.READY)
