"""Child processes: the demo or fake model server, run as a service of the root nursery."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

log = logging.getLogger("pyworker.process")

_TERMINATE_GRACE = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for children that cannot report the one they bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_available(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (as the HTTP server will, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def run_process_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run ``argv`` with stdout and stderr appended to ``log_path`` until it exits.

    ``task_status.started(process)`` once spawned. When cancelled, the child gets SIGTERM and
    then, after a grace period, SIGKILL: it never outlives the worker. The child runs in its
    own session so a terminal's Ctrl-C reaches only us, and we stop it after draining.

    Returns:
        The child's exit code.
    """
    fd = await trio.to_thread.run_sync(_open_log, log_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        process = await trio.lowlevel.open_process(
            list(argv), stdout=fd, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    finally:
        os.close(fd)
    task_status.started(process)
    try:
        code = await process.wait()
    finally:
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                await _stop(process)
    if code:
        log.warning(
            "%s exited with code %d (see %s)", argv[2] if len(argv) > 2 else argv[0], code, log_path
        )
    return code


async def _stop(process: trio.Process) -> None:
    try:
        process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return
    with trio.move_on_after(_TERMINATE_GRACE):
        await process.wait()
        return
    log.warning("child %d ignored SIGTERM; killing it", process.pid)
    process.kill()
    await process.wait()
