"""Poll the model server's health route while ready; mark the worker errored when it fails.

The same checks confirm an error line of the model server's log before a ready worker acts on
it (:meth:`HealthChecker.suspect`): a model server that logs requests puts clients' words in
its log, and however well the log rules are anchored, one line is weaker evidence than a
failed health check. A model server that still answers its health route after such a line
stays ready; the line is kept in the worker's own log.
"""

from __future__ import annotations

import logging

import attrs
import trio

from ._lifecycle import Trigger
from ._machine import Lifecycle
from ._upstream import UpstreamError, UpstreamPool

log = logging.getLogger("pyworker.health")


@attrs.define(eq=False, kw_only=True)
class HealthChecker:
    """Checks ``GET {path}`` every ``interval`` seconds.

    A check fails on a connection error, a timeout or a status of 500 or more. After
    ``failures`` consecutive failures the lifecycle gets ``health_failed`` with the last reason.
    One failure alone is not enough: a model server busy with a long batch can miss one check.
    A suspicion (:meth:`suspect`) is checked at once, and one failure then confirms it.
    """

    upstream: UpstreamPool
    path: str
    lifecycle: Lifecycle
    interval: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    failures: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    _suspicion: str = attrs.field(default="", init=False)
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False)
    _running: bool = attrs.field(default=False, init=False)

    def suspect(self, reason: str) -> bool:
        """Check now whether the model server failed as ``reason`` says (an error line in its
        log); on a failed check the lifecycle gets ``model_failed`` with ``reason``.

        Returns:
            False when no checks are running (not ready): the caller acts on its own evidence.
        """
        if not self._running:
            return False
        if not self._suspicion:
            self._suspicion = reason
        self._wake.set()
        return True

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
        self._running, self._suspicion = True, ""
        try:
            await self._run()
        finally:
            self._running = False

    async def _run(self) -> None:
        failed = 0
        while True:
            # Taken before the check, so that the check is later than the line it confirms; a
            # suspicion raised during the check wakes the next one at once.
            self._wake = trio.Event()
            suspicion, self._suspicion = self._suspicion, ""
            reason = await self.check_once()
            if suspicion and reason:
                log.error("health check confirms it (%s): %s", reason, suspicion)
                self.lifecycle.fire(Trigger.MODEL_FAILED, now=trio.current_time(), reason=suspicion)
                return
            if suspicion:
                log.warning(
                    "model server passes its health check after this error line, so it stays "
                    "ready (%s)",
                    suspicion,
                )
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
            with trio.move_on_after(self.interval):
                await self._wake.wait()
