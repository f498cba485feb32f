"""Load reports: tell every autoscaler address how this worker is doing, on time.

Three layers, in the sans-IO manner:

- :class:`Report` and :func:`build_report` (pure): the ``POST {addr}/worker_status/`` body;
- :class:`ReportSchedule` (pure): on each 1 s tick, is a report due?
- :class:`Reporter` (Trio): the ticker, one sender task per address, the disk sampler, and the
  final report on shutdown.

The ticker never awaits the network. Each address has its own sender with a one-slot mailbox:
a newer report replaces an unsent older one, so a slow, dead or erroring autoscaler costs
nothing but its own staleness, and nothing queues without bound.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import httpx
import trio

from ._lifecycle import Lifecycle, State, StateChange
from ._load import LoadSnapshot, LoadTracker

log = logging.getLogger("pyworker.reporter")

_GB = float(2**30)
"""What the original worker calls a GB (``psutil.disk_usage(...).used / 2**30``)."""

_EPS = 1e-6
"""Slack for float comparisons of clock readings."""


def _int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


def _package_version() -> str:
    # Imported lazily: pyworker/__init__ may one day import this module.
    try:
        from pyworker import __version__
    except ImportError:
        # A stale editable install can map ``pyworker`` as a namespace package (no __init__);
        # the distribution's metadata still knows the version.
        try:
            return importlib.metadata.version("pyworker")
        except importlib.metadata.PackageNotFoundError:
            return "0+unknown"
    return __version__


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
    if version is None:
        version = _package_version()
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
        version=version,
        mtoken=mtoken,
        state=lifecycle.current.value,
    )


# -- when to report -------------------------------------------------------------------------
@attrs.define(eq=False)
class ReportSchedule:
    """Decides, on each tick, whether a report is due (sans-IO).

    Rules, checked in order:

    - ``stopped``: exactly one report (the final one), then never again;
    - the first tick, and the next tick after any lifecycle transition (feed
      :meth:`on_transition` to :meth:`Lifecycle.subscribe`; a round trip such as
      ready → benchmarking → ready within one tick still counts);
    - ``ready``: the next tick after the load changed (``LoadTracker.changed``);
    - ``draining``: the next tick after the in-flight count fell;
    - every state: when ``max_interval`` seconds have passed since the last report.

    Args:
        max_interval: the longest silence, in seconds.
    """

    max_interval: float = 10.0
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
        if state is State.STOPPED:
            return self._last_state is not State.STOPPED
        if self._last_at is None or self._transitioned or state is not self._last_state:
            return True
        if state is State.READY and load_changed:
            return True
        if state is State.DRAINING and in_flight < self._last_in_flight:
            return True
        return now - self._last_at >= self.max_interval - _EPS

    def reported(self, *, now: float, state: State, in_flight: int) -> None:
        """Record that a report describing ``state`` and ``in_flight`` was built at ``now``."""
        self._last_at = now
        self._last_state = state
        self._last_in_flight = in_flight
        self._transitioned = False


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
        # (shutdown), send_final still finds it here.
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
    :class:`ReportSchedule`; when the lifecycle reaches ``stopped`` it sends the final report
    (see :meth:`send_final`) and :meth:`run` returns. The load tracker must be fed
    ``trio.current_time()`` readings, the clock the reporter snapshots it with.

    Args:
        addresses: autoscaler base URLs; each gets ``POST {addr}/worker_status/``.
        container_id: ``CONTAINER_ID``.
        url: this worker's public URL.
        lifecycle: the worker's lifecycle (subscribed to at construction).
        tracker: the load tracker (snapshotted, which closes an interval, once per report).
        http: a shared client, created and closed by the caller.
        disk_path: the model/data directory whose filesystem's growth is reported; None: do not
            measure (``additional_disk_usage`` stays 0).
        mtoken: ``MASTER_TOKEN``; None reads the environment variable (default "").
        version: the worker version; None means ``pyworker.__version__``.
        tick: seconds between schedule checks.
        max_interval: the longest silence, in seconds.
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
    mtoken: str | None = None
    version: str | None = None
    tick: float = 1.0
    max_interval: float = 10.0
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
    _final_started: bool = attrs.field(default=False, init=False)
    _final_done: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        if self.mtoken is None:
            self.mtoken = os.environ.get("MASTER_TOKEN", "")
        self._schedule = ReportSchedule(max_interval=self.max_interval)
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

    async def send_final(self) -> None:
        """Send one last report to every address, within ``final_timeout`` seconds overall.

        Stops the regular reports and senders first (a retry in progress is dropped; its load
        time rides in the final report). Idempotent: a second call waits for the first.
        Called by :meth:`run` when the lifecycle reaches ``stopped``; call it yourself to
        report before a hard shutdown.
        """
        if self._final_started:
            await self._final_done.wait()
            return
        self._final_started = True
        try:
            self._senders_scope.cancel()
            base = self._build(trio.current_time())
            with trio.move_on_after(self.final_timeout):
                async with trio.open_nursery() as nursery:
                    for sender in self._senders:
                        # The mailbox's unsent report is superseded by the final one; any load
                        # time still owed to this address moves into it (deliver() merges it).
                        sender.take_for_final()
                        nursery.start_soon(
                            functools.partial(sender.deliver, base, supersedable=False),
                            name=f"final report to {sender.addr}",
                        )
        finally:
            # Also on cancellation: waiters (a second send_final, the ticker) must not hang.
            self._final_done.set()

    # -- internals -------------------------------------------------------------------------
    async def _run_senders(self) -> None:
        with self._senders_scope:
            async with trio.open_nursery() as nursery:
                for sender in self._senders:
                    nursery.start_soon(sender.run, name=f"load reports to {sender.addr}")

    async def _ticker(self) -> None:
        deadline = trio.current_time()
        while not self._final_started:
            now = trio.current_time()
            lifecycle, tracker = self.lifecycle, self.tracker
            if self._schedule.due(
                now=now,
                state=lifecycle.current,
                load_changed=tracker.changed,
                in_flight=tracker.in_flight,
            ):
                if lifecycle.current is State.STOPPED:
                    await self.send_final()
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
            with trio.move_on_at(deadline):
                await self._final_done.wait()
        # send_final() was called from elsewhere: let it finish before returning.
        await self._final_done.wait()

    def _build(self, now: float) -> Report:
        state, in_flight = self.lifecycle.current, self.tracker.in_flight
        report = build_report(
            lifecycle=self.lifecycle,
            snapshot=self.tracker.snapshot(now),
            container_id=self.container_id,
            url=self.url,
            disk_delta_gb=self._take_disk_delta(),
            mtoken=self.mtoken or "",
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
