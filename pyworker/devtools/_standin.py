"""A local stand-in for Vast's autoscaler, router and console, for the demo and the tests.

It speaks the newest generation's wire protocol (vastai 1.9.1), so that Vast's own client can
be pointed at it as both ``autoscaler_url`` and ``webserver_url``:

* as the **console**, it lists endpoint groups (``GET /api/v0/endptjobs/``, ``.../{id}/``),
  serves the TLS root the client trusts (``GET /static/jvastai_root.cer``, a :class:`LocalCA`)
  and signs the certificate requests of instances' start scripts with that root
  (``POST /api/v0/sign_cert/``);
* as the **router**, it answers ``POST /route/``: it gives each client request an index of its
  own (``request_idx``, kept across the client's polls and re-routes) and, once a worker is
  available, a signed ``auth_data`` naming it; knobs make it say "wait", refuse, or pick among
  several workers by a policy;
* as the **autoscaler**, it serves the router's public key (``GET /pubkey/``) and receives the
  workers' load reports (``POST /worker_status/``, one printed line each) and finished requests
  (``POST /delete_requests/``), keeping them for tests to inspect and wait for.

It is not a hot path, so it is a plain QuartTrio app.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ._describe import describe_deletions, describe_report, print_line
from ._signer import RouterSigner
from ._tls import LocalCA

__all__ = [
    "EndpointGroup",
    "RouteCall",
    "StandIn",
    "in_order",
    "round_robin",
]

logger = logging.getLogger("pyworker.standin")


_MAX_TRACKED_REQUESTS = 10_000
"""Requests whose routes are counted for :attr:`RouteCall.attempt`; the oldest are forgotten."""


_COUNT = (attrs.validators.instance_of(int), attrs.validators.ge(0))


@attrs.frozen(kw_only=True)
class EndpointGroup:
    """An endpoint group, as the console lists it to its owner.

    Args:
        id: the group's number (``GET /api/v0/endptjobs/{id}/``).
        name: its name, by which clients are routed.
        api_key: the endpoint's own key, which clients send to ``/route/`` (not the account's).
        user_id: the owner's account number.
        created_at: when it was created, in epoch seconds.
    """

    id: int = attrs.field(validator=attrs.validators.instance_of(int))
    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    api_key: str = attrs.field(validator=attrs.validators.instance_of(str))
    user_id: int = attrs.field(default=1, validator=attrs.validators.instance_of(int))
    created_at: float = attrs.field(factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """The console's entry for the group (the fields Vast's client requires)."""
        return {
            "id": self.id,
            "endpoint_name": self.name,
            "api_key": self.api_key,
            "user_id": self.user_id,
            "created_at": self.created_at,
        }


@attrs.frozen(kw_only=True)
class RouteCall:
    """One ``POST /route/``: what the client sent, and how the stand-in answered.

    A routing policy is shown the call before the answer is settled (``status`` 0, ``url``
    None).

    Attributes:
        endpoint: the endpoint group's name, as sent.
        cost: the announced workload, as sent.
        api_key: the body's ``api_key`` (None if absent).
        sent_request_idx: the body's ``request_idx``: 0 (or absent) for a new request, else the
            index the stand-in gave it earlier (a poll, or a re-route after a worker refused).
        replay_timeout: the body's ``replay_timeout`` (None if absent).
        authorization: the ``Authorization`` header (None if absent).
        query_api_key: the ``api_key`` query parameter (None if absent).
        user_agent: the ``User-Agent`` header (None if absent).
        request_idx: the request's index at the stand-in (0 if refused before it got one).
        attempt: how many times this request had been routed to a worker before this call.
        ready_before: how many calls, of all requests, had been routed to a worker before it.
        status: the HTTP status answered.
        url: the worker routed to; None when told to wait, or refused.
    """

    endpoint: object
    cost: object
    api_key: object = None
    sent_request_idx: int = 0
    replay_timeout: object = None
    authorization: str | None = None
    query_api_key: str | None = None
    user_agent: str | None = None
    request_idx: int = 0
    attempt: int = 0
    ready_before: int = 0
    status: int = 0
    url: str | None = None


RoutePolicy = Callable[[RouteCall, Sequence[str]], str]
"""Chooses the worker for a call from the (non-empty) sequence of workers."""


def round_robin(call: RouteCall, workers: Sequence[str]) -> str:
    """Each routed call goes to the next worker in turn (the stand-in's default policy)."""
    return workers[call.ready_before % len(workers)]


def in_order(call: RouteCall, workers: Sequence[str]) -> str:
    """A request's first route goes to the first worker, its re-route to the second, and so on,
    the last worker taking any further attempt: a full first worker sends clients on."""
    return workers[min(call.attempt, len(workers) - 1)]


@attrs.define(eq=False, kw_only=True)
class StandIn:
    """The stand-in's state, shared by its routes and open to tests.

    Every knob can be changed at any time, also while clients are being served.

    Args:
        signer: signs what ``/route/`` hands out; its public key is served at ``/pubkey/``.
        worker_url: the worker clients are routed to. Settable at any time; if unset, the first
            report that carries a ``url`` sets it (as the real autoscaler learns it).
        worker_urls: several workers to route among, by ``route_policy``; when empty, routes
            go to ``worker_url`` alone.
        route_policy: picks a worker for each routed call (default :func:`round_robin`; see
            also :func:`in_order`).
        sign_2025: sign the 2025 message (the URL only) instead of the 2024 one.
        endpoints: the endpoint groups the console lists.
        account_key: the account key the console requires (as ``Authorization: Bearer`` or
            ``?api_key=``); None accepts any.
        console_failures: answer this many of the next endpoint-list calls 503.
        require_endpoint_key: refuse ``/route/`` with 401 unless its ``endpoint`` names one of
            ``endpoints`` and its ``api_key`` is that group's key.
        route_waits: answer this many of the next routable ``/route/`` calls with "wait"
            (``{"request_idx": N}``, no ``url``), as the router does while no worker is ready.
        route_failures: refuse this many of the next ``/route/`` calls with
            ``route_failure_status``.
        route_failure_status: the status of those refusals.
        first_request_idx: the index given to the first new request (then counting up), far
            from the ``reqnum`` values so that tests can tell the two apart.
        report_delay: seconds to wait before answering a report (a slow autoscaler).
        report_status: the status reports are answered with (a failing autoscaler).
        delete_status: the status ``/delete_requests/`` is answered with.
        pubkey_failures: answer this many of the next ``/pubkey/`` requests with 500.
        max_reports: how many reports, deletion bodies and route calls to keep (each).
        on_report: called with one line per report whose figures changed, and per deletion
            body (default: print it).
        root_ca: the CA whose root is served as Vast's TLS root (default: a new one).
    """

    signer: RouterSigner
    worker_url: str | None = None
    worker_urls: list[str] = attrs.field(factory=list)
    route_policy: RoutePolicy = round_robin
    sign_2025: bool = False
    endpoints: list[EndpointGroup] = attrs.field(factory=list)
    account_key: str | None = None
    console_failures: int = attrs.field(default=0, validator=_COUNT)
    require_endpoint_key: bool = False
    route_waits: int = attrs.field(default=0, validator=_COUNT)
    route_failures: int = attrs.field(default=0, validator=_COUNT)
    route_failure_status: int = attrs.field(
        default=503,
        validator=[
            attrs.validators.instance_of(int),
            attrs.validators.ge(400),
            attrs.validators.le(599),
        ],
    )
    first_request_idx: int = attrs.field(default=7000, validator=attrs.validators.ge(1))
    report_delay: float = 0.0
    report_status: int = 200
    delete_status: int = 200
    pubkey_failures: int = 0
    max_reports: int = 1000
    on_report: Callable[[str], None] | None = print_line
    root_ca: LocalCA = attrs.field(factory=LocalCA.generate)
    reqnum: int = 0
    """The last reqnum handed out; each route to a worker increments it."""
    _last_line: str = attrs.field(default="", init=False)
    reports_received: int = attrs.field(default=0, init=False)
    """Reports received in total (``reports`` keeps only the last ``max_reports``)."""
    reports: collections.deque[dict[str, Any]] = attrs.field(init=False)
    deletions_received: int = attrs.field(default=0, init=False)
    """``/delete_requests/`` bodies received in total."""
    deletions: collections.deque[dict[str, Any]] = attrs.field(init=False)
    """The last ``/delete_requests/`` bodies, as received."""
    routes_received: int = attrs.field(default=0, init=False)
    """``/route/`` calls answered in total (malformed ones excepted)."""
    route_calls: collections.deque[RouteCall] = attrs.field(init=False)
    """The last ``/route/`` calls, with their answers."""
    cert_downloads: int = attrs.field(default=0, init=False)
    """How many times the TLS root was downloaded."""
    cert_requests: list[str] = attrs.field(factory=list, init=False)
    """The ``instance_id`` of each certificate request signed, in order."""
    cert_request_failures: int = 0
    """Answer this many of the next certificate requests with 500 (a console in trouble)."""
    _next_request_idx: int = attrs.field(init=False)
    _attempts: dict[int, int] = attrs.field(factory=dict, init=False)
    _ready: int = attrs.field(default=0, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    @reports.default
    def _make_reports(self) -> collections.deque[dict[str, Any]]:
        return collections.deque(maxlen=self.max_reports)

    @deletions.default
    def _make_deletions(self) -> collections.deque[dict[str, Any]]:
        return collections.deque(maxlen=self.max_reports)

    @route_calls.default
    def _make_route_calls(self) -> collections.deque[RouteCall]:
        return collections.deque(maxlen=self.max_reports)

    @_next_request_idx.default
    def _first_index(self) -> int:
        return self.first_request_idx

    @property
    def workers(self) -> tuple[str, ...]:
        """The workers routed among: ``worker_urls``, or else ``worker_url`` alone, if set."""
        if self.worker_urls:
            return tuple(self.worker_urls)
        return () if self.worker_url is None else (self.worker_url,)

    def endpoint_group(self, name: object) -> EndpointGroup | None:
        """The endpoint group called ``name``, if the console lists one."""
        return next((group for group in self.endpoints if group.name == name), None)

    def account_accepts(self, authorization: str | None, api_key: str | None) -> bool:
        """Whether a console request with this header and ``?api_key=`` is the account's."""
        if self.account_key is None:
            return True
        return authorization == f"Bearer {self.account_key}" or api_key == self.account_key

    # -- the router --------------------------------------------------------------------------
    def answer_route(self, call: RouteCall) -> tuple[int, dict[str, Any]]:
        """Answer one ``/route/`` call, and keep it in ``route_calls``.

        The checks, in order: the endpoint's key (401, with ``require_endpoint_key``),
        ``route_failures``, then the request gets its index (a new one unless the call names
        one), ``route_waits``, no worker known (503); else the call is routed to the worker
        ``route_policy`` picks.

        Returns:
            The status and the JSON answer: ``{"error"}`` for a refusal; ``{"request_idx"}``
            for "wait"; when routed, the signed ``auth_data``, ``{"cost", "endpoint",
            "reqnum", "request_idx", "signature", "url"}`` (the values of ``cost`` and
            ``endpoint`` as sent).
        """
        status, answer, call = self._decide(call)
        self.route_calls.append(call)
        self.routes_received += 1
        self._notify()
        return status, answer

    def _decide(self, call: RouteCall) -> tuple[int, dict[str, Any], RouteCall]:
        """The status, the answer, and the call as logged (with its index and outcome)."""

        def refuse(status: int, error: str) -> tuple[int, dict[str, Any], RouteCall]:
            return status, {"error": error}, attrs.evolve(call, status=status)

        if self.require_endpoint_key:
            group = self.endpoint_group(call.endpoint)
            if group is None or call.api_key != group.api_key:
                return refuse(401, "unknown endpoint or wrong api_key")
        if self.route_failures > 0:
            self.route_failures -= 1
            return refuse(self.route_failure_status, "routing refused (route_failures)")
        # From here on the request has its index: the one it was given before, if it names
        # one (a poll, or a re-route after a worker refused it), else the next one.
        index = call.sent_request_idx
        if index == 0:
            index = self._next_request_idx
            self._next_request_idx += 1
        call = attrs.evolve(
            call, request_idx=index, attempt=self._attempts.get(index, 0), ready_before=self._ready
        )
        if self.route_waits > 0:
            self.route_waits -= 1
            return 200, {"request_idx": index}, attrs.evolve(call, status=200)
        workers = self.workers
        if not workers:
            return refuse(503, "no worker registered yet")
        url = self.route_policy(call, workers)
        self._ready += 1
        self._attempts[index] = call.attempt + 1
        if len(self._attempts) > _MAX_TRACKED_REQUESTS:
            del self._attempts[next(iter(self._attempts))]  # the first routed of those kept
        answer = self._sign(endpoint=call.endpoint, cost=call.cost, url=url, request_idx=index)
        return 200, answer, attrs.evolve(call, status=200, url=url)

    def _sign(
        self, *, endpoint: object, cost: object, url: str, request_idx: int
    ) -> dict[str, Any]:
        self.reqnum += 1
        if self.sign_2025:
            auth = self.signer.sign_2025(url, cost=cost, endpoint=endpoint, reqnum=self.reqnum)
        else:
            auth = self.signer.sign(cost=cost, endpoint=endpoint, reqnum=self.reqnum, url=url)
        return {**auth, "request_idx": request_idx}

    def route(self, *, endpoint: object, cost: object) -> dict[str, Any]:
        """Route a new request, as ``POST /route/`` with this body would (knobs included).

        Returns:
            The signed ``auth_data``, see :meth:`answer_route`.

        Raises:
            LookupError: the request was not routed (no worker registered yet, refused, or told
                to wait).
        """
        status, answer = self.answer_route(RouteCall(endpoint=endpoint, cost=cost))
        if status != 200 or "url" not in answer:
            raise LookupError(answer.get("error", "told to wait"))
        return answer

    # -- the autoscaler ----------------------------------------------------------------------
    def receive_report(self, report: dict[str, Any]) -> None:
        """Store a report, tell ``on_report``, and learn the worker's URL from it if unknown."""
        self.reports.append(report)
        self.reports_received += 1
        if self.worker_url is None and isinstance(report.get("url"), str) and report["url"]:
            self.worker_url = report["url"]
            logger.info("routing clients to %s (from its report)", self.worker_url)
        line = describe_report(report)
        # A line per change: the same figures again (a heartbeat every 10 s) are not repeated.
        if self.on_report is not None and line != self._last_line:
            self.on_report(line)
        self._last_line = line
        self._notify()

    def receive_deletions(self, body: dict[str, Any]) -> None:
        """Store a ``/delete_requests/`` body and tell ``on_report``."""
        self.deletions.append(body)
        self.deletions_received += 1
        if self.on_report is not None:
            self.on_report(describe_deletions(body))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, check: Callable[[], object]) -> None:
        """Wait until ``check()`` is true: tried now, then after each report, deletion body
        and route call received. Bound it with ``trio.fail_after``."""
        while not check():
            await self._changed.wait()

    async def wait_for_reports(self, count: int) -> None:
        """Wait until ``count`` reports have been received in total."""
        await self.wait_until(lambda: self.reports_received >= count)

    async def wait_for_deletions(self, count: int) -> None:
        """Wait until ``count`` ``/delete_requests/`` bodies have been received in total."""
        await self.wait_until(lambda: self.deletions_received >= count)

    async def wait_for_routes(self, count: int) -> None:
        """Wait until ``count`` ``/route/`` calls have been answered in total."""
        await self.wait_until(lambda: self.routes_received >= count)
