"""The worker's other routes, as a Quart-Trio app (none of them is on the hot path):
``/ping``, ``/healthcheck``, ``/status`` and ``POST /pyworker/update``."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any

import attrs
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from ._autoscaler import Autoscaler
from ._backend import Backend
from ._load import LoadTracker
from ._machine import Lifecycle
from ._upstream import UpstreamError, UpstreamPool

log = logging.getLogger("pyworker.app")


@attrs.frozen(kw_only=True)
class UpdateGate:
    """``POST /pyworker/update`` (vast-2026.md §10): Vast's rolling updates.

    Authorised by ``Authorization: Bearer <MASTER_TOKEN>`` (a bare token too); refused outright
    when no token is configured, so an unset variable never opens the route to anyone. On
    success it creates ``flag_file``, which the template's start script acts on.
    """

    mtoken: str
    flag_file: Path

    def authorised(self, header: str) -> bool:
        """Whether an ``Authorization`` header value carries the token (constant time)."""
        token = header.removeprefix("Bearer ").strip()
        return bool(self.mtoken) and hmac.compare_digest(token.encode(), self.mtoken.encode())


def create_app(
    *,
    backend: Backend,
    lifecycle: Lifecycle,
    tracker: LoadTracker,
    upstream: UpstreamPool,
    update: UpdateGate,
    sessions: Sized,
    deliveries: Mapping[str, Autoscaler],
    pending_records: Sized,
    health_timeout: float = 10.0,
) -> QuartTrio:
    """Build the Quart-Trio app of the worker's non-proxied routes."""
    app = QuartTrio("pyworker")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    @app.get("/ping")
    async def ping() -> Response:
        """Liveness of the worker itself."""
        return Response("pong", content_type="text/plain")

    @app.get("/healthcheck")
    async def healthcheck() -> Any:
        """The model server's own health answer, relayed (503 when there is none)."""
        if backend.health_path is None:
            return jsonify(state=lifecycle.current.value, healthy=lifecycle.admits_requests), (
                200 if lifecycle.admits_requests else 503
            )
        try:
            with trio.fail_after(health_timeout):
                async with await upstream.request(b"GET", backend.health_path.encode()) as resp:
                    body = await resp.read(limit=1 << 20)
        except (UpstreamError, trio.TooSlowError) as exc:
            return jsonify(error=f"model server unreachable: {exc}"), 503
        content_type = dict(resp.headers).get(b"content-type", b"text/plain").decode("latin-1")
        return Response(body, status=resp.status, content_type=content_type)

    @app.get("/status")
    async def status() -> Any:
        """What the worker is doing, for operators."""
        totals = tracker.totals(trio.current_time())
        return jsonify(
            backend=backend.name,
            state=lifecycle.current.value,
            admits_requests=lifecycle.admits_requests,
            error_msg=lifecycle.error_msg,
            max_perf=lifecycle.max_perf,
            loadtime=lifecycle.loadtime,
            in_flight=tracker.in_flight,
            pending_workload=tracker.pending_workload,
            sessions=len(sessions),
            # Work done since start: the backend's estimates, and what the model server
            # reported where it did (the estimate elsewhere).
            workload_done={
                "estimated": totals.completed_estimated,
                "actual": totals.completed,
            },
            # Whether the autoscaler hears from us (load reports, finished-request records),
            # and what waits for it: serving never depends on it, but scaling does.
            autoscaler={name: each.health().to_json() for name, each in deliveries.items()},
            records_pending=len(pending_records),
        )

    @app.post("/pyworker/update")
    async def pyworker_update() -> Any:
        """Ask the start script to update the worker (it acts on the flag file)."""
        if not update.mtoken:
            return jsonify(error="updates are disabled: no MASTER_TOKEN is configured"), 403
        if not update.authorised(request.headers.get("Authorization", "")):
            return jsonify(error="unauthorized"), 401
        try:
            await trio.Path(update.flag_file).touch()
        except OSError as exc:
            log.error("cannot write the update flag %s: %s", update.flag_file, exc)
            return jsonify(error=f"failed to write file: {exc}"), 500
        log.info("update requested: created %s", update.flag_file)
        return jsonify(ok=True), 200

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Any:
        routes = sorted({e.route for e in backend.endpoints} | {"/ping", "/healthcheck", "/status"})
        return jsonify(error="no such route", routes=routes), 404

    @app.errorhandler(405)
    async def not_allowed(_: Exception) -> Any:
        return jsonify(error="method not allowed"), 405

    return app
