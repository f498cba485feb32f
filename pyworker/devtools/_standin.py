"""A local stand-in for Vast's autoscaler and router, for the demo and the tests.

It serves the router's public key, routes clients to the one worker it knows with a signed
``auth_data`` (as the real router does), and receives the worker's load reports, printing one
line per report. It is not a hot path, so it is a plain QuartTrio app.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from .._auth import _string_or_number
from .._payload import Fields, PayloadError
from ._signer import RouterSigner

__all__ = ["StandIn", "create_app", "describe_report", "serve_standin"]

logger = logging.getLogger("pyworker.standin")


def _print_line(line: str) -> None:
    print(line, flush=True)


def _number(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.1f}{unit}"
    return repr(value)


def describe_report(report: dict[str, Any]) -> str:
    """One human line summarising a load report.

    The 2024 report has no state field, so unless the worker sends one, it is inferred: errored
    when there is an error message, ready once benchmarked (``max_perf`` > 0), else loading.
    """
    state = report.get("state")
    if not isinstance(state, str):
        max_perf = report.get("max_perf")
        if report.get("error_msg"):
            state = "error"
        elif isinstance(max_perf, int | float) and max_perf > 0:
            state = "ready"
        else:
            state = "loading"
    return (
        f"report from worker {report.get('id', '?')}: state={state}"
        f" loadtime={_number(report.get('loadtime'), 's')}"
        f" max_perf={_number(report.get('max_perf'))}"
        f" cur_load={_number(report.get('cur_load'))}"
        f" cur_perf={_number(report.get('cur_perf'))}"
        f" in_flight={report.get('num_requests_working', '-')}"
        f" received={report.get('num_requests_recieved', '-')}"
        f" error={report.get('error_msg', '')!r}"
    )


@attrs.define(eq=False, kw_only=True)
class StandIn:
    """The stand-in's state, shared by its routes and open to tests.

    Args:
        signer: signs what ``/route/`` hands out; its public key is served at ``/pubkey/``.
        worker_url: the worker clients are routed to. Settable at any time; if unset, the first
            report that carries a ``url`` sets it (as the real autoscaler learns it).
        sign_2025: sign the 2025 message (the URL only) instead of the 2024 one.
        report_delay: seconds to wait before answering a report (a slow autoscaler).
        report_status: the status reports are answered with (a failing autoscaler).
        pubkey_failures: answer this many of the next ``/pubkey/`` requests with 500.
        max_reports: how many reports to keep.
        on_report: called with one line per report (default: print it to stdout).
    """

    signer: RouterSigner
    worker_url: str | None = None
    sign_2025: bool = False
    report_delay: float = 0.0
    report_status: int = 200
    pubkey_failures: int = 0
    max_reports: int = 1000
    on_report: Callable[[str], None] | None = _print_line
    reqnum: int = 0
    """The last reqnum handed out; each route increments it."""
    reports_received: int = attrs.field(default=0, init=False)
    """Reports received in total (``reports`` keeps only the last ``max_reports``)."""
    reports: collections.deque[dict[str, Any]] = attrs.field(init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    @reports.default
    def _make_reports(self) -> collections.deque[dict[str, Any]]:
        return collections.deque(maxlen=self.max_reports)

    def route(self, *, endpoint: object, cost: object) -> dict[str, Any]:
        """A signed answer to ``/route/``, like the router's.

        Returns:
            ``{"url", "signature", "cost", "endpoint", "reqnum", "request_idx"}``; the last one
            is an extra field (the 2025 router adds such fields) that workers must ignore.

        Raises:
            LookupError: no worker is registered yet.
        """
        url = self.worker_url
        if url is None:
            raise LookupError("no worker registered yet")
        self.reqnum += 1
        if self.sign_2025:
            auth = self.signer.sign_2025(url, cost=cost, endpoint=endpoint, reqnum=self.reqnum)
        else:
            auth = self.signer.sign(cost=cost, endpoint=endpoint, reqnum=self.reqnum, url=url)
        return {**auth, "request_idx": self.reqnum}

    def receive_report(self, report: dict[str, Any]) -> None:
        """Store a report, tell ``on_report``, and learn the worker's URL from it if unknown."""
        self.reports.append(report)
        self.reports_received += 1
        if self.worker_url is None and isinstance(report.get("url"), str) and report["url"]:
            self.worker_url = report["url"]
            logger.info("routing clients to %s (from its report)", self.worker_url)
        if self.on_report is not None:
            self.on_report(describe_report(report))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_reports(self, count: int) -> None:
        """Wait until ``count`` reports have been received in total."""
        while self.reports_received < count:
            await self._changed.wait()


async def _json_body() -> object:
    """The request body decoded as JSON; PayloadError if it is not JSON."""
    body = await request.get_data(as_text=False)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError({"": f"body is not valid JSON: {exc}"}) from None


def create_app(standin: StandIn) -> QuartTrio:
    """The stand-in's ASGI app.

    Routes: ``GET /pubkey/``, ``POST /route/``, ``POST /worker_status/`` and ``GET /reports``
    (the stored reports; the real autoscaler has no such route).
    """
    app = QuartTrio("pyworker.standin")

    @app.errorhandler(PayloadError)
    async def bad_request(exc: PayloadError) -> tuple[dict[str, Any], int]:
        errors = exc.errors
        return {"error": errors[""] if set(errors) == {""} else errors}, 400

    @app.get("/pubkey/")
    async def pubkey() -> Response:
        if standin.pubkey_failures > 0:
            standin.pubkey_failures -= 1
            return Response("key store unavailable", status=500, content_type="text/plain")
        return Response(standin.signer.public_pem(), content_type="text/plain")

    @app.post("/route/")
    async def route() -> tuple[dict[str, Any], int]:
        body = await _json_body()
        if not isinstance(body, dict):
            raise PayloadError({"": "body must be a JSON object"})
        fields = Fields(body)
        endpoint = fields.string("endpoint")
        cost = _string_or_number(fields, "cost")
        fields.check()
        try:
            return standin.route(endpoint=endpoint, cost=cost), 200
        except LookupError as exc:
            return {"error": str(exc)}, 503

    @app.post("/worker_status/")
    async def worker_status() -> tuple[dict[str, Any], int]:
        report = await _json_body()
        if not isinstance(report, dict):
            raise PayloadError({"": "report must be a JSON object"})
        standin.receive_report(report)
        if standin.report_delay > 0:
            await trio.sleep(standin.report_delay)
        return {"ok": standin.report_status < 400}, standin.report_status

    @app.get("/reports")
    async def reports() -> Response:
        return Response(json.dumps(list(standin.reports)), content_type="application/json")

    return app


async def serve_standin(
    standin: StandIn,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the stand-in until ``shutdown`` is set (then drain for up to 1 s).

    Args:
        standin: the state to serve.
        host: the address to listen on.
        port: the port (0: any free port).
        shutdown: set it to stop serving.
        task_status: ``started(base_url)`` (e.g. ``"http://127.0.0.1:41234"``) once listening.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # Log fields first: hypercorn builds its logger on the first access to config.log.
    config.accesslog = None
    config.errorlog = logging.getLogger("pyworker.standin.http")
    # Short: hypercorn 0.18 with QuartTrio holds the drain for the whole graceful_timeout while a
    # client keeps an idle keep-alive connection open, and nothing here is worth waiting for.
    config.graceful_timeout = 1.0
    app = create_app(standin)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, app, config, shutdown_trigger=shutdown.wait)
        )
        task_status.started(binds[0])
