"""Child processes: the demo or fake model server, run as a service of the root nursery."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

log = logging.getLogger("pyworker.process")


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
    env: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run ``argv`` with stdout and stderr appended to ``log_path`` until it exits.

    A service for ``nursery.start``: ``task_status.started(process)`` once spawned. When
    cancelled, the child gets SIGTERM and then, after trio's grace period, SIGKILL
    (:func:`trio.run_process`'s own cancellation), so it never outlives the worker. The child
    runs in its own session so a terminal's Ctrl-C reaches only us, and we stop it after
    draining.

    Returns:
        The child's exit code.
    """
    fd = await trio.to_thread.run_sync(_open_log, log_path)
    try:
        finished = await trio.run_process(
            list(argv),
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            check=False,
            task_status=task_status,
        )
    finally:
        os.close(fd)
    if finished.returncode:
        log.warning(
            "%s exited with code %d (see %s)", " ".join(argv), finished.returncode, log_path
        )
    return finished.returncode
