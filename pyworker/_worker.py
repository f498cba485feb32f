"""The worker: one nursery holding the proxy, log tailer, benchmark runner, health checker and
metrics pusher, driven by the lifecycle machine."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ._admission import Admission
from ._app import create_app
from ._auth import Authenticator, run_key_loader
from ._backend import Backend, LogAction, RunContext
from ._benchmark import (
    BenchmarkCache,
    BenchmarkError,
    BenchmarkResult,
    BenchmarkSettings,
    cache_key,
    run_benchmark,
)
from ._config import WorkerConfig
from ._health import HealthChecker
from ._lifecycle import Lifecycle, State, StateChange, Trigger
from ._load import LoadTracker
from ._logtail import LogTailer
from ._proxy import Proxy, ProxyLimits
from ._reporter import Report, Reporter
from ._upstream import UpstreamPool
from ._watch import LifecycleWatch

log = logging.getLogger("pyworker")

_MAX_LOG_REASON = 500


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """What :meth:`Worker.serve` hands to ``task_status.started`` once it listens."""

    bound_urls: tuple[str, ...]
    url: str


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
    lifecycle: Lifecycle = attrs.field(init=False)
    tracker: LoadTracker = attrs.field(init=False)
    watch: LifecycleWatch = attrs.field(init=False)
    last_benchmark: BenchmarkResult | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # The lifecycle and tracker exist before serve() so tests and embedders can inspect
        # them; their clocks start when serve() runs.
        self.lifecycle = Lifecycle(started_at=0.0)
        self.tracker = LoadTracker(now=0.0)
        self.watch = LifecycleWatch(self.lifecycle)
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

        ``task_status.started(WorkerInfo)`` once the HTTP server accepts connections (the
        model may still be loading: the lifecycle says so).
        """
        config = self.config
        now = trio.current_time()
        self.lifecycle.load_started_at = now
        self.tracker = LoadTracker(now=now)
        host, port = _host_port(self.model_server_url)
        upstream = UpstreamPool(
            host=host,
            port=port,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
        async with (
            httpx.AsyncClient(timeout=timeout, trust_env=False) as http,
            upstream,
            trio.open_nursery() as services,
        ):
            authenticator = Authenticator(
                unsecured=config.unsecured,
                accept_2025=config.accept_2025_signatures,
                own_url=config.public_url or None,
            )
            run_context = RunContext(model_server_url=self.model_server_url, http=http)
            proxy = Proxy(
                backend=self.backend,
                lifecycle=self.lifecycle,
                tracker=self.tracker,
                admission=Admission(
                    tracker=self.tracker,
                    max_queue_time=config.max_queue_time,
                    parallel=self.backend.allow_parallel_requests,
                ),
                authenticator=authenticator,
                upstream=upstream,
                run_context=run_context,
                fallback=create_app(
                    backend=self.backend,
                    lifecycle=self.lifecycle,
                    tracker=self.tracker,
                    upstream=upstream,
                    health_timeout=config.health_timeout,
                ),
                limits=ProxyLimits(
                    max_body_bytes=config.max_body_bytes, body_timeout=config.body_timeout
                ),
            )
            reporter = Reporter(
                addresses=config.report_addrs,
                container_id=config.container_id,
                url=config.url,
                lifecycle=self.lifecycle,
                tracker=self.tracker,
                http=http,
                disk_path=config.disk_path,
                mtoken=config.mtoken,
                on_report=self.on_report,
            )
            if not config.unsecured:
                pubkey_urls = (
                    [config.pubkey_url]
                    if config.pubkey_url
                    else [f"{addr}/pubkey/" for addr in config.report_addrs]
                )
                await services.start(
                    partial(
                        run_key_loader,
                        authenticator,
                        urls=pubkey_urls,
                        pem_file=config.pubkey_file or None,
                        pem_text=config.pubkey_pem or None,
                        http=http,
                    )
                )
            await services.start(self._run_benchmarks, upstream, run_context)
            if self.backend.health_path is not None:
                checker = HealthChecker(
                    upstream=upstream,
                    path=self.backend.health_path,
                    watch=self.watch,
                    interval=config.health_interval,
                    timeout=config.health_timeout,
                    failures=config.health_failures,
                )
                await services.start(checker.run)
            if config.report_addrs:
                await services.start(reporter.run)
            else:
                log.warning("no REPORT_ADDR: load reports are not sent anywhere")
            assert config.model_log is not None
            tailer = LogTailer(path=config.model_log)
            await services.start(tailer.run, self._on_log_line, self._on_new_log)

            server_stop = trio.Event()
            async with trio.open_nursery() as server:
                bound = await server.start(
                    partial(
                        hypercorn_serve,
                        cast(Any, proxy),
                        self._hypercorn_config(),
                        shutdown_trigger=server_stop.wait,
                    )
                )
                task_status.started(WorkerInfo(bound_urls=tuple(bound), url=config.url))
                await shutdown.wait()
                await self._drain(proxy)
                server_stop.set()
            if config.report_addrs:
                await reporter.send_final()
            services.cancel_scope.cancel()

    async def _drain(self, proxy: Proxy) -> None:
        lifecycle, tracker = self.lifecycle, self.tracker
        lifecycle.fire(Trigger.SHUTDOWN, now=trio.current_time())
        if tracker.in_flight:
            log.info(
                "draining: waiting for %d request(s) in flight (up to %g s)",
                tracker.in_flight,
                self.config.drain_timeout,
            )
        with trio.move_on_after(self.config.drain_timeout) as deadline:
            await proxy.wait_idle()
        if deadline.cancelled_caught:
            log.warning(
                "drain deadline passed with %d request(s) in flight; cutting them off",
                tracker.in_flight,
            )
        lifecycle.fire(Trigger.DRAINED, now=trio.current_time())

    def _hypercorn_config(self) -> HypercornConfig:
        config = HypercornConfig()
        # Log fields first: hypercorn caches its logger on first access of config.log.
        config.accesslog = None
        config.errorlog = logging.getLogger("pyworker.http")
        config.bind = [f"{self.config.host}:{self.config.port}"]
        # Requests have already drained when the trigger fires; this only bounds stragglers.
        config.graceful_timeout = 2.0
        config.keep_alive_timeout = 75.0
        # The router and load balancers keep connections for long: hypercorn's default of
        # closing every connection after 1,000 requests costs reconnects (TLS handshakes).
        config.keep_alive_max_requests = 1_000_000
        config.include_server_header = False
        if self.config.use_ssl:
            config.certfile = self.config.ssl_certfile
            config.keyfile = self.config.ssl_keyfile
        return config

    # -- model log ---------------------------------------------------------------------------
    def _on_log_line(self, line: str) -> None:
        rule = self.backend.classify(line)
        if rule is None:
            return
        now = trio.current_time()
        text = line.strip()[:_MAX_LOG_REASON]
        if rule.action is LogAction.MODEL_LOADED:
            self.lifecycle.fire(Trigger.MODEL_LOADED, now=now)
        elif rule.action is LogAction.MODEL_ERROR:
            self.lifecycle.fire(Trigger.MODEL_FAILED, now=now, reason=text)
        else:
            log.info("model server: %s", text)

    def _on_new_log(self) -> None:
        log.info("model log was replaced or truncated: the model server restarted")
        self.lifecycle.fire(Trigger.MODEL_RESTARTED, now=trio.current_time())

    # -- benchmark ---------------------------------------------------------------------------
    async def _run_benchmarks(
        self,
        upstream: UpstreamPool,
        context: RunContext,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        while True:
            await self.watch.wait_state(State.BENCHMARKING)
            outcome = await self.watch.run_while(
                State.BENCHMARKING, partial(self._try_measure, upstream, context)
            )
            if outcome is None:
                continue  # the state moved on (restart, error, shutdown) mid-benchmark
            now = trio.current_time()
            if isinstance(outcome, BenchmarkError):
                self.lifecycle.fire(Trigger.BENCHMARK_FAILED, now=now, reason=str(outcome))
            else:
                self.last_benchmark = outcome
                self.lifecycle.fire(Trigger.BENCHMARK_DONE, now=now, max_perf=outcome.max_perf)

    async def _try_measure(
        self, upstream: UpstreamPool, context: RunContext
    ) -> BenchmarkResult | BenchmarkError:
        try:
            return await self._measure(upstream, context)
        except BenchmarkError as exc:
            return exc

    async def _measure(self, upstream: UpstreamPool, context: RunContext) -> BenchmarkResult:
        settings = BenchmarkSettings.for_backend(self.backend, self.config.benchmark_runs)
        key = cache_key(self.backend, self.backend.model_id(os.environ), settings)
        cache = BenchmarkCache(directory=self.config.state_dir)
        if not self.config.force_benchmark:
            cached = await cache.load(key)
            if cached is not None:
                log.info(
                    "benchmark: using the cached capacity %.1f/s (key %s)", cached.max_perf, key
                )
                return cached
        result = await run_benchmark(
            self.backend, settings, upstream=upstream, context=context, key=key
        )
        log.info(
            "benchmark: capacity %.1f workload/s (%d runs, %.1f s)",
            result.max_perf,
            result.runs,
            result.elapsed,
        )
        try:
            await cache.store(result)
        except OSError as exc:
            log.warning(
                "could not cache the benchmark result in %s: %s", self.config.state_dir, exc
            )
        return result
