"""The worker's non-proxied routes, as a Quart-Trio app (none of them is on the hot path)."""

from __future__ import annotations

from typing import Any

import trio
from quart import Response, jsonify
from quart_trio import QuartTrio

from ._backend import Backend
from ._lifecycle import Lifecycle
from ._load import LoadTracker
from ._upstream import UpstreamError, UpstreamPool


def create_app(
    *,
    backend: Backend,
    lifecycle: Lifecycle,
    tracker: LoadTracker,
    upstream: UpstreamPool,
    health_timeout: float = 10.0,
) -> QuartTrio:
    """Build the Quart-Trio app serving ``/ping``, ``/healthcheck`` and ``/status``."""
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
        return jsonify(
            backend=backend.name,
            state=lifecycle.current.value,
            error_msg=lifecycle.error_msg,
            max_perf=lifecycle.max_perf,
            in_flight=tracker.in_flight,
            pending_workload=tracker.pending_workload,
        )

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Any:
        routes = sorted({e.route for e in backend.endpoints} | {"/ping", "/healthcheck", "/status"})
        return jsonify(error="no such route", routes=routes), 404

    @app.errorhandler(405)
    async def not_allowed(_: Exception) -> Any:
        return jsonify(error="method not allowed"), 405

    return app
