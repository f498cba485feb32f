"""Finished-request records for the router: ``POST {addr}/delete_requests/``.

Vast's router tracks each request it routed (by its ``request_idx``) until the worker says it
ended. The worker keeps a bounded log of ended requests (:class:`RequestLog`, sans-IO) and a
service sends it in batches on a 1 s tick (:class:`RecordSender`), with fail-over across the
addresses; entries leave the log only once an address accepted them.

What is recorded (vast-2026.md §9): every request that got past the envelope's checks and
ended (``Success`` for an answer relayed, whatever the model server's status; ``Error`` when the
worker itself failed it; ``Cancelled`` when the client left; ``Rejected`` for a 401 or 429), and
sessions (``Success`` when they close, ``Rejected`` when refused for the session limit). Not
requests inside sessions (the router tracks the session), nor 410, 422 or 503 refusals (the
client routes such a request again, under the same ``request_idx``).
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Sequence

import attrs
import httpx
import trio

from ._autoscaler import Autoscaler
from ._load import Outcome, OutcomeKind
from ._machine import Lifecycle

log = logging.getLogger("pyworker.records")

_BATCH = 1000
"""Records per POST at most."""


class RecordStatus(enum.Enum):
    """How a routed request ended, in the router's words."""

    SUCCESS = "Success"
    ERROR = "Error"
    CANCELLED = "Cancelled"
    REJECTED = "Rejected"

    @classmethod
    def of(cls, outcome: Outcome) -> RecordStatus:
        """The status of an admitted request that ended with ``outcome``."""
        if outcome.kind is OutcomeKind.CANCELLED:
            return cls.CANCELLED
        if outcome.error:
            return cls.ERROR
        return cls.SUCCESS


@attrs.frozen(kw_only=True)
class Record:
    """One ended request. Times are Unix epoch seconds (0: the stage was never reached)."""

    request_idx: int
    status: RecordStatus
    entered_queue_at: float
    work_started_at: float = 0.0
    work_completed_at: float = 0.0

    def to_json(self) -> dict[str, object]:
        """The entry in the POST body."""
        return {
            "request_idx": self.request_idx,
            # The router reads a client that left as a request served (nothing to retry).
            "success": self.status in (RecordStatus.SUCCESS, RecordStatus.CANCELLED),
            "status": self.status.value,
            "entered_queue_at": self.entered_queue_at,
            "work_started_at": self.work_started_at,
            "work_completed_at": self.work_completed_at,
        }


@attrs.define(eq=False)
class RequestLog:
    """Ended requests not yet accepted by the router, oldest first, at most ``limit``.

    Past the limit (an autoscaler down for long, or none configured) the oldest records are
    dropped, counted in :attr:`dropped` and logged once per episode: memory stays bounded.
    """

    limit: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
    _records: collections.deque[Record] = attrs.field(factory=collections.deque, init=False)
    dropped: int = attrs.field(default=0, init=False)

    def add(self, record: Record) -> None:
        """Keep ``record`` until the router accepts it."""
        if len(self._records) >= self.limit:
            self._records.popleft()
            if not self.dropped:
                log.warning(
                    "more than %d ended requests not accepted by the autoscaler: dropping the "
                    "oldest",
                    self.limit,
                )
            self.dropped += 1
        self._records.append(record)

    def __len__(self) -> int:
        return len(self._records)

    def batch(self, size: int = _BATCH) -> list[Record]:
        """The oldest records, at most ``size`` (they stay until :meth:`acknowledge`)."""
        return [self._records[i] for i in range(min(size, len(self._records)))]

    def acknowledge(self, sent: Sequence[Record]) -> None:
        """Forget ``sent``: the router accepted them (those dropped meanwhile are gone)."""
        gone = {id(record) for record in sent}
        while self._records and id(self._records[0]) in gone:
            self._records.popleft()


NOT_FOR_RECORDS = frozenset({"https://cloud.vast.ai/api/v0"})
"""Report addresses that take no finished-request records (vast-2026.md §9)."""


def records_autoscaler(report_addrs: Sequence[str], http: httpx.AsyncClient) -> Autoscaler:
    """Where finished-request records go: the report addresses, but for the console's API
    address, to which Vast's own worker never sends them."""
    addresses = [a for a in report_addrs if a not in NOT_FOR_RECORDS]
    return Autoscaler(addresses=addresses, path="/delete_requests/", http=http)


@attrs.define(eq=False, kw_only=True)
class RecordSender:
    """Sends the log's records in batches, every ``tick`` seconds while any wait.

    Run it with ``await nursery.start(sender.run)``; like the reporter, it makes one last
    delivery (bounded by ``final_timeout``) when the lifecycle reaches its final state, then
    returns.

    Args:
        log: the records to send.
        autoscaler: where they go (``POST {addr}/delete_requests/``, with fail-over).
        lifecycle: to know when the worker has stopped.
        worker_id: ``CONTAINER_ID``.
        mtoken: ``MASTER_TOKEN``.
        tick: seconds between sends.
        final_timeout: seconds allowed for the last send.
    """

    log: RequestLog
    autoscaler: Autoscaler
    lifecycle: Lifecycle
    worker_id: int
    mtoken: str = ""
    tick: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    final_timeout: float = attrs.field(default=3.0, validator=attrs.validators.gt(0))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send until the worker has stopped and the last records went out (or timed out).

        Args:
            task_status: ``started()`` at once, with no value.
        """
        task_status.started()
        while not self.lifecycle.info.reports.final:
            await self.send()
            await trio.sleep(self.tick)
        with trio.move_on_after(self.final_timeout):
            while len(self.log) and await self.send():
                pass

    async def send(self) -> bool:
        """One batch, if any waits. Returns whether a batch was accepted."""
        batch = self.log.batch()
        if not batch:
            return False
        body = {
            "worker_id": self.worker_id,
            "mtoken": self.mtoken,
            "requests": [record.to_json() for record in batch],
        }
        if await self.autoscaler.post(body):
            self.log.acknowledge(batch)
            return True
        return False
