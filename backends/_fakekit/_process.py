"""A fake model server's life as a process: load, listen, announce, serve, stop on a signal."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable

import attrs
import trio

from ._http import Handler, HTTPServer
from ._knobs import Knobs
from ._logfile import LogWriter


@attrs.frozen(kw_only=True)
class Startup:
    """The lines a fake logs while it starts, worded like the server it imitates.

    Attributes:
        progress: a loading progress line; ``{percent}`` is replaced.
        progress_steps: how many progress lines the load delay is split into.
        ready: the ready line, logged once the port accepts connections; ``{url}`` and
            ``{port}`` are replaced.
        failed: the line logged before exiting 1 for ``--fail-load``; ``{reason}`` is
            replaced.
    """

    progress: str = "loading model: {percent}%"
    progress_steps: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    ready: str = "infer server has started on {url}"
    failed: str = "Error: model failed to load: {reason}"


def write_port_file(path: str, port: int) -> None:
    """Write ``port`` to ``path`` atomically: readers see nothing or the whole number."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="ascii") as file:
        file.write(f"{port}\n")
    os.replace(temporary, path)


async def serve_fake(
    handler: Handler,
    knobs: Knobs,
    log: LogWriter,
    *,
    startup: Startup = Startup(),
    task_status: trio.TaskStatus[HTTPServer] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Pretend to load a model, then serve ``handler`` until cancelled.

    Like the real servers, nothing listens while loading (connections are refused); the
    ready line is logged only once the socket accepts connections.

    Args:
        handler: answers the fake's requests.
        knobs: port, load delay, failure injection.
        log: where progress, ready and failure lines go.
        startup: the wording of those lines.
        task_status: receives the listening :class:`HTTPServer` after the ready line.

    Returns:
        1 if the load failed (``--fail-load``) or the port could not be bound; otherwise it
        serves until cancelled.
    """
    steps = startup.progress_steps
    for step in range(steps + 1):
        log.info(startup.progress.format(percent=100 * step // steps))
        if step < steps:
            await trio.sleep(knobs.load_delay / steps)
    if knobs.fail_load is not None:
        log.error(startup.failed.format(reason=knobs.fail_load))
        return 1
    server = HTTPServer(handler, host=knobs.host, port=knobs.port)
    async with trio.open_nursery() as nursery:
        try:
            port = await nursery.start(server.serve)
        except OSError as exc:
            log.error(f"Error: cannot listen on {knobs.host}:{knobs.port}: {exc}")
            return 1
        if knobs.port_file is not None:
            write_port_file(knobs.port_file, port)
        log.info(startup.ready.format(url=server.url, port=port))
        task_status.started(server)
    return 0


async def _stop_on_signal(
    signals: AsyncIterator[int], log: LogWriter, scope: trio.CancelScope
) -> None:
    async for signum in signals:
        log.info(f"received {signal.Signals(signum).name}, shutting down")
        scope.cancel()
        return


async def _main(handler: Handler, knobs: Knobs, log: LogWriter, startup: Startup) -> int:
    code = 0
    # The receiver is installed before loading starts, so a SIGTERM at any point is clean.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, log, nursery.cancel_scope)
            code = await serve_fake(handler, knobs, log, startup=startup)
            nursery.cancel_scope.cancel()
    return code


def run_fake(
    make_handler: Callable[[LogWriter], Handler],
    knobs: Knobs,
    *,
    startup: Startup = Startup(),
) -> int:
    """Run a fake model server process; returns its exit status.

    Opens the ``--log`` file (stdout and stderr are redirected there too), then serves until
    SIGTERM or SIGINT (exit status 0) or a load failure (1).

    Args:
        make_handler: builds the request handler, given the log.
        knobs: the parsed command line.
        startup: the wording of the startup lines.
    """
    log = LogWriter.open(knobs.log)
    try:
        log.redirect_std_streams()
        return trio.run(_main, make_handler(log), knobs, log, startup)
    finally:
        log.close()
