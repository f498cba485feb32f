"""The load reporter: tell the autoscaler how this worker is doing, on time.

A Trio service: a 1 s ticker asks :class:`~pyworker._report.ReportSchedule` whether a report is
due, builds it (:func:`~pyworker._report.build_report`) and hands it to one sender task per
address, which owns a one-slot mailbox. The ticker never awaits the network: a newer report
replaces an unsent older one, so a slow, dead or erroring autoscaler costs nothing but its own
staleness, and nothing queues without bound. When the lifecycle stops, the reporter sends the
final report and returns: it alone owns that report.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence

import attrs
import httpx
import trio

from ._lifecycle import Lifecycle
from ._load import LoadTracker
from ._report import Report, ReportSchedule, build_report

log = logging.getLogger("pyworker.reporter")

_GB = float(2**30)
"""What the original worker calls a GB (``psutil.disk_usage(...).used / 2**30``)."""


# -- one address ----------------------------------------------------------------------------
@attrs.define(eq=False)
class _Failure:
    why: str
    retry: bool


@attrs.define(eq=False, kw_only=True)
class _AddressSender:
    """Delivers reports to one autoscaler address; owns that address's one-slot mailbox."""

    addr: str
    http: httpx.AsyncClient
    attempt_timeout: float
    max_attempts: int
    retry_backoff: float
    _pending: Report | None = attrs.field(default=None, init=False)
    _inflight: Report | None = attrs.field(default=None, init=False)
    _carry_loadtime: float = attrs.field(default=0.0, init=False)
    _wakeup: trio.Event = attrs.field(factory=trio.Event, init=False)
    _healthy: bool = attrs.field(default=True, init=False)
    delivered: int = attrs.field(default=0, init=False)
    """Reports this address acknowledged with a 2xx/3xx (for tests and operators)."""

    @property
    def endpoint(self) -> str:
        return f"{self.addr.rstrip('/')}/worker_status/"

    def post(self, report: Report) -> None:
        """Put ``report`` in the mailbox, replacing an unsent one (never blocks)."""
        old = self._pending
        if old is not None and old.loadtime and not report.loadtime:
            # The replaced report was never sent: its load time must ride along.
            report = attrs.evolve(report, loadtime=old.loadtime)
        self._pending = report
        self._wakeup.set()

    def owed_loadtime(self) -> float:
        """A load time not yet known to be delivered here (newest first), or 0."""
        for report in (self._pending, self._inflight):
            if report is not None and report.loadtime:
                return report.loadtime
        return self._carry_loadtime

    def take_for_final(self) -> None:
        """Empty the mailbox: the final report (carrying :meth:`owed_loadtime`) replaces it."""
        self._carry_loadtime = self.owed_loadtime()
        self._pending = None
        self._inflight = None

    async def run(self) -> None:
        """Deliver mailbox contents until cancelled."""
        while True:
            await self._wakeup.wait()
            # Reset before taking, with no checkpoint between: a post() from now on sets the
            # new Event, so no report can be left in the mailbox without a wake-up.
            self._wakeup = trio.Event()
            report, self._pending = self._pending, None
            if report is not None:
                await self.deliver(report, supersedable=True)

    async def deliver(self, report: Report, *, supersedable: bool) -> bool:
        """Send ``report`` with bounded retries. Returns whether it was acknowledged.

        Transport errors, timeouts and 5xx are retried (up to ``max_attempts`` in all, with
        doubling back-off); with ``supersedable``, a newer report in the mailbox ends the
        retries at once. An undelivered report's load time is kept for the next report.
        """
        if self._carry_loadtime and not report.loadtime:
            report = attrs.evolve(report, loadtime=self._carry_loadtime)
        self._carry_loadtime = 0.0
        # While in flight the report's load time is "owed": if we are cancelled mid-attempt
        # (shutdown), the final report still finds it here.
        self._inflight = report
        for attempt in range(1, self.max_attempts + 1):
            failure = await self._attempt(report)
            if failure is None:
                self._inflight = None
                self.delivered += 1
                if not self._healthy:
                    self._healthy = True
                    log.info("load reports to %s are delivered again", self.addr)
                return True
            last = attempt == self.max_attempts or not failure.retry
            self._note_failure(failure, giving_up=last)
            if last:
                break
            with trio.move_on_after(self.retry_backoff * 2 ** (attempt - 1)):
                if supersedable:
                    await self._wakeup.wait()
                else:
                    await trio.sleep_forever()
            if supersedable and self._pending is not None:
                break  # a newer report supersedes this retry; it inherits the load time
        # Not acknowledged: it may or may not have arrived (a read timeout is ambiguous), so
        # the load time is sent again rather than risk losing it.
        self._inflight = None
        if report.loadtime:
            if self._pending is not None and not self._pending.loadtime:
                self._pending = attrs.evolve(self._pending, loadtime=report.loadtime)
            elif self._pending is None:
                self._carry_loadtime = report.loadtime
        return False

    async def _attempt(self, report: Report) -> _Failure | None:
        body = report.to_json()
        with trio.move_on_after(self.attempt_timeout) as scope:
            try:
                response = await self.http.post(self.endpoint, json=body)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                return _Failure(why=f"{type(exc).__name__}: {exc}", retry=True)
            except Exception as exc:  # not Cancelled: that is a BaseException and propagates
                # A misbehaving address must not take the worker down with it.
                log.debug("unexpected error posting to %s", self.endpoint, exc_info=True)
                return _Failure(why=f"{type(exc).__name__}: {exc}", retry=False)
        if scope.cancelled_caught:
            return _Failure(why=f"no answer within {self.attempt_timeout:g} s", retry=True)
        status = response.status_code
        if status >= 500:
            return _Failure(why=f"HTTP {status}", retry=True)
        if status >= 400:
            return _Failure(why=f"HTTP {status}: {response.text[:200]}", retry=False)
        return None

    def _note_failure(self, failure: _Failure, *, giving_up: bool) -> None:
        outcome = "report dropped" if giving_up else "retrying"
        if self._healthy:
            # Once per outage: further failures go to DEBUG until a report gets through.
            self._healthy = False
            log.warning(
                "load report to %s failed (%s); %s; further failures are logged at DEBUG "
                "until it recovers",
                self.endpoint,
                failure.why,
                outcome,
            )
        else:
            log.debug("load report to %s failed (%s); %s", self.endpoint, failure.why, outcome)


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError("addresses must be a sequence of URLs, not one string")
    return tuple(values)


# -- the service ----------------------------------------------------------------------------
def _disk_used_bytes(path: str) -> int:
    return shutil.disk_usage(path).used


@attrs.define(eq=False, kw_only=True)
class Reporter:
    """Sends load reports to every ``REPORT_ADDR``; never delays anything else.

    Run it with ``await nursery.start(reporter.run)``. It reports on the schedule of
    :class:`~pyworker._report.ReportSchedule`; when the lifecycle reaches a state whose policy
    is the final report (``stopped``), it sends that report to every address within
    ``final_timeout`` and :meth:`run` returns: the reporter is the final report's only owner.
    The load tracker must be fed ``trio.current_time()`` readings, the clock the reporter
    snapshots it with.

    Args:
        addresses: autoscaler base URLs; each gets ``POST {addr}/worker_status/``.
        container_id: ``CONTAINER_ID``.
        url: this worker's public URL.
        lifecycle: the worker's lifecycle (subscribed to at construction).
        tracker: the load tracker (snapshotted, which closes an interval, once per report).
        http: a shared client, created and closed by the caller.
        disk_path: the model/data directory whose filesystem's growth is reported; None: do not
            measure (``additional_disk_usage`` stays 0).
        mtoken: ``MASTER_TOKEN`` (sent in every report).
        version: the worker version; None means ``pyworker.__version__``.
        tick: seconds between schedule checks.
        attempt_timeout: seconds allowed for one POST.
        max_attempts: POSTs per report at most (transport errors, timeouts, 5xx).
        retry_backoff: seconds before the first retry; doubles each retry.
        final_timeout: overall seconds allowed for the final report to every address.
        on_report: called synchronously with each report built (e.g. to print it).
    """

    addresses: Sequence[str] = attrs.field(converter=_str_tuple)
    container_id: int
    url: str
    lifecycle: Lifecycle
    tracker: LoadTracker
    http: httpx.AsyncClient
    disk_path: str | None = "/"
    mtoken: str = ""
    version: str | None = None
    tick: float = 1.0
    attempt_timeout: float = 5.0
    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    retry_backoff: float = 0.5
    final_timeout: float = 3.0
    on_report: Callable[[Report], None] | None = None
    disk_usage: Callable[[str], int] = _disk_used_bytes
    """Bytes used on the filesystem of a path (replaceable in tests); runs in a thread."""

    _schedule: ReportSchedule = attrs.field(init=False)
    _senders: tuple[_AddressSender, ...] = attrs.field(init=False)
    _senders_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _disk_latest: int | None = attrs.field(default=None, init=False)
    _disk_reported: int | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._schedule = ReportSchedule()
        # Subscribing now, not in run(), so that transitions before the service starts still
        # make the first ticks report.
        self.lifecycle.subscribe(self._schedule.on_transition)
        self._senders = tuple(
            _AddressSender(
                addr=addr,
                http=self.http,
                attempt_timeout=self.attempt_timeout,
                max_attempts=self.max_attempts,
                retry_backoff=self.retry_backoff,
            )
            for addr in self.addresses
        )

    @property
    def delivered(self) -> dict[str, int]:
        """Reports acknowledged so far, per address."""
        return {s.addr: s.delivered for s in self._senders}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report until the final report is sent, then return.

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
            nursery.start_soon(self._run_senders)
            if self.disk_path is not None:
                nursery.start_soon(self._sample_disk, self.disk_path)
            task_status.started()
            await self._ticker()
            # The final report is out (or timed out): stop the disk sampler.
            nursery.cancel_scope.cancel()

    # -- internals -------------------------------------------------------------------------
    async def _run_senders(self) -> None:
        with self._senders_scope:
            async with trio.open_nursery() as nursery:
                for sender in self._senders:
                    nursery.start_soon(sender.run, name=f"load reports to {sender.addr}")

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
                    await self._send_final()
                    return
                report = self._build(now)
                # Posting only fills mailboxes; the senders do the I/O in their own tasks, so
                # no address can hold up the tick or another address.
                for sender in self._senders:
                    sender.post(report)
            deadline += self.tick
            now = trio.current_time()
            while deadline <= now:  # fell behind (a stalled process): skip, do not burst
                deadline += self.tick
            await trio.sleep_until(deadline)

    async def _send_final(self) -> None:
        """One last report to every address, within ``final_timeout`` seconds overall.

        The regular senders stop first (a retry in progress is dropped; its load time rides in
        the final report).
        """
        self._senders_scope.cancel()
        final = self._build(trio.current_time())
        with trio.move_on_after(self.final_timeout):
            async with trio.open_nursery() as nursery:
                for sender in self._senders:
                    # The mailbox's unsent report is superseded by the final one; any load
                    # time still owed to this address moves into it (deliver() merges it).
                    sender.take_for_final()
                    nursery.start_soon(
                        functools.partial(sender.deliver, final, supersedable=False),
                        name=f"final report to {sender.addr}",
                    )

    def _build(self, now: float) -> Report:
        state, in_flight = self.lifecycle.current, self.tracker.in_flight
        report = build_report(
            lifecycle=self.lifecycle,
            snapshot=self.tracker.snapshot(now),
            container_id=self.container_id,
            url=self.url,
            disk_delta_gb=self._take_disk_delta(),
            mtoken=self.mtoken,
            version=self.version,
        )
        self._schedule.reported(now=now, state=state, in_flight=in_flight)
        if self.on_report is not None:
            try:
                self.on_report(report)
            except Exception:
                log.exception("on_report callback failed")
        return report

    def _take_disk_delta(self) -> float:
        latest, previous = self._disk_latest, self._disk_reported
        if latest is None or previous is None:
            return 0.0
        self._disk_reported = latest
        return max(latest - previous, 0) / _GB

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
                if self._disk_reported is None:
                    self._disk_reported = used  # the baseline: growth is counted from here
                self._disk_latest = used
            await trio.sleep(self.tick)
