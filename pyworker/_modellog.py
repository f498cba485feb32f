"""What the model server's log means to the lifecycle: the ``log_tail`` and ``load_timeout``
services.

The backend's rules classify each line: a ready line loads the model, an error line fails it
(while ready, only once a health check confirms it), other matches are just noted. A replaced or
truncated log is a new model server process. An error line may quote a client's words (servers
that log requests do), so it goes to the worker's own log only; ``error_msg``, which ``/status``,
503 bodies and reports show, names the rule's words instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import trio

from ._backend import Backend, LogAction
from ._health import HealthChecker
from ._lifecycle import Trigger
from ._logtail import LogTailer
from ._machine import Lifecycle

log = logging.getLogger("pyworker")

MAX_LINE = 2000
"""The most of one model log line the worker's own log repeats."""


@attrs.define(eq=False, kw_only=True)
class ModelLog:
    """Follows the model server's log for the lifecycle.

    Args:
        backend: whose rules classify the lines.
        lifecycle: what the lines move.
        path: the log file (None: no log; the services then do nothing).
        load_timeout: seconds a load may take before it errors the worker.
        health: confirms an error line while ready (None: the line alone decides).
    """

    backend: Backend
    lifecycle: Lifecycle
    path: Path | None
    load_timeout: float
    health: HealthChecker | None = None

    async def tail(self) -> None:
        """The ``log_tail`` service: follow the log (forever)."""
        if self.path is not None:
            await LogTailer(path=self.path).run(self.on_line, self.on_new_log)

    async def time_load(self) -> None:
        """The ``load_timeout`` service: error a load that has not ended in time."""
        await trio.sleep(self.load_timeout)
        self.lifecycle.fire(
            Trigger.LOAD_TIMED_OUT,
            now=trio.current_time(),
            reason=f"the model server did not log its ready line within "
            f"{self.load_timeout:g} s (is MODEL_LOG right?)",
        )

    def on_line(self, line: str) -> None:
        """Act on one complete line."""
        rule = self.backend.classify(line)
        if rule is None:
            return
        now = trio.current_time()
        text = line.strip()[:MAX_LINE]
        if rule.action is LogAction.MODEL_LOADED:
            self.lifecycle.fire(Trigger.MODEL_LOADED, now=now)
        elif rule.action is LogAction.MODEL_ERROR:
            log.error("model server logged an error: %s", text)
            reason = f"model server logged an error ({rule.substring or 'see the worker log'})"
            # While ready, a health check confirms it first (see HealthChecker.suspect).
            if self.health is None or not self.health.suspect(reason):
                self.lifecycle.fire(Trigger.MODEL_FAILED, now=now, reason=reason)
        else:
            log.info("model server: %s", text)

    def on_new_log(self) -> None:
        """The log was replaced or truncated: a new model server process."""
        log.info("model log was replaced or truncated: the model server restarted")
        self.lifecycle.fire(Trigger.MODEL_RESTARTED, now=trio.current_time())
