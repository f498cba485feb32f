"""The worker: one nursery holding the HTTP server and the services the lifecycle table names,
driven by the lifecycle machine."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import httpx
import trio
from prometheus_client.registry import CollectorRegistry

from ._admission import Admission
from ._app import UpdateGate, create_app
from ._auth import Authenticator
from ._autoscaler import Autoscaler
from ._backend import Backend
from ._benchcache import measured_capacity
from ._benchmark import BenchmarkError, BenchmarkResult
from ._config import WorkerConfig
from ._health import HealthChecker
from ._lifecycle import Service, State, Trigger
from ._load import LoadTracker
from ._machine import Lifecycle, StateChange
from ._metrics import MetricsRoute, RequestMetrics, WorkerCollector, registry_for
from ._model import ModelServer
from ._modellog import ModelLog
from ._pipeline import Pipeline
from ._probe import LOAD_PROBE_TIMEOUT, STALL_PROBE_PAUSE, Backoff, probe
from ._pubkey import configured_key, keep_key, pubkey_urls
from ._records import RecordSender, RequestLog, records_autoscaler
from ._report import Report, ReportFormat
from ._reporter import Reporter
from ._server import ConnectionCap, connection_cap, hypercorn_config
from ._server import serve as serve_http
from ._session_routes import InternalApp
from ._sessions import Sessions
from ._stages import Limits
from ._upstream import UpstreamPool
from ._watch import Finals, LifecycleWatch, run_in_states
from ._watchdog import Pace, Stall, Watchdog

log = logging.getLogger("pyworker")


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """What :meth:`Worker.serve` hands to ``task_status.started`` once it listens."""

    bound_urls: tuple[str, ...]
    """Where the public listener listens."""
    url: str
    """The public URL (what the router signs)."""
    internal_url: str
    """The internal plain-HTTP listener (``POST /session/end`` only)."""
    metrics_url: str
    """Where ``GET /metrics`` is served: the public listener, or ``--metrics-port``'s."""


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"model server URL must be http://HOST:PORT, not {url!r}")
    return parts.hostname, parts.port or 80


@attrs.define(eq=False)
class Worker:
    """A worker for one backend and one configuration.

    Args:
        config: the configuration (checked by the caller).
        backend: the backend it serves.
        on_change: called after every lifecycle transition (e.g. to print it).
        on_report: called with every load report built.
    """

    config: WorkerConfig
    backend: Backend
    on_change: Callable[[StateChange], None] | None = None
    on_report: Callable[[Report], None] | None = None
    authenticator: Authenticator = attrs.field(init=False)
    lifecycle: Lifecycle = attrs.field(init=False)
    tracker: LoadTracker = attrs.field(init=False)
    watch: LifecycleWatch = attrs.field(init=False)
    records: RequestLog = attrs.field(factory=RequestLog, init=False)
    """Ended requests and sessions not yet accepted by the router's ``/delete_requests/``."""
    last_benchmark: BenchmarkResult | None = attrs.field(default=None, init=False)
    watchdog: Watchdog = attrs.field(init=False)
    """Follows every request sent to the model server, for stalls."""
    metrics: RequestMetrics = attrs.field(factory=RequestMetrics, init=False)
    """What ``/metrics`` shows of the requests."""
    _health: HealthChecker | None = attrs.field(default=None, init=False)
    _load_backoff: Backoff = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # These exist before serve() so tests and embedders can inspect them; their clocks
        # start when serve() runs.
        config = self.config
        self.authenticator = Authenticator(
            unsecured=config.unsecured,
            accept_2025=config.accept_2025_signatures,
            # The URL the router signs; without a public address known, the local one, so a
            # request signed for another worker is never accepted here.
            own_url=config.url,
        )
        self.lifecycle = Lifecycle(started_at=0.0, key_known=lambda: self.authenticator.has_key)
        self.tracker = LoadTracker(now=0.0)
        self.watch = LifecycleWatch(self.lifecycle)
        self.watchdog = Watchdog(
            stall_timeout=config.stall_timeout,
            pace=lambda: Pace.of(self.last_benchmark),
            total_timeout=config.total_timeout,
        )
        self._load_backoff = Backoff(initial=config.probe_interval, maximum=300.0)
        self.lifecycle.subscribe(self._on_change)
        if self.on_change is not None:
            self.lifecycle.subscribe(self.on_change)

    @property
    def model_server_url(self) -> str:
        """The model server's base URL."""
        return (self.config.model_server_url or self.backend.model_server_url).rstrip("/")

    async def serve(
        self,
        *,
        shutdown: trio.Event,
        task_status: trio.TaskStatus[WorkerInfo] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the worker until ``shutdown`` is set, then drain and stop.

        The services of the lifecycle table run in one nursery, each in the states the table
        gives it; the HTTP server runs beside them. On ``shutdown`` the worker drains (no new
        requests; those in flight finish, up to the drain timeout), stops the server, lets the
        reporter send the final report, and only then cancels what is left.

        Args:
            shutdown: set it to stop the worker.
            task_status: ``started(WorkerInfo)`` once the HTTP server accepts connections (the
                model may still be loading: the lifecycle says so).

        Raises:
            ValueError: the configured router key is not an RSA public key in PEM.
            OSError: the key file cannot be read, or the port cannot be bound.
        """
        config = self.config
        self.lifecycle.load_started_at = trio.current_time()
        self.tracker = LoadTracker(now=trio.current_time())
        if not config.unsecured:
            pem = await configured_key(pem_text=config.pubkey_pem, pem_file=config.pubkey_file)
            if pem is not None:
                self.authenticator.set_public_key(pem)
        host, port = _host_port(self.model_server_url)
        upstream = UpstreamPool(
            host=host,
            port=port,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            first_byte_timeout=config.first_byte_timeout or config.read_timeout,
        )
        timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
        async with (
            httpx.AsyncClient(timeout=timeout, trust_env=False) as http,
            upstream,
            trio.open_nursery() as services,
        ):
            model = ModelServer(url=self.model_server_url, upstream=upstream, http=http)
            admission = Admission(
                tracker=self.tracker,
                capacity=lambda: self.lifecycle.max_perf,
                max_queue_time=config.max_queue_time,
                parallel=self.backend.allow_parallel_requests,
                records=self.records,
            )
            sessions = Sessions(
                tracker=self.tracker,
                records=self.records,
                model_url=self.model_server_url,
                http=http,
                max_sessions=config.max_sessions,
            )
            finals = Finals()
            reports = Autoscaler(addresses=config.report_addrs, path="/worker_status/", http=http)
            deliveries = {
                "reports": reports,
                "records": records_autoscaler(config.report_addrs, http),
            }
            for service, run in self._services(model, http, sessions, deliveries, finals).items():
                await services.start(run_in_states, self.watch, service, run)
            registry = registry_for(
                WorkerCollector(
                    metrics=self.metrics,
                    lifecycle=self.lifecycle,
                    tracker=self.tracker,
                    deliveries=deliveries,
                    records_pending=self.records,
                )
            )
            app = create_app(
                backend=self.backend,
                lifecycle=self.lifecycle,
                tracker=self.tracker,
                upstream=upstream,
                update=UpdateGate(mtoken=config.mtoken, flag_file=Path(config.update_flag_file)),
                sessions=sessions,
                deliveries=deliveries,
                pending_records=self.records,
                health_timeout=config.health_timeout,
            )

            pipeline = Pipeline(
                backend=self.backend,
                lifecycle=self.lifecycle,
                authenticator=self.authenticator,
                admission=admission,
                sessions=sessions,
                model=model,
                watchdog=self.watchdog,
                # /metrics on the public port, unless it has one of its own.
                fallback=app if config.metrics_port is not None else MetricsRoute(registry, app),
                limits=Limits(
                    max_body_bytes=config.max_body_bytes, body_timeout=config.body_timeout
                ),
                metrics=self.metrics,
                on_model_failure=self._on_model_failure,
            )
            server_stop = trio.Event()
            async with trio.open_nursery() as server:
                info = await self._listen(server, pipeline, registry, server_stop)
                task_status.started(info)
                await shutdown.wait()
                await self._drain(admission, sessions)
                server_stop.set()
            # Stopped: the reporter and the record sender make their last deliveries (each
            # bounded by its own deadline) and return; everything else the table runs has
            # stopped with the drain.
            await finals.wait()
            services.cancel_scope.cancel()

    async def _listen(
        self,
        nursery: trio.Nursery,
        pipeline: Pipeline,
        registry: CollectorRegistry,
        stop: trio.Event,
    ) -> WorkerInfo:
        """Start the listeners in ``nursery``: public, internal, and metrics (if on a port of
        its own); they drain and stop when ``stop`` is set."""
        config = self.config

        async def listen(app: object, port: int, *, public: bool = False) -> list[str]:
            tls = public and config.use_ssl
            bound: list[str] = await nursery.start(
                partial(
                    serve_http,
                    cast(Any, app),
                    hypercorn_config(
                        config.host,
                        port,
                        keep_alive_timeout=config.keep_alive_timeout,
                        certfile=config.ssl_certfile if tls else None,
                        keyfile=config.ssl_keyfile,
                    ),
                    cap=ConnectionCap(limit=config.max_connections or connection_cap())
                    if public
                    else None,
                    shutdown_trigger=stop.wait,
                )
            )
            return bound

        bound = await listen(pipeline, config.port, public=True)
        internal = await listen(InternalApp(pipeline), config.internal_port)
        metrics = bound
        if config.metrics_port is not None:
            metrics = await listen(MetricsRoute(registry), config.metrics_port)
        return WorkerInfo(
            bound_urls=tuple(bound),
            url=config.url,
            internal_url=internal[0],
            metrics_url=metrics[0] + "/metrics",
        )

    def _services(
        self,
        model: ModelServer,
        http: httpx.AsyncClient,
        sessions: Sessions,
        deliveries: Mapping[str, Autoscaler],
        finals: Finals,
    ) -> dict[Service, Callable[[], Awaitable[object]]]:
        """One run of each service of the lifecycle table (see :class:`Service`)."""
        config = self.config
        self._health = health = (
            None
            if self.backend.health_path is None
            else HealthChecker(
                upstream=model.upstream,
                path=self.backend.health_path,
                lifecycle=self.lifecycle,
                interval=config.health_interval,
                timeout=config.health_timeout,
                failures=config.health_failures,
            )
        )
        reporter = Reporter(
            autoscaler=deliveries["reports"],
            fmt=ReportFormat(config.report_format),
            container_id=config.container_id,
            url=config.url,
            lifecycle=self.lifecycle,
            tracker=self.tracker,
            disk_path=config.disk_path,
            mtoken=config.mtoken,
            on_report=self.on_report,
        )
        sender = RecordSender(
            log=self.records,
            autoscaler=deliveries["records"],
            lifecycle=self.lifecycle,
            worker_id=config.container_id,
            mtoken=config.mtoken,
        )
        if not config.report_addrs:
            log.warning("no REPORT_ADDR: load reports are not sent anywhere")

        async def idle() -> None:
            pass

        probe_endpoint = self.backend.endpoint(self.backend.benchmark_route)
        model_log = ModelLog(
            backend=self.backend,
            lifecycle=self.lifecycle,
            path=config.model_log,
            load_timeout=config.load_timeout,
            health=health,
        )

        return {
            Service.LOAD_TIMEOUT: model_log.time_load,
            Service.LOG_TAIL: model_log.tail,
            Service.BENCHMARK: partial(self._benchmark, model),
            Service.HEALTH_CHECKS: idle if health is None else health.run,
            Service.WATCHDOG: partial(self.watchdog.run, self._on_stall),
            Service.STALL_PROBE: partial(
                probe,
                probe_endpoint,
                model,
                within=lambda job: self.watchdog.limit_alone(job.workload),
                pause=lambda: STALL_PROBE_PAUSE,
                on_answered=self._on_progress,
                waiting_for="works again",
            ),
            Service.LOAD_PROBE: partial(
                probe,
                probe_endpoint,
                model,
                within=lambda job: LOAD_PROBE_TIMEOUT,
                pause=self._load_backoff.next,
                on_answered=self._on_loaded_without_a_line,
                waiting_for="is loaded",
                first_at_once=False,
                level=logging.DEBUG,
            ),
            Service.KEY_FETCH: partial(self._fetch_key, http),
            Service.REPORTS: finals.track(reporter.run),
            Service.RECORDS: finals.track(sender.run),
            Service.SESSIONS: sessions.run,
            Service.LAG_PROBE: self.metrics.probe_lag,
        }

    async def _drain(self, admission: Admission, sessions: Sessions) -> None:
        lifecycle, tracker = self.lifecycle, self.tracker
        lifecycle.fire(Trigger.SHUTDOWN, now=trio.current_time())
        if tracker.in_flight:
            log.info(
                "draining: waiting for %d request(s) in flight (up to %g s)",
                tracker.in_flight,
                self.config.drain_timeout,
            )
        with trio.move_on_after(self.config.drain_timeout) as deadline:
            await admission.wait_idle()
        if deadline.cancelled_caught:
            log.warning(
                "drain deadline passed with %d request(s) in flight; cutting them off",
                tracker.in_flight,
            )
        # The requests are done: now the sessions end cleanly, their on_close called.
        await sessions.end_all("the worker is shutting down")
        lifecycle.fire(Trigger.DRAINED, now=trio.current_time())

    # -- stalls ------------------------------------------------------------------------------
    def _on_stall(self, stall: Stall) -> None:
        self.lifecycle.fire(Trigger.STALLED, now=trio.current_time(), reason=stall.reason)

    def _on_change(self, change: StateChange) -> None:
        if change.dest is State.READY:
            self._load_backoff.reset()  # the next load is probed from the shortest pause

    def _on_progress(self) -> None:
        self.lifecycle.fire(Trigger.PROGRESSED, now=trio.current_time())

    def _on_loaded_without_a_line(self) -> None:
        reason = "the model server answered a probe request"
        self.lifecycle.fire(Trigger.MODEL_LOADED, now=trio.current_time(), reason=reason)

    def _on_model_failure(self, why: str) -> None:
        # A request the model server failed (unreachable, broken): while ready, a health check
        # confirms it at once rather than after three periodic ones (see HealthChecker.suspect).
        if self._health is not None:
            self._health.suspect(f"model server failing requests: {why}")

    # -- the router's key --------------------------------------------------------------------
    async def _fetch_key(self, http: httpx.AsyncClient) -> None:
        config = self.config
        urls = [config.pubkey_url] if config.pubkey_url else pubkey_urls(config.report_addrs)
        await keep_key(
            self.authenticator,
            urls=urls,
            http=http,
            on_loaded=lambda: self.lifecycle.fire(Trigger.KEY_LOADED, now=trio.current_time()),
        )

    # -- benchmark ---------------------------------------------------------------------------
    async def _benchmark(self, model: ModelServer) -> None:
        try:
            result = await measured_capacity(
                self.backend,
                model,
                cache_dir=self.config.state_dir,
                runs=self.config.benchmark_runs,
                force=self.config.force_benchmark,
            )
        except BenchmarkError as exc:
            self.lifecycle.fire(Trigger.BENCHMARK_FAILED, now=trio.current_time(), reason=str(exc))
            return
        self.last_benchmark = result
        self.lifecycle.fire(
            Trigger.BENCHMARK_DONE, now=trio.current_time(), max_perf=result.max_perf
        )
