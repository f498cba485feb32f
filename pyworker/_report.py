"""Load reports, sans-IO: the ``POST {addr}/worker_status/`` body, and when one is due.

- :class:`Report` and :func:`build_report`: the body, in either generation's meanings
  (:class:`ReportFormat`), from the lifecycle, the load tracker and the :class:`Baseline` of
  what the autoscaler has already accepted;
- :class:`ReportSchedule`: on each 1 s tick, is a report due? It follows the lifecycle table's
  :class:`~pyworker._lifecycle.ReportPolicy` of the current state.

Figures are counted from the last *accepted* report: a report no address accepted changes
nothing, so its figures ride in the next one, and nothing is counted twice. The service that
sends them is :mod:`pyworker._reporter`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Any

import attrs

from ._lifecycle import STATE_INFO, State
from ._load import LoadTotals, LoadTracker
from ._machine import Lifecycle, StateChange
from ._version import __version__

_EPS = 1e-6
"""Slack for float comparisons of clock readings."""


class ReportFormat(enum.Enum):
    """Which generation's meanings the report fields carry."""

    V2026 = "2026"
    """Vast's newest (vastai 1.9.1): ``loadtime`` in every report once loaded, ``cur_load`` the
    workload in flight now, ``new_load``/``rej_load``/``cur_perf`` totals since the last
    accepted report, ``num_requests_recieved`` cumulative, ``disk_usage``."""
    V2024 = "2024"
    """The 2024/2025 worker's: ``loadtime`` once per load, rates per second of the interval,
    ``cur_perf`` over the last minute, ``num_requests_recieved`` per interval."""


def _int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class Report:
    """One load report, as the autoscaler reads it (``POST {addr}/worker_status/``).

    Field names are the wire names, including the original's ``num_requests_recieved``; what
    the load fields mean depends on the :class:`ReportFormat`.
    """

    id: int
    """``CONTAINER_ID``."""
    url: str
    """This worker's public URL."""
    loadtime: float
    """Seconds from the start of the load to ready (0: not loaded)."""
    max_perf: float
    """Benchmarked capacity, workload per second."""
    cur_perf: float
    """Work done: a total since the last accepted report (2026), per second of the last
    minute (2024)."""
    cur_load: float
    """Workload in flight now, sessions included (2026); received minus cancelled since the
    last accepted report, per second (2024)."""
    error_msg: str
    """Why the worker is errored, or empty."""
    num_requests_working: int
    """Requests (outside sessions) and sessions in flight now."""
    num_requests_recieved: int
    """(sic) Requests and sessions accepted: since start (2026), since the last accepted
    report (2024)."""
    additional_disk_usage: float
    """GB of disk used since the last accepted report (never negative)."""
    disk_usage: float | None
    """GB used on the disk, absolute (2026 only: None leaves it out)."""
    cur_capacity: int = 0
    max_capacity: int = 0
    new_load: float
    """Workload received minus cancelled since the last accepted report: a total (2026), per
    second (2024, received only)."""
    rej_load: float
    """Workload refused (401, 429, sessions over the limit) since the last accepted report: a
    total (2026), per second (2024)."""
    working_request_idxs: tuple[int, ...] = attrs.field(converter=_int_tuple)
    """The router's ``request_idx`` of each request and session in flight."""
    version: str
    """This worker's version."""
    mtoken: str = attrs.field(repr=False)
    """``MASTER_TOKEN``, a secret: kept out of ``repr`` and logs."""
    state: str
    """Our lifecycle state (not read by the autoscaler; for operators)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object to POST: every field by its wire name, lists as lists.

        Non-finite numbers are sent as 0; a field that is None is left out.
        """
        body = attrs.asdict(self, recurse=False)
        for name, value in list(body.items()):
            if value is None:
                del body[name]
            # JSON has no NaN or infinity (httpx refuses to encode them): a broken figure
            # must not cost the whole report.
            elif isinstance(value, float) and not math.isfinite(value):
                body[name] = 0.0
        body["working_request_idxs"] = list(self.working_request_idxs)
        return body


@attrs.frozen(kw_only=True)
class Baseline:
    """What the autoscaler has accepted so far: the next report's figures start here."""

    totals: LoadTotals
    """The load totals of the last accepted report (or of the start)."""
    net: float = 0.0
    """Received minus cancelled workload reported so far. A cancel can outweigh what arrived
    since (the request came earlier): reports then say 0 until arrivals catch up, so the sum
    of what was reported always equals what really arrived and stayed."""
    loads: int = 0
    """Loads whose load time an accepted report carried (2024: once per load)."""
    disk_used: float | None = None
    """GB used on the disk at the last accepted report."""


@attrs.frozen(kw_only=True)
class Draft:
    """A report and the baseline to adopt if the autoscaler accepts it."""

    report: Report
    accepted: Baseline


def build_report(
    *,
    fmt: ReportFormat,
    lifecycle: Lifecycle,
    tracker: LoadTracker,
    since: Baseline,
    now: float,
    container_id: int,
    url: str,
    disk_used: float | None,
    mtoken: str,
    version: str | None = None,
) -> Draft:
    """Assemble one report from the lifecycle and the load since the last accepted report.

    Args:
        fmt: which generation's meanings.
        lifecycle: state, ``error_msg``, ``max_perf``, load time.
        tracker: the load now.
        since: what the autoscaler has accepted so far.
        now: the clock reading (the tracker's clock).
        container_id: ``CONTAINER_ID``.
        url: this worker's public URL.
        disk_used: GB used on the disk now (None: not known).
        mtoken: ``MASTER_TOKEN`` (or "").
        version: the worker version; defaults to ``pyworker.__version__``.

    Returns:
        The report, and the baseline to adopt once an address accepts it.
    """
    totals = tracker.totals(now)
    delta = totals - since.totals
    interval = max(delta.at, 1e-9)
    net = max(totals.received - totals.cancelled - since.net, 0.0)
    working = list(tracker.reported())
    loads = lifecycle.loads_completed
    if fmt is ReportFormat.V2026:
        loadtime = lifecycle.loadtime
        figures: dict[str, Any] = {
            "cur_load": float(sum(ticket.workload for ticket in working)),
            "new_load": net,
            "rej_load": delta.rejected,
            "cur_perf": delta.completed,
            "num_requests_recieved": totals.accepted,
        }
    else:
        loadtime = lifecycle.loadtime if loads > since.loads else 0.0
        figures = {
            "cur_load": net / interval,
            "new_load": delta.received / interval,
            "rej_load": delta.rejected / interval,
            "cur_perf": tracker.recent_completions(now),
            "num_requests_recieved": delta.accepted,
        }
    disk_delta = 0.0
    if disk_used is not None and since.disk_used is not None:
        disk_delta = max(disk_used - since.disk_used, 0.0)
    report = Report(
        id=container_id,
        url=url,
        loadtime=loadtime,
        max_perf=lifecycle.max_perf,
        # The lifecycle clears error_msg whenever a new load begins, so it is non-empty only
        # while errored (or draining/stopped after an error, which is still true).
        error_msg=lifecycle.error_msg,
        num_requests_working=len(working),
        additional_disk_usage=disk_delta,
        # Present in every 2026 report (0 until the disk was first read).
        disk_usage=(disk_used or 0.0) if fmt is ReportFormat.V2026 else None,
        working_request_idxs=[ticket.idx for ticket in working],
        version=__version__ if version is None else version,
        mtoken=mtoken,
        state=lifecycle.current.value,
        **figures,
    )
    accepted = Baseline(
        totals=totals,
        net=since.net + net,
        loads=loads if loadtime else since.loads,
        disk_used=disk_used if disk_used is not None else since.disk_used,
    )
    return Draft(report=report, accepted=accepted)


# -- when to report -------------------------------------------------------------------------
@attrs.define(eq=False)
class ReportSchedule:
    """Decides, on each tick, whether a report is due (sans-IO).

    The current state's :class:`~pyworker._lifecycle.ReportPolicy` (in the lifecycle table)
    says when; on top of it, every state reports on the first tick and on the next tick after
    any lifecycle transition (feed :meth:`on_transition` to :meth:`Lifecycle.subscribe`; a round
    trip such as ready → benchmarking → ready within one tick still counts). Silence is counted
    from the last report sent, accepted or not, so a dead autoscaler is not hammered.
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
        """Record that a report describing ``state`` and ``in_flight`` was sent at ``now``."""
        self._last_at = now
        self._last_state = state
        self._last_in_flight = in_flight
        self._transitioned = False
