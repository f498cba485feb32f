"""``python -m pyworker.loadtest``: the command line, and one run from start to summary."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import trio

from .. import Backend, State, StateChange, UnknownBackendError, load_backend
from .._config import default_state_dir
from ..devtools import ConsoleError, Target
from ..devtools._route_records import ROUTER_URL
from ..devtools._target_options import (
    add_target_options,
    check_target_options,
    patience_from,
    resolve_target,
)
from ._display import rich_available, show_progress
from ._driver import LoadPlan, run_load
from ._local import ENDPOINT, serve_local_stack
from ._plot import PLOT_HINT, draw, plot_available
from ._requests import RequestMaker
from ._summary import render_plain, render_rich, summarize
from ._tally import Tally

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["main"]

EXIT_OK, EXIT_TOO_MANY_ERRORS, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m pyworker.loadtest",
        description="Load-test an endpoint group through Vast's router (-k ACCOUNT_KEY -e GROUP), "
        "or the whole stack on this machine (-l): requests arrive at a fixed rate, each routed and "
        "sent as Vast's client does; live progress, then a summary.",
    )
    parser.add_argument(
        "-l",
        "--local",
        action="store_true",
        help="start a local stack (the backend's demo model server, a stand-in router and "
        "autoscaler, a worker), load it, and stop it",
    )
    add_target_options(parser)
    load = parser.add_argument_group("load")
    load.add_argument(
        "--backend",
        default=os.environ.get("BACKEND") or "hello_world",
        help="the backend the workers serve: payloads come from its benchmark generator, and "
        "are weighed as it weighs them (default: $BACKEND, else hello_world)",
    )
    load.add_argument("--route", help="the worker's route (default: the backend's benchmark route)")
    load.add_argument(
        "-n", "--requests", type=int, default=100, help="requests to send (default 100)"
    )
    load.add_argument(
        "--rps",
        "-rps",
        type=float,
        default=10.0,
        help="requests arriving per second, whatever the answers do (default 10; 0: as fast "
        "as --concurrency allows)",
    )
    load.add_argument(
        "--concurrency",
        type=int,
        default=256,
        help="requests in flight at most; more wait for a slot (default 256)",
    )
    load.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds each request may take in all: routing, polls, re-routes and the answer "
        "(default 60)",
    )
    load.add_argument(
        "--duration", type=float, default=None, help="stop sending after this many seconds"
    )
    load.add_argument("--payload", help="send this JSON payload every time instead")
    load.add_argument("--payload-file", help="send the JSON payload in this file every time")
    load.add_argument("--seed", type=int, default=0, help="seeds the payload generator")
    out = parser.add_argument_group("results")
    out.add_argument(
        "--max-error-rate",
        type=float,
        default=0.0,
        help="exit 1 when more than this share of requests fail (routing, inference, "
        "connection errors and timeouts; default 0)",
    )
    out.add_argument("--json", type=Path, metavar="FILE", help="write the summary as JSON")
    out.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw latency over time and throughput (needs matplotlib)",
    )
    out.add_argument(
        "--plain", action="store_true", help="one progress line a second, even on a terminal"
    )
    local = parser.add_argument_group("local stack (-l)")
    local.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the benchmark cache, shared with the demo (default: $PYWORKER_STATE_DIR or "
        f"{default_state_dir({})})",
    )
    local.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds for the model to load and be benchmarked (default 300)",
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.local:
        if args.api_key or args.endpoint_key or args.router != ROUTER_URL:
            parser.error("-l runs its own stack: give no -k, --endpoint-key or --router with it")
    else:
        if args.api_key is None and args.endpoint_key is None and args.router == ROUTER_URL:
            parser.error(
                "say where to send the load: -l (a local stack), -k ACCOUNT_KEY -e GROUP "
                "(Vast), or --router URL -e GROUP (a router of your own)"
            )
        check_target_options(parser, args)
    for name in ("requests", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("timeout", "ready_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.rps < 0 or (args.duration is not None and args.duration <= 0):
        parser.error("--rps must not be negative, --duration must be positive")
    if not 0 <= args.max_error_rate <= 1:
        parser.error("--max-error-rate is a share, from 0 to 1")
    if args.payload is not None and args.payload_file is not None:
        parser.error("give --payload or --payload-file, not both")


def _payload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> object:
    try:
        if args.payload_file is not None:
            return json.loads(Path(args.payload_file).read_text(encoding="utf-8"))
        return None if args.payload is None else json.loads(args.payload)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read the payload: {exc}")


@attrs.define
class _Run:
    """What one run came to (filled in as it goes)."""

    tally: Tally
    target: str = ""
    elapsed: float = 0.0
    started: bool = False
    interrupted: bool = False
    error: str = ""
    work: trio.CancelScope = attrs.Factory(trio.CancelScope)
    """The load and its set-up: the first Ctrl-C cancels it; the stack's teardown is outside."""


async def _watch_interrupts(
    run: _Run,
    hard_stop: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            if run.interrupted:
                hard_stop.cancel()
                return
            run.interrupted = True
            run.work.cancel()
            print("interrupted: stopping (again to stop at once)", file=sys.stderr, flush=True)


def _stack_log(args: argparse.Namespace) -> Path:
    """Where the local stack's own log lines go (they would break into the display)."""
    state_dir: Path = args.state_dir or default_state_dir(os.environ)
    return state_dir / "loadtest" / "stack.log"


def _on_change(change: StateChange) -> None:
    reason = f": {change.reason}" if change.reason else ""
    print(f"local worker: {change.source} -> {change.dest}{reason}", flush=True)


async def _start_local(
    args: argparse.Namespace,
    backend: Backend,
    services: trio.Nursery,
    shutdown: trio.Event,
    run: _Run,
) -> Target | None:
    """Start the local stack in ``services``; its target once the worker is ready."""
    state_dir = args.state_dir or default_state_dir(os.environ)
    stack = await services.start(
        partial(
            serve_local_stack,
            backend,
            state_dir=state_dir,
            shutdown=shutdown,
            env=os.environ,
            on_change=_on_change,
        )
    )
    print(
        f"local stack: router {stack.router_url}, worker {stack.worker_url}; logs "
        f"{stack.model_log} and {_stack_log(args)}\nwaiting for the model to load and be "
        "benchmarked (cached after the first run)",
        flush=True,
    )
    with trio.move_on_after(args.ready_timeout):
        state = await stack.wait_ready()
        if state is State.READY:
            run.target = f"a local stack ({stack.worker_url})"
            return Target(endpoint=ENDPOINT, router=stack.router_url)
        failed = "the local worker failed" if state else "the local model server exited"
        run.error = f"{failed}: see {stack.model_log} and {_stack_log(args)}"
        return None
    run.error = f"the local worker was not ready within {args.ready_timeout:g} s"
    return None


async def _load(
    args: argparse.Namespace,
    backend: Backend,
    maker: RequestMaker,
    console: Console | None,
    services: trio.Nursery,
    shutdown: trio.Event,
    run: _Run,
) -> None:
    tls = None
    if args.local:
        target = await _start_local(args, backend, services, shutdown, run)
        if target is None:
            return
    else:
        async with httpx.AsyncClient() as console_http:
            target, tls = await resolve_target(args, console_http)
        run.target = f"{target.router} (group {target.endpoint})"
    plan = LoadPlan(
        requests=args.requests,
        rps=args.rps or None,
        concurrency=args.concurrency,
        timeout=args.timeout,
        duration=args.duration,
        seed=args.seed,
    )
    timeout = httpx.Timeout(args.timeout, connect=min(10.0, args.timeout))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=args.concurrency)
    async with (
        httpx.AsyncClient(
            timeout=timeout, limits=limits, verify=tls or True, trust_env=not args.local
        ) as http,
        trio.open_nursery() as display,
    ):
        stop = trio.Event()
        display.start_soon(partial(show_progress, run.tally, console=console, stop=stop))
        run.started = True
        try:
            await run_load(plan, maker, target, http, patience=patience_from(args), tally=run.tally)
        finally:
            run.elapsed = trio.current_time() - run.tally.started
            stop.set()


async def _run(
    args: argparse.Namespace, backend: Backend, maker: RequestMaker, console: Console | None
) -> _Run:
    run = _Run(tally=Tally(planned=args.requests, started=trio.current_time()))
    async with trio.open_nursery() as outer:
        if threading.current_thread() is threading.main_thread():
            await outer.start(_watch_interrupts, run, outer.cancel_scope)
        shutdown = trio.Event()
        async with trio.open_nursery() as services:
            try:
                with run.work:
                    await _load(args, backend, maker, console, services, shutdown, run)
            except ConsoleError as exc:
                run.error = f"console: {exc}"
            finally:
                shutdown.set()  # the local stack drains and stops; the nursery waits for it
        outer.cancel_scope.cancel()
    return run


def _console(args: argparse.Namespace) -> Console | None:
    if args.plain or not sys.stdout.isatty() or not rich_available():
        return None
    from rich.console import Console

    return Console()


def _write_outputs(args: argparse.Namespace, run: _Run, summary: dict[str, Any]) -> str:
    """Write ``--json`` and ``--plot``; returns what failed ("" if nothing)."""
    try:
        if args.json is not None:
            args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if args.plot is not None:
            rate = f"{args.rps:g}/s" if args.rps else "closed loop"
            title = f"{summary['backend']} {summary['route']}: {run.tally.sent} requests, {rate}"
            draw(run.tally.results, args.plot, title=title)
    except OSError as exc:
        return f"cannot write the results: {exc}"
    return ""


def main(argv: list[str] | None = None) -> int:
    """Run the load test; returns the exit status: 0 when the error rate is within
    ``--max-error-rate``, 1 when above, 2 when the test could not run (bad usage, the console
    or the local stack failed), 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    payload = _payload(parser, args)
    if args.plot is not None and not plot_available():
        print(PLOT_HINT, file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        backend = load_backend(args.backend, os.environ)
        maker = RequestMaker.for_backend(backend, args.route, payload)
    except (UnknownBackendError, ValueError) as exc:
        parser.error(str(exc))
    if args.local:
        if backend.demo is None:
            parser.error(f"backend {backend.name} has no demo model server to run with -l")
        log_path = _stack_log(args)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(
            filename=log_path,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    console = _console(args)
    try:
        run = trio.run(_run, args, backend, maker, console)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if run.error:
        print(run.error, file=sys.stderr)
        return EXIT_CANNOT_RUN
    if not run.started:
        print("interrupted before the load started", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary = summarize(
        run.tally,
        elapsed=run.elapsed,
        target=run.target,
        backend=maker.backend,
        route=maker.route,
        interrupted=run.interrupted,
    )
    if console is not None:
        console.print(render_rich(summary))
    else:
        print(render_plain(summary), flush=True)
    failure = _write_outputs(args, run, summary)
    if failure:
        print(failure, file=sys.stderr)
        return EXIT_CANNOT_RUN
    if run.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary["error_rate"] <= args.max_error_rate else EXIT_TOO_MANY_ERRORS
