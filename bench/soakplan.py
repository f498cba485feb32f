"""What the fault soak does, and when: its settings, its fault schedule, its record of a fault.

The fake model it runs and the load's mix of clients, the intervals of its observers and the
bounds it judges by (constants); when each fault is injected and for how long
(:class:`Schedule`); one fault as it happened (:class:`Fault`). The scenario (``bench/soak.py``)
describes what they mean. They live apart from it so that the runner and the report, which the
scenario imports, read them without importing the scenario.
"""

from __future__ import annotations

import math

import attrs

SEED = 7
FAKE_ARGS = ("--load-delay", "1", "--token-rate", "400", "--seed", str(SEED))
FAKE_MODULE = "backends.hello_world.server"
CLIENTS = {
    "json": 3,
    "stream": 3,
    "abort": 1,
    "bad-payload": 1,
    "bad-signature": 1,
    "conn-per-request": 2,
}
THINK = {
    "json": 0.15,
    "stream": 0.2,
    "abort": 0.3,
    "bad-payload": 0.5,
    "bad-signature": 0.5,
    "conn-per-request": 0.25,
}
TOKENS = (4, 32)
ABORT_TOKENS = (40, 80)
STATUS_INTERVAL = 0.1
SAMPLE_INTERVAL = 0.5
PROBE_INTERVAL = 0.1
CANARY_TIMEOUT = 3.0
SETTLE = 2.0
"""After a new model log appears, how long the worker may take to show it in ``/status``."""
IDLE_PROBE = 5.0
"""Seconds of /ping on the idle worker before the load: the loop-lag baseline."""
WARMUP = 5.0
"""Seconds of load before the "start" figures: short, so that sockets left in CLOSE-WAIT
(kept up to the 75 s keep-alive timeout) have not piled up yet."""
FLAT = 1.25


@attrs.frozen(kw_only=True)
class Schedule:
    """When each fault happens and how long it lasts (seconds from the start of the load)."""

    duration: float
    warmup: float
    kill_at: float
    restart_after: float
    hang_at: float
    hang_for: float
    scaler_at: float
    scaler_down: float
    log_at: float
    recover_within: float
    timeout: float

    @classmethod
    def for_run(cls, quick: bool) -> Schedule:
        """2 minutes (``--quick``) or 10, the faults at the same fractions of the run."""
        d = 120.0 if quick else 600.0
        # Longer than the worker's default stall limit (--stall-timeout 30): a shorter hang
        # cannot be told from a slow answer, so it would test nothing.
        hang_for = max(40.0, 0.075 * d)
        return cls(
            duration=d,
            warmup=WARMUP,
            kill_at=0.085 * d,
            restart_after=max(3.0, d / 60),
            hang_at=0.2 * d,
            hang_for=hang_for,
            scaler_at=0.55 * d,
            scaler_down=max(12.0, d / 20),
            log_at=0.73 * d,
            recover_within=max(12.0, 0.075 * d),
            timeout=hang_for + 15.0,
        )


@attrs.define(eq=False, kw_only=True)
class Fault:
    """One injected fault and what the worker showed of it (times: time.monotonic())."""

    key: str
    label: str
    model: bool
    """Whether it stops the model serving (requests during its window may fail)."""
    injected: float = math.nan
    lifted: float | None = None
    recovered: float | None = None
    recovered_how: str = ""
    repaired: str = ""
    late: float = 0.0

    def window_end(self, end: float) -> float:
        """Where its window ends (its recovery, else the end of the run)."""
        return self.recovered if self.recovered is not None else end
