"""The load reporter: tell the autoscaler how this worker is doing, on time.

A Trio service: a 1 s ticker asks :class:`~pyworker._report.ReportSchedule` whether a report is
due, builds it (:func:`~pyworker._report.build_report`) against the baseline of what the
autoscaler has accepted, and POSTs it with fail-over across the addresses
(:class:`~pyworker._autoscaler.Autoscaler`). Only an accepted report moves the baseline, so a
report that no address took is not lost: its figures ride in the next. Delivery runs in this
task alone: a slow, dead or erroring autoscaler costs nothing but its own staleness (later
ticks simply find the next report due), and nothing queues. When the lifecycle stops, the
reporter sends the final report and returns: it alone owns that report.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

import attrs
import trio

from ._autoscaler import Autoscaler
from ._lifecycle import STATE_INFO
from ._load import LoadTracker
from ._machine import Lifecycle, StateChange
from ._report import Baseline, Report, ReportFormat, ReportSchedule, build_report

log = logging.getLogger("pyworker.reporter")

_FINAL_GRACE = 1.0
"""Seconds a delivery under way may still take once the final report is due."""

_GB = float(2**30)
"""What the original worker calls a GB (``psutil.disk_usage(...).used / 2**30``)."""


def _disk_used_bytes(path: str) -> int:
    return shutil.disk_usage(path).used


@attrs.define(eq=False, kw_only=True)
class Reporter:
    """Sends load reports to the autoscaler; never delays anything else.

    Run it with ``await nursery.start(reporter.run)``. It reports on the schedule of
    :class:`~pyworker._report.ReportSchedule`; when the lifecycle reaches a state whose policy
    is the final report (``stopped``), it makes one last delivery, bounded by
    ``final_timeout``, and :meth:`run` returns. The load tracker must be fed
    ``trio.current_time()`` readings, the clock the reporter reads it with.

    Args:
        autoscaler: where reports go (``POST {addr}/worker_status/``, with fail-over).
        fmt: which generation's meanings the fields carry.
        container_id: ``CONTAINER_ID``.
        url: this worker's public URL.
        lifecycle: the worker's lifecycle (subscribed to at construction).
        tracker: the load tracker.
        disk_path: the path whose filesystem's use is reported; None: do not measure.
        mtoken: ``MASTER_TOKEN`` (sent in every report).
        version: the worker version; None means ``pyworker.__version__``.
        tick: seconds between schedule checks.
        final_timeout: seconds allowed for the final report.
        on_report: called synchronously with each report built (e.g. to print it).
        disk_usage: bytes used on the filesystem of a path (replaceable in tests); it runs in
            a thread.
    """

    autoscaler: Autoscaler
    fmt: ReportFormat = ReportFormat.V2026
    container_id: int
    url: str
    lifecycle: Lifecycle
    tracker: LoadTracker
    disk_path: str | None = "/"
    mtoken: str = ""
    version: str | None = None
    tick: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    final_timeout: float = attrs.field(default=3.0, validator=attrs.validators.gt(0))
    on_report: Callable[[Report], None] | None = None
    disk_usage: Callable[[str], int] = _disk_used_bytes
    _schedule: ReportSchedule = attrs.field(factory=ReportSchedule, init=False)
    _baseline: Baseline = attrs.field(init=False)
    _disk_used: float | None = attrs.field(default=None, init=False)
    _delivery: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _disk_read: trio.Event = attrs.field(factory=trio.Event, init=False)
    _last_logged: tuple[object, ...] = attrs.field(default=(), init=False)

    def __attrs_post_init__(self) -> None:
        self._baseline = Baseline(totals=self.tracker.totals(self.tracker.now))
        # Subscribing now, not in run(), so that transitions before the service starts still
        # make the first ticks report.
        self.lifecycle.subscribe(self._schedule.on_transition)
        self.lifecycle.subscribe(self._on_change)

    def _on_change(self, change: StateChange) -> None:
        if STATE_INFO[change.dest].reports.final:
            # The final report supersedes a delivery still retrying (its figures include all),
            # after a moment's grace: one whose answer is on its way must not be cut off, or
            # the autoscaler, which has it, would get its figures again in the final report.
            deadline = trio.current_time() + _FINAL_GRACE
            self._delivery.deadline = min(self._delivery.deadline, deadline)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report until the final report is delivered (or its time is up), then return.

        The first tick (and so the first report) is immediate; ticks follow every ``tick``
        seconds on absolute deadlines, so they do not drift.

        Args:
            task_status: ``started()`` is called at once, with no value; nothing awaits the
                network or the disk first.

        Raises:
            ExceptionGroup: only for a bug: network, HTTP and disk errors are logged and
                retried, never raised. Cancellation propagates as usual.
        """
        async with trio.open_nursery() as nursery:
            if self.disk_path is not None:
                nursery.start_soon(self._sample_disk, self.disk_path)
            task_status.started()
            if self.disk_path is not None:
                # The first report waits a moment for the first disk reading (a hung
                # filesystem costs it at most this long).
                with trio.move_on_after(self.tick):
                    await self._disk_read.wait()
            await self._ticker()
            # The final report is out (or timed out): stop the disk sampler.
            nursery.cancel_scope.cancel()

    async def _ticker(self) -> None:
        deadline = trio.current_time()
        while True:
            now = trio.current_time()
            lifecycle, tracker = self.lifecycle, self.tracker
            if self._schedule.due(
                now=now,
                state=lifecycle.current,
                load_changed=tracker.changed,
                in_flight=tracker.in_flight,
            ):
                if lifecycle.info.reports.final:
                    with trio.move_on_after(self.final_timeout):
                        await self._report(now)
                    return
                with trio.CancelScope() as self._delivery:
                    await self._report(now)
            deadline += self.tick
            now = trio.current_time()
            while deadline <= now:  # fell behind (delivery, a stalled process): skip, no burst
                deadline += self.tick
            await trio.sleep_until(deadline)

    async def _report(self, now: float) -> None:
        """Build a report, deliver it, and move the baseline only if it was accepted."""
        draft = build_report(
            fmt=self.fmt,
            lifecycle=self.lifecycle,
            tracker=self.tracker,
            since=self._baseline,
            now=now,
            container_id=self.container_id,
            url=self.url,
            disk_used=self._disk_used,
            mtoken=self.mtoken,
            version=self.version,
        )
        self._schedule.reported(
            now=now, state=self.lifecycle.current, in_flight=self.tracker.in_flight
        )
        self.tracker.changed = False
        if self.on_report is not None:
            try:
                self.on_report(draft.report)
            except Exception:
                log.exception("on_report callback failed")
        if await self.autoscaler.post(draft.report.to_json()):
            self._baseline = draft.accepted
            self._log(draft.report)

    def _log(self, report: Report) -> None:
        """An accepted report at INFO when its figures changed (heartbeats at DEBUG)."""
        figures = (
            report.state,
            report.error_msg,
            report.max_perf,
            report.cur_load,
            report.new_load,
            report.cur_perf,
            report.rej_load,
            report.num_requests_working,
        )
        level = logging.INFO if figures != self._last_logged else logging.DEBUG
        self._last_logged = figures
        log.log(
            level,
            "report accepted: %s, %d in flight, cur_load %g, new_load %g, cur_perf %g, "
            "rej_load %g, max_perf %g%s",
            report.state,
            report.num_requests_working,
            report.cur_load,
            report.new_load,
            report.cur_perf,
            report.rej_load,
            report.max_perf,
            f", error: {report.error_msg}" if report.error_msg else "",
            extra={"report": report.to_json() | {"mtoken": "<redacted>"}},
        )

    async def _sample_disk(self, path: str) -> None:
        # A loop of its own, at most one thread at a time: statvfs on a hung network
        # filesystem then stalls only this task; reports carry the latest sample meanwhile.
        failing = False
        while True:
            try:
                used = await trio.to_thread.run_sync(self.disk_usage, path, abandon_on_cancel=True)
            except OSError as exc:
                if not failing:
                    log.warning("cannot read disk usage of %s: %s", path, exc)
                failing = True
            else:
                failing = False
                self._disk_used = used / _GB
                self._disk_read.set()
                if self._baseline.disk_used is None:
                    # The starting point: growth is counted from the first sample.
                    self._baseline = attrs.evolve(self._baseline, disk_used=self._disk_used)
            await trio.sleep(self.tick)
