"""POSTs to the autoscaler: several ``REPORT_ADDR``s are fail-over, not broadcast.

Every generation of Vast's worker treats the addresses as alternatives: try them in order, up to
a few attempts each with a short timeout, and stop at the first that accepts. :class:`Autoscaler`
does that, starting from the address that last worked, and says whether anything accepted, so
that its callers (load reports, finished-request records) clear what they sent only then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import attrs
import httpx
import trio

log = logging.getLogger("pyworker.autoscaler")


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError("addresses must be a sequence of URLs, not one string")
    return tuple(value.rstrip("/") for value in values)


@attrs.frozen
class _Failure:
    why: str
    retry: bool


@attrs.frozen(kw_only=True)
class DeliveryHealth:
    """How one kind of POST to the autoscaler is faring, for ``/status``.

    Attributes:
        addresses: how many addresses there are to try (0: the POSTs go nowhere).
        ok: whether the last POST was accepted (True before the first).
        failing_for: seconds since the first POST of the current outage failed (None: none).
        last_error: why the last failed POST failed, address by address ("" if none).
        accepted: POSTs accepted since start.
    """

    addresses: int
    ok: bool
    failing_for: float | None
    last_error: str
    accepted: int

    def to_json(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.define(eq=False, kw_only=True)
class Autoscaler:
    """One kind of POST (a path) to the autoscaler's addresses, with fail-over.

    Args:
        addresses: the autoscaler's base URLs, in order of preference.
        path: the route, e.g. ``"/worker_status/"``.
        http: a shared client, created and closed by the caller.
        attempt_timeout: seconds allowed for one POST.
        max_attempts: POSTs per address at most (transport errors, timeouts and 5xx are
            retried; other refusals move on to the next address at once).
        retry_backoff: seconds before an address's second attempt; doubles after each.
    """

    addresses: Sequence[str] = attrs.field(converter=_addresses)
    path: str
    http: httpx.AsyncClient
    attempt_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    retry_backoff: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    _first: int = attrs.field(default=0, init=False)
    _failing_since: float | None = attrs.field(default=None, init=False)
    """When the first failed POST of the current outage began (None: no outage)."""
    _last_error: str = attrs.field(default="", init=False)
    accepted: dict[str, int] = attrs.field(factory=dict, init=False)
    """POSTs each address accepted (for tests and operators)."""
    attempts: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    """POST attempts by (address, outcome): ``accepted``, ``refused`` (4xx) or ``failed``
    (no answer, a transport error, 5xx); for ``/metrics``."""

    async def post(self, body: object) -> bool:
        """POST ``body`` (as JSON) to the first address that accepts it.

        Returns:
            Whether an address accepted it (a 2xx or 3xx). Failures are logged once per
            outage; nothing is raised but cancellation.
        """
        started = trio.current_time()
        count = len(self.addresses)
        reasons = []
        for step in range(count):
            index = (self._first + step) % count
            address = self.addresses[index]
            why = await self._post_to(address, body)
            if why is None:
                self._first = index
                self.accepted[address] = self.accepted.get(address, 0) + 1
                if self._failing_since is not None:
                    self._failing_since = None
                    log.info("POST %s is accepted again (by %s)", self.path, address)
                return True
            reasons.append(f"{address}: {why}")
        if reasons:
            self._note_outage("; ".join(reasons), started)
        return False

    def health(self) -> DeliveryHealth:
        """How these POSTs are faring now."""
        since = self._failing_since
        return DeliveryHealth(
            addresses=len(self.addresses),
            ok=since is None,
            failing_for=None if since is None else trio.current_time() - since,
            last_error="" if since is None else self._last_error,
            accepted=sum(self.accepted.values()),
        )

    async def _post_to(self, address: str, body: object) -> str | None:
        """Up to ``max_attempts`` POSTs to one address; None once accepted, else why not."""
        url = address + self.path
        failure = _Failure(why="not tried", retry=False)
        for attempt in range(self.max_attempts):
            if attempt:
                await trio.sleep(self.retry_backoff * 2 ** (attempt - 1))
            failure_or_none = await self._attempt(url, body)
            outcome = (
                "accepted"
                if failure_or_none is None
                else ("failed" if failure_or_none.retry else "refused")
            )
            key = (address, outcome)
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if failure_or_none is None:
                return None
            failure = failure_or_none
            if not failure.retry:
                break
        return failure.why

    async def _attempt(self, url: str, body: object) -> _Failure | None:
        with trio.move_on_after(self.attempt_timeout) as scope:
            try:
                response = await self.http.post(url, json=body)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                return _Failure(why=f"{type(exc).__name__}: {exc}", retry=True)
            except Exception as exc:  # not Cancelled: that is a BaseException and propagates
                # A misbehaving address must not take the worker down with it.
                log.debug("unexpected error posting to %s", url, exc_info=True)
                return _Failure(why=f"{type(exc).__name__}: {exc}", retry=False)
        if scope.cancelled_caught:
            return _Failure(why=f"no answer within {self.attempt_timeout:g} s", retry=True)
        status = response.status_code
        if status >= 500:
            return _Failure(why=f"HTTP {status}", retry=True)
        if status >= 400:
            return _Failure(why=f"HTTP {status}: {response.text[:200]}", retry=False)
        return None

    def _note_outage(self, why: str, started: float) -> None:
        self._last_error = why
        if self._failing_since is None:
            # Once per outage: further failures go to DEBUG until a POST gets through.
            self._failing_since = started
            log.warning(
                "POST %s accepted by no address (%s); further failures are logged at DEBUG "
                "until it recovers",
                self.path,
                why,
            )
        else:
            log.debug("POST %s accepted by no address (%s)", self.path, why)
