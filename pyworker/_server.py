"""The worker's listeners: Hypercorn, configured for a public entry point, with a cap on
concurrent connections.

Hypercorn serves every connection it accepts, however many; past the process's descriptor
limit nothing more can be accepted, not even a request that would be served at once. So the
worker caps its own connections below that limit and answers the ones past the cap with a
short, complete 503 (``Retry-After: 1``, then closed) instead of leaving them to time out.
Hypercorn has no hook for this: its trio worker builds ``TCPServer(app, config, ...)`` for each
accepted stream, so :class:`_CappedTCPServer` takes that place for the configurations
:func:`serve` makes (it also lets a connection go as soon as its client has closed it, which
Hypercorn 0.18 delays until the keep-alive timeout), and behaves exactly as Hypercorn's own for
every other.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Awaitable, Callable

import attrs
import hypercorn.trio.run
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, Updated
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("pyworker.server")

_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 52\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b'{"error": "too many connections to this worker now"}'
)


_REFUSAL_SECONDS = 1.0
"""The longest a refused connection is kept (to answer it, and read what it sent meanwhile)."""
_DRAIN_BYTES = 65536


@attrs.define(eq=False)
class ConnectionCap:
    """How many connections may be open at once, how many are, and which are idle."""

    limit: int = attrs.field(validator=attrs.validators.ge(1))
    open: int = attrs.field(default=0, init=False)
    refused: int = attrs.field(default=0, init=False)
    evicted: int = attrs.field(default=0, init=False)
    idle: dict[_CappedTCPServer, None] = attrs.field(factory=dict, init=False)
    """Connections with no request under way (between requests, or a request head still
    arriving), longest idle first."""


class _CappedTCPServer(TCPServer):
    """Hypercorn's connection handler, within the configuration's cap on connections.

    At the cap, a new connection takes the place of the connection idle the longest (between
    requests, or with a request head still trickling in, as slowloris keeps them): a request
    under way is never cut, and a flood of half-open heads cannot starve a real client. Only
    when every connection is busy with a request is the newcomer answered 503.
    """

    async def run(self) -> None:
        cap: ConnectionCap | None = getattr(self.config, "pyworker_cap", None)
        if cap is None:
            await super().run()
            return
        if cap.open >= cap.limit and cap.idle:
            victim = next(iter(cap.idle))
            del cap.idle[victim]
            cap.evicted += 1
            # Its reader fails at once and its task ends, releasing the descriptor.
            await trio.aclose_forcefully(victim.stream)
        elif cap.open >= cap.limit:
            cap.refused += 1
            if cap.refused == 1 or cap.refused % 1000 == 0:
                log.warning(
                    "%d connections open (the cap): refusing more with 503 (%d so far)",
                    cap.open,
                    cap.refused,
                )
            await self._refuse()
            return
        cap.open += 1
        cap.idle[self] = None  # no request yet
        try:
            await super().run()
        finally:
            cap.open -= 1
            cap.idle.pop(self, None)

    async def _refuse(self) -> None:
        """Answer 503 and close gracefully: closing with the request unread would reset the
        connection, and the client might never read the answer (RFC 9112 §9.6)."""
        with trio.move_on_after(_REFUSAL_SECONDS):
            try:
                await self.stream.send_all(_REFUSAL)
                await self.stream.send_eof()
                while await self.stream.receive_some(_DRAIN_BYTES):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
                pass  # gone already, or a TLS stream (no half-close): just close
        await trio.aclose_forcefully(self.stream)

    async def protocol_send(self, event: Event) -> None:
        cap: ConnectionCap | None = getattr(self.config, "pyworker_cap", None)
        if cap is not None and isinstance(event, Updated):
            # Re-inserted at the end when it becomes idle: the dict stays in idle order.
            cap.idle.pop(self, None)
            if event.idle:
                cap.idle[self] = None
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        await super()._read_data()
        if hasattr(self.config, "pyworker_cap"):
            # The client has closed (or the connection broke). Hypercorn would still keep the
            # connection's task, and so its descriptor, until the keep-alive wait ends: with
            # clients that open a connection per request, closed sockets then pile up in
            # CLOSE-WAIT. Nothing is left to wait for: end that wait now.
            await self.idle_task.stop()


# Hypercorn's trio worker looks the handler class up by this module-level name.
setattr(hypercorn.trio.run, "TCPServer", _CappedTCPServer)  # noqa: B010


def raise_open_files_limit() -> int:
    """Raise this process's descriptor limit to its hard limit (containers often start at a
    soft 1,024); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
            return soft
        return hard
    return soft


def connection_cap() -> int:
    """The connections to allow with this process's descriptor limit: half of it, leaving room
    for the upstream connections (one per request in flight), the log, the autoscaler."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(64, min(soft // 2, 100_000))


async def serve(
    app: Callable[..., Awaitable[None]],
    config: HypercornConfig,
    *,
    cap: ConnectionCap | None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with Hypercorn until ``shutdown_trigger`` returns.

    Args:
        app: the ASGI application.
        config: Hypercorn's configuration.
        cap: the connection cap (None: none).
        shutdown_trigger: returns when the server should drain and stop.
        task_status: ``started(binds)`` once listening (Hypercorn's bound URLs).
    """
    setattr(config, "pyworker_cap", cap)  # noqa: B010 (read by _CappedTCPServer)
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)


def hypercorn_config(
    host: str,
    port: int,
    *,
    keep_alive_timeout: float,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> HypercornConfig:
    """Hypercorn's configuration for one of the worker's listeners (TLS with ``certfile``)."""
    config = HypercornConfig()
    # Log fields first: hypercorn caches its logger on first access of config.log. No access
    # log: the router's key travels in query strings and headers (vast-2026.md §4).
    config.accesslog = None
    config.errorlog = logging.getLogger("pyworker.http")
    config.bind = [f"{host}:{port}"]
    # Requests have already drained when the trigger fires; this only bounds stragglers.
    config.graceful_timeout = 2.0
    # Short: an idle connection (or one whose request head never completes, as slowloris
    # does) holds a descriptor; clients that want to reuse one do so within seconds.
    config.keep_alive_timeout = keep_alive_timeout
    # The router and load balancers keep connections for long: hypercorn's default of closing
    # every connection after 1,000 requests costs reconnects (TLS handshakes).
    config.keep_alive_max_requests = 1_000_000
    config.include_server_header = False
    if certfile is not None:
        config.certfile = certfile
        config.keyfile = keyfile
    return config
