"""The local demo: a model server, a stand-in autoscaler and the worker, in one command.

With no Vast environment, ``python -m pyworker --backend NAME`` starts the backend's demo (or
fake) model server as a child process logging to a file, a stand-in for Vast's autoscaler
(``/pubkey/``, ``/route/``, ``/worker_status/``), and the worker wired to both, exactly as on a
Vast instance but on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import attrs
import trio

from .._backend import Backend
from .._config import ConfigError, WorkerConfig
from .._lifecycle import State
from .._machine import StateChange
from .._process import free_port, run_process_logged
from .._worker import Worker
from ._signer import RouterSigner
from ._standin import StandIn
from ._standin_app import serve_standin

log = logging.getLogger("pyworker.demo")


def _rotate(log_path: Path) -> None:
    # As Vast's start script does: the previous run's log becomes MODEL_LOG.old, so the worker
    # never mistakes an old "ready" line for the new server's.
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        os.replace(log_path, log_path.with_name(log_path.name + ".old"))


def example_commands(autoscaler_url: str, backend: Backend) -> list[str]:
    """Shell commands that each send one signed request to the demo worker: the backend's
    demo examples (a JSON answer and a stream, say), else its benchmark request."""
    examples = list(backend.demo.examples if backend.demo is not None else ())
    if not examples:
        endpoint = backend.endpoint(backend.benchmark_route)
        assert endpoint.benchmark_payload is not None
        examples = [(endpoint.route, endpoint.benchmark_payload(random.Random(0)))]
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = sys.executable
    return [
        f"{shlex.quote(python)} -m pyworker.client --autoscaler {autoscaler_url} "
        f"--backend {backend.name} {route} {shlex.quote(json.dumps(payload))}"
        for route, payload in examples
    ]


async def run_demo(
    config: WorkerConfig,
    backend: Backend,
    *,
    shutdown: trio.Event,
    env: Mapping[str, str] | None = None,
    say: partial[None] | None = None,
) -> None:
    """Run the demo until ``shutdown`` is set.

    Args:
        config: the worker's configuration (the demo sets the addresses).
        backend: whose demo model server to start.
        shutdown: set it to drain and stop everything.
        env: the model server's environment (default: this process's); it is told this
            process's id, so it stops by itself should this process be killed outright.
        say: prints a line for the user.

    Raises:
        ConfigError: the backend has no demo model server.
    """
    if backend.demo is None:
        raise ConfigError(f"backend {backend.name} has no demo model server")
    speak = say or partial(print, flush=True)
    log_path = config.state_dir / "demo" / f"{backend.name}-model.log"
    await trio.to_thread.run_sync(_rotate, log_path)
    port = config.port or free_port()
    model_port = free_port()
    signer = await RouterSigner.create()
    standin = StandIn(signer=signer)
    worker_config = attrs.evolve(
        config,
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        model_log=log_path,
        model_server_url=f"http://127.0.0.1:{model_port}",
        container_id=config.container_id or 1,
        # The internal listener: port + 1 only when the port was chosen; else any free one.
        http_port=config.http_port if config.http_port is not None or config.port else 0,
    )
    async with trio.open_nursery() as nursery:
        standin_stop = trio.Event()
        autoscaler_url: str = await nursery.start(
            partial(serve_standin, standin, shutdown=standin_stop)
        )
        worker_config = attrs.evolve(worker_config, report_addrs=(autoscaler_url,))
        process = await nursery.start(
            partial(
                run_process_logged,
                backend.demo.argv(model_port, str(log_path)),
                log_path,
                env={
                    **(os.environ if env is None else env),
                    "PYWORKER_PARENT_PID": str(os.getpid()),
                },
            )
        )
        speak(
            f"demo model server: pid {process.pid}, http://127.0.0.1:{model_port}, log {log_path}"
        )
        speak(f"stand-in autoscaler: {autoscaler_url}")

        def on_change(change: StateChange) -> None:
            reason = f": {change.reason}" if change.reason else ""
            speak(f"state: {change.source} -> {change.dest} ({change.trigger}){reason}")
            if change.dest is State.READY:
                speak(
                    "\nready. Send a signed request through the stand-in router:\n  "
                    + "\n  ".join(example_commands(autoscaler_url, backend))
                    + "\n(Ctrl-C stops everything.)\n"
                )

        worker = Worker(config=worker_config, backend=backend, on_change=on_change)
        async with trio.open_nursery() as worker_nursery:
            info = await worker_nursery.start(partial(worker.serve, shutdown=shutdown))
            standin.worker_url = info.url
            speak(f"worker: {info.url} (backend {backend.name}); waiting for the model to load")
        # The worker has drained and stopped: now stop what it depended on.
        standin_stop.set()
        nursery.cancel_scope.cancel()
