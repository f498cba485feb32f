"""``python -m pyworker``: the command line."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from functools import partial
from typing import NoReturn

import attrs
import trio

from ._backend import Backend
from ._config import (
    ENV_OPTIONS,
    ConfigError,
    WorkerConfig,
    default_state_dir,
    demo_reason,
    load_config,
)
from ._logs import setup_logging
from ._machine import StateChange
from ._process import free_port, port_available
from ._registry import UnknownBackendError, available_backends, load_backend
from ._server import raise_open_files_limit

log = logging.getLogger("pyworker")

_HARD_STOP_MARGIN = 10.0


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad option is one line, like every other start-up error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pyworker: error: {message} (see --help)\n")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; defaults come from the environment."""
    parser = _Parser(
        prog="python -m pyworker",
        description=(
            "Run the worker in front of a model server. With the Vast environment set "
            "(MODEL_LOG, REPORT_ADDR, WORKER_PORT, CONTAINER_ID, ...) it serves the real model "
            "server as a Vast template would. Without it (or with --demo) it starts a local "
            "demo: the backend's demo model server, a stand-in autoscaler and the worker."
        ),
        epilog="Each option can also be set through the environment variable in brackets; "
        "the command line wins.",
    )
    add = parser.add_argument
    add(
        "--backend",
        default=env.get("BACKEND"),
        help=f"backend to run, one of: {', '.join(available_backends())} [BACKEND]",
    )
    add(
        "--demo",
        action="store_true",
        default=None,
        help="run the local demo even if Vast variables are set",
    )
    add(
        "--host",
        default=env.get("WORKER_HOST"),
        help="address to listen on (default 0.0.0.0; 127.0.0.1 in the demo) [WORKER_HOST]",
    )
    add(
        "--port",
        type=int,
        default=None,
        help="port to listen on (default 3000; 0 picks a free one) [WORKER_PORT]",
    )
    add("--model-log", default=None, help="the model server's log file [MODEL_LOG]")
    add(
        "--model-server-url",
        default=None,
        help="the model server's base URL (default: the backend's) [MODEL_SERVER_URL]",
    )
    add(
        "--report-addr",
        default=None,
        help="comma-separated autoscaler URLs for load reports [REPORT_ADDR]",
    )
    add(
        "--container-id",
        type=int,
        default=None,
        help="this instance's id, sent in every report [CONTAINER_ID]",
    )
    add(
        "--public-url",
        default=None,
        help="this worker's public URL (default from PUBLIC_IPADDR and VAST_TCP_PORT_<port>)",
    )
    add(
        "--unsecured",
        action="store_true",
        default=None,
        help="accept requests without checking signatures; local testing only [UNSECURED]",
    )
    add(
        "--pubkey-url",
        default=None,
        help="URL of the router's public key (default {REPORT_ADDR}/pubkey/) [PYWORKER_PUBKEY_URL]",
    )
    add("--pubkey-file", default=None, help="PEM file of the router's key [PYWORKER_PUBKEY_FILE]")
    add(
        "--only-2024-signatures",
        action="store_true",
        default=False,
        help="refuse the 2025 signature (which signs only the worker's URL)",
    )
    add(
        "--max-queue-time",
        type=float,
        default=None,
        help="answer 429 when a request's expected wait exceeds this many seconds "
        "(0: never; default 30)",
    )
    add(
        "--max-body-bytes",
        type=int,
        default=None,
        help="largest request body accepted (default 16 MiB)",
    )
    add(
        "--connect-timeout",
        type=float,
        default=None,
        help="seconds to open a connection to the model server (default 10)",
    )
    add(
        "--first-byte-timeout",
        type=float,
        default=None,
        help="seconds from sending a request to the model server to its answer's head; a "
        "non-streamed answer's head comes with the whole answer (default: --read-timeout)",
    )
    add(
        "--read-timeout",
        type=float,
        default=None,
        help="seconds of silence tolerated from the model server between bytes of an answer "
        "(default 600)",
    )
    add(
        "--total-timeout",
        type=float,
        default=None,
        help="seconds a request may take at the model server in all, however steadily it "
        "streams (default 3600; 0: no limit)",
    )
    add(
        "--drain-timeout",
        type=float,
        default=None,
        help="on SIGTERM, seconds to let requests in flight finish (default 30)",
    )
    add(
        "--health-interval",
        type=float,
        default=None,
        help="seconds between model server health checks once ready (default 10)",
    )
    add(
        "--force-benchmark",
        action="store_true",
        default=False,
        help="benchmark again even if a cached result exists",
    )
    add(
        "--benchmark-runs",
        type=int,
        default=None,
        help="timed benchmark requests (default: the backend's)",
    )
    add(
        "--load-timeout",
        type=float,
        default=None,
        help="seconds a model load may take before the worker reports it errored (default 7200)",
    )
    add(
        "--stall-timeout",
        type=float,
        default=None,
        help="seconds of silence from the model server, with requests waiting on it, after "
        "which it is stalled: they get 504 and the worker stops taking requests until it "
        "answers again (longer when their predicted service time is; default 30; 0: off)",
    )
    add(
        "--report-format",
        choices=["2026", "2024"],
        default=None,
        help="which generation's meanings the load reports carry (default 2026: Vast's newest; "
        "see the README)",
    )
    add(
        "--max-sessions",
        type=int,
        default=None,
        help="sessions open at once at most; more are refused with 429 (0: no limit; default 10)",
    )
    add(
        "--http-port",
        type=int,
        default=None,
        help="port of the internal plain-HTTP listener serving only POST /session/end "
        "(default: the worker's port + 1) [WORKER_HTTP_PORT]",
    )
    add(
        "--metrics-port",
        type=int,
        default=None,
        help="serve GET /metrics (Prometheus) on this port, plain HTTP, instead of on the "
        "worker's own port",
    )
    add(
        "--keep-alive-timeout",
        type=float,
        default=None,
        help="seconds an idle client connection, or one whose request head is still "
        "arriving, is kept open (default 5)",
    )
    add(
        "--max-connections",
        type=int,
        default=None,
        help="client connections open at once at most; more are answered 503 at once "
        "(default: half the open files limit, which is raised to its hard limit)",
    )
    add(
        "--ssl-certfile",
        default=None,
        help="the TLS certificate served when USE_SSL is true (default /etc/instance.crt)",
    )
    add(
        "--ssl-keyfile",
        default=None,
        help="its private key (default /etc/instance.key)",
    )
    add(
        "--update-flag-file",
        default=None,
        help="the file POST /pyworker/update creates for the start script (default /.force_update)",
    )
    add(
        "--state-dir",
        default=None,
        help=f"benchmark cache and demo files (default {default_state_dir(env)}) "
        "[PYWORKER_STATE_DIR]",
    )
    add(
        "--log-level",
        default=env.get("PYWORKER_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="[PYWORKER_LOG_LEVEL]",
    )
    add(
        "--log-format",
        default=env.get("PYWORKER_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text lines, or one JSON object per line for log shippers [PYWORKER_LOG_FORMAT]",
    )
    add(
        "--access-log",
        action="store_true",
        help="one line per proxied request: route, status, workload, duration (never the "
        "payload); on in the demo",
    )
    add("--list-backends", action="store_true", help="list the backends and exit")
    for action in parser._actions:
        if action.dest in ENV_OPTIONS and action.help:
            action.help += f" [{ENV_OPTIONS[action.dest][0]}]"
    return parser


def _tune_gc() -> None:
    """Keep the collector from stalling the event loop.

    With a thousand streams open, the default thresholds run full (generation 2) collections
    of every long-lived object often, each stopping the loop for 13-94 ms (bench/RESULTS.md).
    Freezing what start-up allocated and collecting young objects less often cut the pauses
    to ~15 ms; memory use stays bounded as the worker allocates little per request.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _print_change(change: StateChange) -> None:
    suffix = f": {change.reason}" if change.reason else ""
    log.info(
        "state %s -> %s (%s)%s",
        change.source,
        change.dest,
        change.trigger,
        suffix,
        extra={
            "source": change.source.value,
            "dest": change.dest.value,
            "trigger": change.trigger.value,
            "reason": change.reason,
        },
    )


async def _watch_signals(shutdown: trio.Event, hard_stop: trio.CancelScope, grace: float) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if not shutdown.is_set():
                log.info(
                    "%s: draining requests in flight (up to %g s), then stopping",
                    signal.Signals(signum).name,
                    grace,
                )
                shutdown.set()
                # The final deadline: whatever is still running then is cancelled.
                hard_stop.deadline = trio.current_time() + grace + _HARD_STOP_MARGIN
            else:
                log.warning("second signal: stopping now")
                hard_stop.cancel()


async def _main(config: WorkerConfig, backend: Backend, demo: bool, env: Mapping[str, str]) -> None:
    # Imported here: the demo tools and the server stack load only when a worker runs.
    from ._worker import Worker
    from .devtools._demo import run_demo

    shutdown = trio.Event()
    with trio.CancelScope() as hard_stop:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, shutdown, hard_stop, config.drain_timeout)
            if demo:
                await run_demo(config, backend, shutdown=shutdown, env=env)
            else:
                worker = Worker(config=config, backend=backend, on_change=_print_change)
                async with trio.open_nursery() as serving:
                    info = await serving.start(partial(worker.serve, shutdown=shutdown))
                    log.info(
                        "worker for %s listening on %s (public URL %s)",
                        backend.name,
                        ", ".join(info.bound_urls),
                        info.url,
                    )
                # serve() returns after the drain; only the signal watcher is left.
            nursery.cancel_scope.cancel()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m pyworker``.

    The environment is read here, once, and passed on: to the configuration loader and to the
    backend.
    """
    env = dict(os.environ)
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.list_backends:
        print("\n".join(available_backends()))
        return
    try:
        config, demo = load_config(args, env)
        if not demo and config.port == 0:
            # Choose the port now: the URL in reports and signatures must name the real one;
            # the internal listener then takes any free port too, unless one was given.
            http_port = 0 if config.http_port is None else config.http_port
            config = attrs.evolve(config, port=free_port(config.host), http_port=http_port)
        backend = load_backend(config.backend, env)
        if demo and backend.demo is None:
            raise ConfigError(
                f"backend {backend.name} has no demo model server; set MODEL_LOG "
                "and REPORT_ADDR to run it against a real one"
            )
        if config.port and not port_available(config.host, config.port):
            raise ConfigError(
                f"port {config.port} on {config.host} is already in use "
                "(pass --port or set WORKER_PORT)"
            )
        if (
            not demo
            and config.internal_port
            and not port_available(config.host, config.internal_port)
        ):
            raise ConfigError(
                f"port {config.internal_port} on {config.host} (the internal listener's) is "
                "already in use (pass --http-port or set WORKER_HTTP_PORT)"
            )
    except (ConfigError, UnknownBackendError, ValueError) as exc:
        parser.exit(2, f"pyworker: error: {exc}\n")
    setup_logging(args.log_level, fmt=args.log_format, access=args.access_log or demo)
    if demo:
        log.info("%s", demo_reason(args, env))
        # The stand-in autoscaler prints each report it receives that changed: the worker's
        # own line for it would say the same twice.
        logging.getLogger("pyworker.reporter").setLevel(logging.WARNING)
    raise_open_files_limit()
    _tune_gc()
    try:
        trio.run(_main, config, backend, demo, env)
    except* KeyboardInterrupt:
        # Ctrl-C before the signal watcher was installed: nothing had started yet.
        pass
