"""End-to-end stacks over real sockets: fake model server process + stand-in autoscaler + worker.

Use from pytest-trio tests::

    stack = await start_stack(nursery, tmp_path, "hello_world", "--load-delay", "0.2")
    await stack.wait_state(State.READY)
    response = await stack.post("/generate", {"prompt": "hi", "max_response_tokens": 4})

The model server runs as its own process (its module comes from the backend's ``demo`` argv,
or ``fake_module``), the stand-in autoscaler and the worker in the test's nursery. The model
server's port is chosen up front, so the worker can start before the model listens, as on a
real instance.

Besides, what several test modules share: signing and checking auth_data without a stack
(:func:`accept`, :func:`make_auth`, :func:`signed`, :func:`refusal`), a benchmark result in the
cache (:func:`seed_benchmark`), waiting on another process (:func:`eventually`), serving an ASGI
app (:func:`serve_app`), the environment of ``python -m pyworker`` (:func:`clean_env`).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from fakes import FakeServer, close_when_cancelled, free_port, spawn_fake
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from pyworker import Backend, State, load_backend
from pyworker._auth import AuthData, Authenticator, AuthError
from pyworker._benchcache import BenchmarkCache, cache_key
from pyworker._benchmark import BenchmarkResult, BenchmarkSettings
from pyworker._config import WorkerConfig
from pyworker._worker import Worker, WorkerInfo
from pyworker.devtools import RouterSigner, StandIn, serve_standin

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
    nursery: trio.Nursery | None = None
    fake_module: str = ""
    fake_args: tuple[str, ...] = ()
    _reqnums: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    worker_settings: dict[str, Any] = attrs.field(factory=dict)
    """The WorkerConfig fields the first worker was started with (see :func:`add_worker`)."""
    extra_workers: list[tuple[Worker, WorkerInfo]] = attrs.field(factory=list)
    """Workers started by :func:`add_worker`, in order."""

    @property
    def url(self) -> str:
        """The worker's base URL."""
        return self.info.bound_urls[0]

    async def wait_state(self, *states: State) -> State:
        """Wait (at most 30 s) until the worker's lifecycle is in one of ``states``."""
        with trio.fail_after(30):
            return await self.worker.watch.wait_state(*states)

    def auth_data(self, *, cost: object = 100, endpoint: object = "test") -> dict[str, Any]:
        """A fresh auth_data signed by the stand-in router for this worker, with the
        ``request_idx`` the newest router adds (7000 + ``reqnum``, so the two differ)."""
        reqnum = next(self._reqnums)
        fields = self.standin.signer.sign(
            cost=cost, endpoint=endpoint, reqnum=reqnum, url=self.info.url
        )
        auth = {k: fields[k] for k in ("signature", "cost", "endpoint", "reqnum", "url")}
        return {**auth, "request_idx": 7000 + reqnum}

    def envelope(self, payload: object, **auth: Any) -> dict[str, Any]:
        """A signed request envelope around ``payload``."""
        return {"auth_data": self.auth_data(**auth), "payload": payload}

    async def post(self, route: str, payload: object, **kwargs: Any) -> httpx.Response:
        """POST a signed envelope to the worker and read the whole answer."""
        return await self.http.post(self.url + route, json=self.envelope(payload), **kwargs)

    async def stats(self) -> dict[str, int]:
        """The fake model server's ``GET /stats`` counters."""
        response = await self.http.get(self.fake.url + "/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats

    async def status(self) -> dict[str, Any]:
        """The worker's ``GET /status``."""
        response = await self.http.get(self.url + "/status")
        status: dict[str, Any] = response.json()
        return status

    async def restart_fake(self, *fake_args: str) -> FakeServer:
        """Stop the model server and start a new one on the same port and log path, as a
        Vast start script does after a crash: the old log becomes ``MODEL_LOG.old``.

        ``fake_args`` replace the knobs the stack was started with (default: the same).
        """
        assert self.nursery is not None
        port = self.fake.port
        assert port is not None
        await self.fake.aclose()
        log_path = self.fake.log_path
        os.replace(log_path, log_path.with_name(log_path.name + ".old"))
        args = fake_args or self.fake_args
        self.fake = await spawn_fake(
            self.nursery, self.fake_module, *args, "--port", str(port), log_path=log_path
        )
        self.fake.port = port
        return self.fake


def accept(authenticator: Authenticator, auth: AuthData) -> None:
    """Verify ``auth`` and remember it, as the pipeline does with a request it admits."""
    authenticator.remember(auth, authenticator.verify(auth))


URL = "http://127.0.0.1:41234"
"""The worker's own URL in the auth_data the auth tests sign (nothing listens there)."""


def make_auth(signer: RouterSigner, *, own_url: str | None = URL, **kwargs: Any) -> Authenticator:
    """An authenticator for the worker at ``own_url`` holding ``signer``'s public key."""
    auth = Authenticator(own_url=own_url, **kwargs)
    auth.set_public_key(signer.public_pem())
    return auth


def signed(signer: RouterSigner, reqnum: int = 1, cost: object = 256, **extra: Any) -> AuthData:
    """auth_data ``signer`` signed for :data:`URL` (endpoint "my-group"), ``extra`` fields added."""
    data = signer.sign(cost=cost, endpoint="my-group", reqnum=reqnum, url=URL)
    return AuthData.parse({**data, **extra})


def refusal(authenticator: Authenticator, auth: AuthData) -> AuthError:
    """The error :func:`accept` raises for ``auth`` (it must raise one)."""
    with pytest.raises(AuthError) as info:
        accept(authenticator, auth)
    return info.value


async def eventually(
    check: Callable[[], Any], *, what: str = "condition", poll: float = 0.01
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value, and return that value.

    For state outside this process (a child's counters, its log): callers bound the wait with
    ``trio.fail_after``; ``what`` names the condition in the error when that fires.
    """
    started = time.monotonic()
    try:
        while True:
            value = check()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await trio.sleep(poll)
    except trio.Cancelled:
        # Still raise the Cancelled; say what was awaited for whoever reads the log.
        print(f"still waiting for {what} after {time.monotonic() - started:.1f} s")
        raise


# What a user's shell would not have: Vast's variables, and pyworker's own (start_server.sh's
# tests leave out more: start_server_harness.clean_environment).
VAST_PREFIXES = ("VAST_", "PYWORKER_")
VAST_VARIABLES = {
    "BACKEND",
    "CONTAINER_ID",
    "MASTER_TOKEN",
    "MODEL_LOG",
    "MODEL_NAME",
    "MODEL_SERVER_URL",
    "PUBLIC_IPADDR",
    "REPORT_ADDR",
    "UNSECURED",
    "USE_SSL",
    "WORKER_HOST",
    "WORKER_HTTP_PORT",
    "WORKER_PORT",
}


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for ``python -m pyworker`` as a user runs it: this one without Vast's
    variables or pyworker's, its state directory in ``tmp_path``, unbuffered; ``extra`` added."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in VAST_VARIABLES and not k.startswith(VAST_PREFIXES)
    }
    env["PYWORKER_STATE_DIR"] = str(tmp_path / "state")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def seed_benchmark(
    state_dir: Path,
    backend: Backend,
    *,
    max_perf: float,
    runs: int | None = None,
    request_speed: float = 0.0,
) -> str:
    """Write a cached benchmark result, so a worker with ``benchmark_runs=runs`` on
    ``state_dir`` becomes ready without benchmarking, with capacity ``max_perf`` (and one
    request's speed ``request_speed``, 0: unknown).

    Returns:
        The cache key.
    """
    settings = BenchmarkSettings.for_backend(backend, runs)
    key = cache_key(backend, backend.model_id, settings)
    cache = BenchmarkCache(directory=state_dir)
    cache._store_sync(
        BenchmarkResult(
            max_perf=max_perf,
            workload=max_perf,
            elapsed=1.0,
            runs=settings.runs,
            key=key,
            measured_at=time.time(),
            request_speed=request_speed,
        )
    )
    return key


async def start_stack(
    nursery: trio.Nursery,
    tmp_path: Path,
    backend_name: str,
    *fake_args: str,
    fake_module: str | None = None,
    wait_ready: bool = False,
    backend: Backend | None = None,
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
        backend: serve this backend instead of ``backend_name``'s (e.g. an ``attrs.evolve``d
            variant); ``backend_name`` still names the fake and the configuration.
        **config: WorkerConfig fields to override (e.g. ``max_queue_time=0``).
    """
    if backend is None:
        backend = load_backend(backend_name)
    if fake_module is None:
        assert backend.demo is not None, f"{backend_name} has no demo model server"
        argv = list(backend.demo.argv(0, ""))
        fake_module = argv[argv.index("-m") + 1]
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
        "http_port": 0,  # the internal listener on any free port (port + 1 may be taken)
    }
    settings.update(config)
    worker = Worker(config=WorkerConfig(backend=backend_name, **settings), backend=backend)
    shutdown = trio.Event()
    info: WorkerInfo = await nursery.start(partial(worker.serve, shutdown=shutdown))
    standin.worker_url = info.url
    http = httpx.AsyncClient(timeout=30.0, trust_env=False)
    nursery.start_soon(close_when_cancelled, http)
    stack = Stack(
        fake=fake,
        standin=standin,
        standin_url=standin_url,
        worker=worker,
        info=info,
        http=http,
        shutdown=shutdown,
        nursery=nursery,
        fake_module=fake_module,
        fake_args=fake_args,
        worker_settings=settings,
    )
    if wait_ready:
        await stack.wait_state(State.READY)
    return stack


async def add_worker(stack: Stack, *, wait_ready: bool = True, **config: Any) -> WorkerInfo:
    """Start one more worker in the stack's nursery, in front of the same model server and
    reporting to the same stand-in, e.g. to route among several workers.

    It takes the first worker's settings (model log, benchmark cache, ...) except its port,
    URL and container id, which are its own; it stops with the stack (``stack.shutdown``).
    The stand-in does not route to it until told to (``stack.standin.worker_urls``).

    Args:
        stack: the stack to add it to.
        wait_ready: return only once the worker is ready (at most 30 s).
        **config: WorkerConfig fields to override (e.g. ``max_queue_time=0``).

    Returns:
        What the worker's ``serve`` started with (its ``url`` is what the router signs).
    """
    assert stack.nursery is not None
    port = free_port()
    settings = {
        **stack.worker_settings,
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "container_id": stack.worker.config.container_id + 1 + len(stack.extra_workers),
    }
    settings.update(config)
    worker = Worker(
        config=WorkerConfig(backend=stack.worker.config.backend, **settings),
        backend=stack.worker.backend,
    )
    info: WorkerInfo = await stack.nursery.start(partial(worker.serve, shutdown=stack.shutdown))
    stack.extra_workers.append((worker, info))
    if wait_ready:
        with trio.fail_after(30):
            await worker.watch.wait_state(State.READY)
    return info


async def ready_stack(
    nursery: trio.Nursery,
    tmp_path: Path,
    *fake_args: str,
    max_perf: float | None = 1000.0,
    request_speed: float = 0.0,
    backend: Backend | None = None,
    **config: Any,
) -> Stack:
    """A hello_world stack, ready: seeded with capacity ``max_perf`` and one request's speed
    ``request_speed`` (``max_perf`` None: really benchmark)."""
    config.setdefault("benchmark_runs", 2)
    if max_perf is not None:
        seed_benchmark(
            tmp_path / "state",
            backend or load_backend("hello_world"),
            max_perf=max_perf,
            runs=config["benchmark_runs"],
            request_speed=request_speed,
        )
    return await start_stack(
        nursery,
        tmp_path,
        "hello_world",
        "--load-delay",
        "0.05",
        *fake_args,
        wait_ready=True,
        backend=backend,
        **config,
    )


async def serve_app(nursery: trio.Nursery, app: QuartTrio, **tls: str) -> str:
    """Serve an ASGI app on 127.0.0.1 (any free port) in ``nursery``; returns its URL.
    ``tls``: Hypercorn's ``certfile`` and ``keyfile``, for https."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.app")
    config.graceful_timeout = 0.1
    for name, value in tls.items():
        setattr(config, name, value)
    binds: list[str] = await nursery.start(partial(serve, app, config))
    return binds[0]


async def refusing_worker(nursery: trio.Nursery, status: int) -> str:
    """A stand-in worker that answers every ``POST /generate`` and ``/generate_stream`` with
    ``status``; returns its URL. It reads the request first, as a real worker does: answered
    before their bodies were read, requests on reused keep-alive connections were seen to hang
    here, unanswered, when the client ran in another thread."""
    app = QuartTrio("refusing-worker")

    @app.post("/generate")
    @app.post("/generate_stream")
    async def generate() -> Response:
        await request.get_data()
        return Response('{"error": "busy"}', status=status, content_type="application/json")

    return await serve_app(nursery, app)


@attrs.define
class Running:
    """A stand-in autoscaler serving in the test's nursery (the ``router`` fixture): its URL and
    the report lines it printed."""

    standin: StandIn
    url: str
    lines: list[str]
