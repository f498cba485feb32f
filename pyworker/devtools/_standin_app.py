"""The stand-in's HTTP side: its routes as a QuartTrio app, and serving it (see
:mod:`pyworker.devtools._standin` for what it stands in for)."""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from .._auth import _string_or_number
from .._payload import Fields, PayloadError
from ._standin import RouteCall, StandIn

logger = logging.getLogger("pyworker.standin")


async def _json_body() -> object:
    """The request body decoded as JSON; PayloadError if it is not JSON."""
    body = await request.get_data(as_text=False)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError({"": f"body is not valid JSON: {exc}"}) from None


def create_app(standin: StandIn) -> QuartTrio:
    """The stand-in's ASGI app.

    Routes, as the console: ``GET /api/v0/endptjobs/`` (``{"results": [...]}``),
    ``GET /api/v0/endptjobs/{id}/`` (``{"result": {...}}``), ``GET /static/jvastai_root.cer``
    and ``POST /api/v0/sign_cert/?instance_id=N`` (a PEM request in, a PEM certificate out);
    as the router: ``POST /route/``; as the autoscaler: ``GET /pubkey/``,
    ``POST /worker_status/``, ``POST /delete_requests/``; and ``GET /reports`` (the stored
    reports; the real autoscaler has no such route). Malformed bodies are answered 400.
    """
    app = QuartTrio("pyworker.standin")

    @app.errorhandler(PayloadError)
    async def bad_request(exc: PayloadError) -> tuple[dict[str, Any], int]:
        errors = exc.errors
        return {"error": errors[""] if set(errors) == {""} else errors}, 400

    # -- the console -----------------------------------------------------------------------
    def refused_account() -> tuple[dict[str, Any], int] | None:
        if standin.account_accepts(
            request.headers.get("Authorization"), request.args.get("api_key")
        ):
            return None
        return {"error": "invalid account api_key"}, 401

    @app.get("/api/v0/endptjobs/")
    async def endpoint_groups() -> tuple[dict[str, Any], int]:
        if standin.console_failures > 0:
            standin.console_failures -= 1
            return {"error": "the console is failing (stand-in knob)"}, 503
        if refusal := refused_account():
            return refusal
        return {"results": [group.to_json() for group in standin.endpoints]}, 200

    @app.get("/api/v0/endptjobs/<int:group_id>/")
    async def endpoint_group(group_id: int) -> tuple[dict[str, Any], int]:
        if refusal := refused_account():
            return refusal
        for group in standin.endpoints:
            if group.id == group_id:
                return {"result": group.to_json()}, 200
        return {"error": f"no endpoint group {group_id}"}, 404

    @app.get("/static/jvastai_root.cer")
    async def root_certificate() -> Response:
        standin.cert_downloads += 1
        return Response(standin.root_ca.root_pem(), content_type="application/x-x509-ca-cert")

    @app.post("/api/v0/sign_cert/")
    async def sign_certificate() -> Response:
        # No account key: the start script sends none, only the instance's id.
        if standin.cert_request_failures > 0:
            standin.cert_request_failures -= 1
            return Response("signing unavailable", status=500, content_type="text/plain")
        body = await request.get_data(as_text=False)
        csr_pem = body.encode() if isinstance(body, str) else body
        try:
            certificate = standin.root_ca.sign_request(csr_pem)
        except ValueError as exc:
            return Response(f"bad certificate request: {exc}", status=400)
        standin.cert_requests.append(request.args.get("instance_id", ""))
        return Response(certificate, content_type="application/x-pem-file")

    # -- the router --------------------------------------------------------------------------
    @app.post("/route/")
    async def route() -> tuple[dict[str, Any], int]:
        body = await _json_body()
        if not isinstance(body, dict):
            raise PayloadError({"": "body must be a JSON object"})
        fields = Fields(body)
        endpoint = fields.string("endpoint")
        cost = _string_or_number(fields, "cost")
        api_key = fields.string("api_key", default=None)
        request_idx = fields.integer("request_idx", default=0, minimum=0)
        replay_timeout = fields.number("replay_timeout", default=None, minimum=0)
        fields.check()
        call = RouteCall(
            endpoint=endpoint,
            cost=cost,
            api_key=api_key,
            sent_request_idx=request_idx,
            replay_timeout=replay_timeout,
            authorization=request.headers.get("Authorization"),
            query_api_key=request.args.get("api_key"),
            user_agent=request.headers.get("User-Agent"),
        )
        status, answer = standin.answer_route(call)
        return answer, status

    # -- the autoscaler ----------------------------------------------------------------------
    @app.get("/pubkey/")
    async def pubkey() -> Response:
        if standin.pubkey_failures > 0:
            standin.pubkey_failures -= 1
            return Response("key store unavailable", status=500, content_type="text/plain")
        return Response(standin.signer.public_pem(), content_type="text/plain")

    @app.post("/worker_status/")
    async def worker_status() -> tuple[dict[str, Any], int]:
        report = await _json_body()
        if not isinstance(report, dict):
            raise PayloadError({"": "report must be a JSON object"})
        standin.receive_report(report)
        if standin.report_delay > 0:
            await trio.sleep(standin.report_delay)
        return {"ok": standin.report_status < 400}, standin.report_status

    @app.post("/delete_requests/")
    async def delete_requests() -> tuple[dict[str, Any], int]:
        body = await _json_body()
        if not isinstance(body, dict):
            raise PayloadError({"": "body must be a JSON object"})
        standin.receive_deletions(body)
        return {"ok": standin.delete_status < 400}, standin.delete_status

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
