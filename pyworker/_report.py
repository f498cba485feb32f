"""Load reports, sans-IO: the ``POST {addr}/worker_status/`` body, and when one is due.

- :class:`Report` and :func:`build_report`: the body, from the lifecycle and a closed interval;
- :class:`ReportSchedule`: on each 1 s tick, is a report due? It follows the lifecycle table's
  :class:`~pyworker._lifecycle.ReportPolicy` of the current state.

The service that sends them is :mod:`pyworker._reporter`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs

from ._lifecycle import STATE_INFO, Lifecycle, State, StateChange
from ._load import LoadSnapshot
from ._version import __version__

_EPS = 1e-6
"""Slack for float comparisons of clock readings."""


def _int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


# -- the report -----------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class Report:
    """One load report, as the autoscaler reads it (``POST {addr}/worker_status/``).

    Field names are the wire names, including the original's ``num_requests_recieved``.
    """

    id: int
    """``CONTAINER_ID``."""
    url: str
    """This worker's public URL."""
    loadtime: float
    """Seconds from the start of the load to ready: non-zero in one report per load, else 0."""
    max_perf: float
    """Benchmarked capacity, workload per second."""
    cur_perf: float
    """Workload per second of recently finished requests."""
    cur_load: float
    """Workload received minus cancelled since the last report, per second."""
    error_msg: str
    """Why the worker is errored, or empty."""
    num_requests_working: int
    """Requests in flight now."""
    num_requests_recieved: int
    """(sic) Requests received since the last report."""
    additional_disk_usage: float
    """GB of disk used since the last report (never negative)."""
    cur_capacity: int = 0
    max_capacity: int = 0
    new_load: float
    """2025: workload received since the last report, per second."""
    rej_load: float
    """2025: workload refused with 429 since the last report, per second."""
    working_request_idxs: tuple[int, ...] = attrs.field(converter=_int_tuple)
    """2025: ids of the requests in flight (a JSON list on the wire)."""
    version: str
    """2025: this worker's version."""
    mtoken: str = attrs.field(repr=False)
    """2025: ``MASTER_TOKEN``, a secret: kept out of ``repr`` and logs."""
    state: str
    """Our lifecycle state (not read by the autoscaler; for operators)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object to POST: every field by its wire name, lists as lists.

        Non-finite numbers are sent as 0.
        """
        body = attrs.asdict(self, recurse=False)
        for name, value in body.items():
            # JSON has no NaN or infinity (httpx refuses to encode them): a broken figure
            # must not cost the whole report.
            if isinstance(value, float) and not math.isfinite(value):
                body[name] = 0.0
        body["working_request_idxs"] = list(self.working_request_idxs)
        return body


def build_report(
    *,
    lifecycle: Lifecycle,
    snapshot: LoadSnapshot,
    container_id: int,
    url: str,
    disk_delta_gb: float,
    mtoken: str,
    version: str | None = None,
) -> Report:
    """Assemble one report from the lifecycle and a closed load interval.

    This consumes the lifecycle's pending load time (:meth:`Lifecycle.take_loadtime`), so call
    it exactly once per report that will actually be handed to the senders.

    Args:
        lifecycle: the worker's lifecycle (state, ``error_msg``, ``max_perf``, ``loadtime``).
        snapshot: the interval's figures from :meth:`LoadTracker.snapshot`.
        container_id: ``CONTAINER_ID``.
        url: this worker's public URL.
        disk_delta_gb: GB of disk used since the last report; clamped at 0.
        mtoken: ``MASTER_TOKEN`` (or "").
        version: the worker version; defaults to ``pyworker.__version__``.

    Returns:
        The report.
    """
    return Report(
        id=container_id,
        url=url,
        loadtime=lifecycle.take_loadtime(),
        max_perf=lifecycle.max_perf,
        cur_perf=snapshot.cur_perf,
        cur_load=snapshot.cur_load,
        # The lifecycle clears error_msg whenever a new load begins, so it is non-empty only
        # while errored (or draining/stopped after an error, which is still true).
        error_msg=lifecycle.error_msg,
        num_requests_working=snapshot.num_requests_working,
        num_requests_recieved=snapshot.num_requests_received,
        additional_disk_usage=max(disk_delta_gb, 0.0) if math.isfinite(disk_delta_gb) else 0.0,
        new_load=snapshot.new_load,
        rej_load=snapshot.rej_load,
        working_request_idxs=snapshot.working_request_idxs,
        version=__version__ if version is None else version,
        mtoken=mtoken,
        state=lifecycle.current.value,
    )


# -- when to report -------------------------------------------------------------------------
@attrs.define(eq=False)
class ReportSchedule:
    """Decides, on each tick, whether a report is due (sans-IO).

    The current state's :class:`~pyworker._lifecycle.ReportPolicy` (in the lifecycle table)
    says when; on top of it, every state reports on the first tick and on the next tick after
    any lifecycle transition (feed :meth:`on_transition` to :meth:`Lifecycle.subscribe`; a round
    trip such as ready → benchmarking → ready within one tick still counts).
    """

    _last_at: float | None = attrs.field(default=None, init=False)
    _last_state: State | None = attrs.field(default=None, init=False)
    _last_in_flight: int = attrs.field(default=0, init=False)
    _transitioned: bool = attrs.field(default=False, init=False)

    def on_transition(self, change: StateChange) -> None:
        """Note a lifecycle transition: the next tick reports."""
        self._transitioned = True

    def due(self, *, now: float, state: State, load_changed: bool, in_flight: int) -> bool:
        """Whether a report is due at ``now``.

        Args:
            now: the clock reading of this tick.
            state: the lifecycle state now.
            load_changed: whether the load tracker saw an event since the last report.
            in_flight: requests in flight now.
        """
        policy = STATE_INFO[state].reports
        if policy.final:
            return self._last_state is not state
        if self._last_at is None or self._transitioned or state is not self._last_state:
            return True
        if policy.on_load_change and load_changed:
            return True
        if policy.on_in_flight_drop and in_flight < self._last_in_flight:
            return True
        silence = policy.max_silence
        return silence is not None and now - self._last_at >= silence - _EPS

    def reported(self, *, now: float, state: State, in_flight: int) -> None:
        """Record that a report describing ``state`` and ``in_flight`` was built at ``now``."""
        self._last_at = now
        self._last_state = state
        self._last_in_flight = in_flight
        self._transitioned = False
