"""A fake model server's life as a process: start up, listen, serve, stop on a signal.

Every fake goes through the same life; what differs is the wording and the order of its
start-up, which a :class:`Fake` supplies:

1. the log is opened (stdout and stderr go there too), and SIGTERM and SIGINT are caught from
   then on, so a signal at any point stops the process cleanly, with exit status 0;
2. :meth:`Fake.start` imitates the real server's start: it logs its lines, spends the load
   delay (:meth:`Launch.load`) and starts listening (:meth:`Launch.listen` or
   :meth:`Launch.listen_asgi`) where the real server does, and raises :exc:`StartupFailed`
   for a failed start (exit status 1);
3. the fake then serves until a signal, when :meth:`Fake.stopping` logs the server's last
   lines.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar

import attrs
import trio

from ._asgi import ASGIApp, serve_asgi
from ._http import DEFAULT_MAX_BODY_SIZE, Handler, HTTPServer
from ._knobs import Knobs
from ._logfile import LogWriter

_Log = TypeVar("_Log", bound=LogWriter)

BindError = Callable[[OSError], object]
"""Logs what the real server logs when its port cannot be bound."""


class StartupFailed(Exception):
    """A fake's start-up failed, its lines logged: the process exits with status 1."""


class Fake(Protocol):
    """A fake model server as the kit runs it: its start-up and its last words."""

    async def start(self, launch: Launch) -> None:
        """Start up as the real server does, logging its lines on the way.

        Spend the load delay with :meth:`Launch.load` and listen with :meth:`Launch.listen`
        (or :meth:`Launch.listen_asgi`) at the point where the real server starts
        listening. Returning means started: the fake then serves until it is stopped.

        Raises:
            StartupFailed: the start failed (``--fail-load``, a port in use), its lines
                logged; whatever had started stops.
        """
        ...

    def stopping(self, signum: signal.Signals) -> None:
        """Log what the real server logs when ``signum`` (SIGTERM or SIGINT) stops it."""
        ...


@attrs.define(eq=False)
class Launch:
    """A start-up under way, as :meth:`Fake.start` sees it.

    Attributes:
        knobs: the command line (address, load delay, ``--fail-load``).
        port: the bound port, once listening.
        url: ``http://host:port``, once listening.
    """

    knobs: Knobs
    _nursery: trio.Nursery
    port: int | None = attrs.field(init=False, default=None)
    url: str | None = attrs.field(init=False, default=None)

    async def load(self, share: float) -> None:
        """Spend ``share`` of ``--load-delay`` (a start's shares add up to 1)."""
        await trio.sleep(self.knobs.load_delay * share)

    def start_soon(self, async_fn: Callable[[], Awaitable[object]]) -> None:
        """Run a background task (a model's executor, say) for as long as the fake runs."""
        self._nursery.start_soon(async_fn)

    async def listen(
        self,
        handler: Handler,
        *,
        on_bind_error: BindError,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> str:
        """Serve ``handler`` over HTTP/1.1 from now on; returns the URL.

        Connections are accepted from the moment this returns: log a ready line after it.
        The bound port is written to ``--port-file``.

        Args:
            handler: answers every request.
            on_bind_error: logs the server's words for a port it cannot bind.
            max_body_size: larger request bodies are answered 413 before ``handler`` runs.

        Raises:
            StartupFailed: the port cannot be bound (after ``on_bind_error``).
        """
        knobs = self.knobs
        server = HTTPServer(handler, host=knobs.host, port=knobs.port, max_body_size=max_body_size)
        return await self._listen(server.serve, on_bind_error)

    async def listen_asgi(
        self, app: ASGIApp, *, on_bind_error: BindError, keep_alive_timeout: float = 5.0
    ) -> str:
        """Serve an ASGI application with hypercorn from now on; returns the URL.

        As :meth:`listen`, for a server with websockets (see :func:`serve_asgi`).

        Args:
            app: the application.
            on_bind_error: logs the server's words for a port it cannot bind.
            keep_alive_timeout: seconds an idle keep-alive connection is kept.

        Raises:
            StartupFailed: the port cannot be bound (after ``on_bind_error``).
        """
        knobs = self.knobs
        serve = partial(
            serve_asgi,
            app,
            host=knobs.host,
            port=knobs.port,
            keep_alive_timeout=keep_alive_timeout,
        )
        return await self._listen(serve, on_bind_error)

    async def _listen(
        self, serve: Callable[..., Awaitable[object]], on_bind_error: BindError
    ) -> str:
        try:
            port: int = await self._nursery.start(serve)
        except OSError as exc:
            on_bind_error(exc)
            raise StartupFailed from exc
        if self.knobs.port_file is not None:
            write_port_file(self.knobs.port_file, port)
        self.port = port
        self.url = f"http://{self.knobs.host}:{port}"
        return self.url


def write_port_file(path: str, port: int) -> None:
    """Write ``port`` to ``path`` atomically: readers see nothing or the whole number."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="ascii") as file:
        file.write(f"{port}\n")
    os.replace(temporary, path)


async def serve_fake(
    fake: Fake, knobs: Knobs, *, task_status: trio.TaskStatus[Launch] = trio.TASK_STATUS_IGNORED
) -> int:
    """Start ``fake`` up, then serve until cancelled.

    Use as ``launch = await nursery.start(serve_fake, fake, knobs)``, or await it.

    Args:
        fake: the fake to run.
        knobs: the command line.
        task_status: receives the :class:`Launch` once :meth:`Fake.start` returned (the fake
            listens and has logged its ready line).

    Returns:
        1 if start-up failed (:exc:`StartupFailed`); otherwise it serves until cancelled.
    """
    async with trio.open_nursery() as nursery:
        launch = Launch(knobs=knobs, nursery=nursery)
        try:
            await fake.start(launch)
        except StartupFailed:
            # A start can fail after listening (a failed warm-up): stop serving too.
            nursery.cancel_scope.cancel()
            return 1
        task_status.started(launch)
    return 0


_PARENT_POLL = 0.5
"""Seconds between checks that the process that started the fake is still alive."""


async def _stop_on_signal(signals: AsyncIterator[int], fake: Fake, scope: trio.CancelScope) -> None:
    async for signum in signals:
        fake.stopping(signal.Signals(signum))
        scope.cancel()
        return


PARENT_VARIABLE = "PYWORKER_PARENT_PID"
"""Set by whoever starts a fake and wants it to stop when it dies (the demo, tests)."""


async def _stop_with_parent(parent: int, fake: Fake, scope: trio.CancelScope) -> None:
    # A model server started by a worker (the demo, tests, benchmarks) must not outlive it, even
    # when the worker is killed outright and cannot stop it. Linux's PR_SET_PDEATHSIG would
    # not do: trio spawns children from a worker thread, and the signal fires when that thread
    # ends, not the process. So watch for being handed to another parent instead; the parent
    # says who it is, as it may already be gone when this process starts.
    while os.getppid() == parent:  # noqa: ASYNC110 (no event tells of a parent's death)
        await trio.sleep(_PARENT_POLL)
    fake.stopping(signal.SIGHUP)
    scope.cancel()


async def _serve_until_signal(fake: Fake, knobs: Knobs) -> int:
    code = 0
    # The receiver is installed before start-up begins, so a signal at any point is clean.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, fake, nursery.cancel_scope)
            parent = os.environ.get(PARENT_VARIABLE, "")
            if parent.isdigit():
                nursery.start_soon(_stop_with_parent, int(parent), fake, nursery.cancel_scope)
            code = await serve_fake(fake, knobs)
            nursery.cancel_scope.cancel()
    return code


def run_process(
    make_fake: Callable[[_Log], Fake],
    knobs: Knobs,
    *,
    open_log: Callable[[str | None], _Log],
) -> int:
    """Run a fake model server process; returns its exit status.

    Opens the ``--log`` file (stdout and stderr are redirected there too), then runs the fake
    until SIGTERM or SIGINT (exit status 0) or a failed start (1).

    Args:
        make_fake: builds the fake, given the log.
        knobs: the parsed command line.
        open_log: opens the log, given ``--log`` (e.g. :meth:`LogWriter.open`, or a
            subclass's, or a ``partial`` of it choosing the server's line format).
    """
    log = open_log(knobs.log)
    try:
        log.redirect_std_streams()
        return trio.run(_serve_until_signal, make_fake(log), knobs)
    finally:
        log.close()


@attrs.frozen(kw_only=True)
class Startup:
    """The lines a :class:`PlainFake` logs, worded like the server it imitates.

    Attributes:
        progress: a loading progress line; ``{percent}`` is replaced.
        progress_steps: how many progress lines the load delay is split into.
        ready: the ready line, logged once the port accepts connections; ``{url}`` and
            ``{port}`` are replaced.
        failed: the line logged before exiting 1 for ``--fail-load``; ``{reason}`` is
            replaced.
        stopping: the line logged for a signal; ``{signal}`` is replaced by its name.
    """

    progress: str = "loading model: {percent}%"
    progress_steps: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    ready: str = "infer server has started on {url}"
    failed: str = "Error: model failed to load: {reason}"
    stopping: str = "received {signal}, shutting down"


@attrs.define(eq=False)
class PlainFake:
    """The kit's plain fake: progress lines while it loads, then a handler served over HTTP.

    Attributes:
        handler: answers requests once the fake listens.
        log: where its lines go.
        startup: their wording.
    """

    handler: Handler
    log: LogWriter
    startup: Startup = Startup()

    async def start(self, launch: Launch) -> None:
        """Log progress over the load delay, fail for ``--fail-load``, listen, log ready."""
        startup, log = self.startup, self.log
        steps = startup.progress_steps
        for step in range(steps + 1):
            log.info(startup.progress.format(percent=100 * step // steps))
            if step < steps:
                await launch.load(1 / steps)
        if launch.knobs.fail_load is not None:
            log.error(startup.failed.format(reason=launch.knobs.fail_load))
            raise StartupFailed
        knobs = launch.knobs

        def cannot_bind(exc: OSError) -> None:
            log.error(f"Error: cannot listen on {knobs.host}:{knobs.port}: {exc}")

        url = await launch.listen(self.handler, on_bind_error=cannot_bind)
        log.info(startup.ready.format(url=url, port=launch.port))

    def stopping(self, signum: signal.Signals) -> None:
        """Log the :attr:`Startup.stopping` line."""
        self.log.info(self.startup.stopping.format(signal=signum.name))


def run_fake(
    make_handler: Callable[[LogWriter], Handler],
    knobs: Knobs,
    *,
    startup: Startup = Startup(),
) -> int:
    """Run a :class:`PlainFake` process (see :func:`run_process`); returns its exit status.

    Args:
        make_handler: builds the request handler, given the log.
        knobs: the parsed command line.
        startup: the wording of the start-up lines.
    """
    return run_process(
        lambda log: PlainFake(make_handler(log), log, startup), knobs, open_log=LogWriter.open
    )
