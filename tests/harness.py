"""End-to-end stacks over real sockets: fake model server process + stand-in autoscaler + worker.

Use from pytest-trio tests::

    stack = await start_stack(nursery, tmp_path, "hello_world", "--load-delay", "0.2")
    await stack.wait_state(State.READY)
    response = await stack.post("/generate", {"prompt": "hi", "max_response_tokens": 4})

The model server runs as its own process (its module comes from the backend's ``demo`` argv,
or ``fake_module``), the stand-in autoscaler and the worker in the test's nursery. The model
server's port is chosen up front, so the worker can start before the model listens, as on a
real instance.
"""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from fakes import FakeServer, spawn_fake

from pyworker import State, load_backend
from pyworker._auth import RouterSigner
from pyworker._config import WorkerConfig
from pyworker._process import free_port
from pyworker._standin import StandIn, serve_standin
from pyworker._worker import Worker, WorkerInfo

_SIGNER: RouterSigner | None = None


async def shared_signer() -> RouterSigner:
    """One RSA key for the whole test session (generating one takes ~100 ms)."""
    global _SIGNER
    if _SIGNER is None:
        _SIGNER = await RouterSigner.create()
    return _SIGNER


@attrs.define(eq=False)
class Stack:
    """A running stack and helpers to talk to it."""

    fake: FakeServer
    standin: StandIn
    standin_url: str
    worker: Worker
    info: WorkerInfo
    http: httpx.AsyncClient
    shutdown: trio.Event
    _reqnums: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        """The worker's base URL."""
        return self.info.bound_urls[0]

    async def wait_state(self, *states: State) -> State:
        """Wait (at most 30 s) until the worker's lifecycle is in one of ``states``."""
        with trio.fail_after(30):
            return await self.worker.watch.wait_state(*states)

    def auth_data(self, *, cost: object = 100, endpoint: object = "test") -> dict[str, Any]:
        """A fresh auth_data signed by the stand-in router for this worker."""
        fields = self.standin.signer.sign(
            cost=cost, endpoint=endpoint, reqnum=next(self._reqnums), url=self.info.url
        )
        return {k: fields[k] for k in ("signature", "cost", "endpoint", "reqnum", "url")}

    def envelope(self, payload: object, **auth: Any) -> dict[str, Any]:
        """A signed request envelope around ``payload``."""
        return {"auth_data": self.auth_data(**auth), "payload": payload}

    async def post(self, route: str, payload: object, **kwargs: Any) -> httpx.Response:
        """POST a signed envelope to the worker and read the whole answer."""
        return await self.http.post(self.url + route, json=self.envelope(payload), **kwargs)


async def start_stack(
    nursery: trio.Nursery,
    tmp_path: Path,
    backend_name: str,
    *fake_args: str,
    fake_module: str | None = None,
    wait_ready: bool = False,
    **config: Any,
) -> Stack:
    """Start a fake model server, a stand-in autoscaler and a worker.

    Args:
        nursery: owns everything (cancelling it stops the stack).
        tmp_path: where logs and the benchmark cache go.
        backend_name: the backend to serve.
        *fake_args: knobs for the fake model server.
        fake_module: the fake's module; default: the one the backend's demo runs.
        wait_ready: return only once the worker is ready.
        **config: WorkerConfig fields to override (e.g. ``max_queue_time=0``).
    """
    backend = load_backend(backend_name)
    if fake_module is None:
        assert backend.demo is not None, f"{backend_name} has no demo model server"
        fake_module = str(backend.demo.argv(0, "")[2])
    log_path = tmp_path / f"{backend_name}-model.log"
    port = free_port()
    fake = await spawn_fake(
        nursery, fake_module, "--port", str(port), *fake_args, log_path=log_path
    )
    fake.port = port
    standin = StandIn(signer=await shared_signer(), on_report=lambda line: None)
    standin_stop = trio.Event()
    standin_url: str = await nursery.start(partial(serve_standin, standin, shutdown=standin_stop))
    worker_port = free_port()
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": worker_port,
        "public_url": f"http://127.0.0.1:{worker_port}",
        "report_addrs": (standin_url,),
        "container_id": 7,
        "model_log": log_path,
        "model_server_url": fake.url,
        "state_dir": tmp_path / "state",
        "health_interval": 1.0,
        "drain_timeout": 5.0,
    }
    settings.update(config)
    worker = Worker(config=WorkerConfig(backend=backend_name, **settings), backend=backend)
    shutdown = trio.Event()
    info: WorkerInfo = await nursery.start(partial(worker.serve, shutdown=shutdown))
    standin.worker_url = info.url
    http = httpx.AsyncClient(timeout=30.0, trust_env=False)
    nursery.start_soon(_close_at_cancel, http)
    stack = Stack(
        fake=fake,
        standin=standin,
        standin_url=standin_url,
        worker=worker,
        info=info,
        http=http,
        shutdown=shutdown,
    )
    if wait_ready:
        await stack.wait_state(State.READY)
    return stack


async def _close_at_cancel(http: httpx.AsyncClient) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await http.aclose()
