"""The whole stack on this machine, for ``--local``: the backend's demo (or fake) model server
as a child process, the stand-in for Vast's router and autoscaler, and a worker in front of the
model server, all on 127.0.0.1, as ``python -m pyworker --backend NAME`` runs them.

The worker benchmarks the model once loaded, as on a Vast instance; the result is cached in the
state directory (the demo's too, by default), so only the first run pays for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import attrs
import trio

from .. import Backend, State, StateChange, Worker, WorkerConfig
from .._process import free_port, run_process_logged
from ..devtools import RouterSigner, StandIn, serve_standin

__all__ = ["LocalStack", "serve_local_stack"]

ENDPOINT = "loadtest"
"""The endpoint group's name the load is routed as (the stand-in takes any)."""


@attrs.frozen(kw_only=True)
class LocalStack:
    """A running local stack.

    Attributes:
        router_url: the stand-in router's base URL.
        worker_url: the worker's URL.
        model_log: the model server's log file.
        worker: the worker.
    """

    router_url: str
    worker_url: str
    model_log: Path
    worker: Worker = attrs.field(repr=False)
    model_exited: trio.Event = attrs.field(repr=False)

    async def wait_ready(self) -> State | None:
        """Wait until the worker is ready or has failed, and say which; None when the model
        server exited first (its log says why)."""
        state: State | None = None

        async def watch_worker() -> None:
            nonlocal state
            state = await self.worker.watch.wait_state(State.READY, State.ERRORED)
            nursery.cancel_scope.cancel()

        async def watch_model() -> None:
            await self.model_exited.wait()
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_worker)
            nursery.start_soon(watch_model)
        return state


async def _model_server(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    exited: trio.Event,
    *,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await run_process_logged(argv, log_path, env=env, task_status=task_status)
    finally:
        exited.set()


def _rotate(log_path: Path) -> None:
    # As Vast's start script does: the last run's log becomes MODEL_LOG.old, so the worker never
    # takes the old "ready" line for the new server's.
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        os.replace(log_path, log_path.with_name(log_path.name + ".old"))


async def serve_local_stack(
    backend: Backend,
    *,
    state_dir: Path,
    shutdown: trio.Event,
    env: Mapping[str, str],
    on_change: Callable[[StateChange], None] | None = None,
    task_status: trio.TaskStatus[LocalStack] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the stack until ``shutdown`` is set: then the worker drains, and the stand-in and
    the model server stop.

    Args:
        backend: whose demo model server to run (it must have one).
        state_dir: the benchmark cache; the model server's log goes in ``loadtest/`` under it.
        shutdown: set it to stop the stack.
        env: the model server's environment; it is told this process's id, so that it stops by
            itself should this process be killed outright.
        on_change: called with each of the worker's state changes.
        task_status: ``started(LocalStack)`` once everything listens (the model may still be
            loading: see :meth:`LocalStack.wait_ready`).

    Raises:
        ValueError: the backend has no demo model server.
    """
    if backend.demo is None:
        raise ValueError(f"backend {backend.name} has no demo model server to run locally")
    log_path = state_dir / "loadtest" / f"{backend.name}-model.log"
    await trio.to_thread.run_sync(_rotate, log_path)
    # The model server and the worker are told their ports: the worker's URL is what the
    # router signs, so it must be known before it listens.
    model_port, worker_port = free_port(), free_port()
    signer = await RouterSigner.create()
    standin = StandIn(signer=signer, on_report=None)
    async with trio.open_nursery() as nursery:
        standin_stop = trio.Event()
        router_url: str = await nursery.start(
            partial(serve_standin, standin, shutdown=standin_stop)
        )
        model_exited = trio.Event()
        await nursery.start(
            _model_server,
            backend.demo.argv(model_port, str(log_path)),
            log_path,
            {**env, "PYWORKER_PARENT_PID": str(os.getpid())},
            model_exited,
        )
        config = WorkerConfig(
            backend=backend.name,
            host="127.0.0.1",
            port=worker_port,
            public_url=f"http://127.0.0.1:{worker_port}",
            report_addrs=(router_url,),
            container_id=1,
            model_log=log_path,
            model_server_url=f"http://127.0.0.1:{model_port}",
            state_dir=state_dir,
            http_port=0,
        )
        worker = Worker(config=config, backend=backend, on_change=on_change)
        async with trio.open_nursery() as serving:
            info = await serving.start(partial(worker.serve, shutdown=shutdown))
            standin.worker_url = info.url
            task_status.started(
                LocalStack(
                    router_url=router_url,
                    worker_url=info.url,
                    model_log=log_path,
                    worker=worker,
                    model_exited=model_exited,
                )
            )
        # The worker has drained and stopped: now what it depended on.
        standin_stop.set()
        nursery.cancel_scope.cancel()
