"""The worker process as the fault soak sees it from outside, through ``/proc``.

Its resident memory, its open descriptors and how many of its sockets sit in CLOSE-WAIT, read
at one moment (:func:`sample`), and its limit on open files. Nothing here talks to the worker:
these are the kernel's figures, whatever the worker is doing (once it has exited, reading them
raises OSError).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import attrs

from bench.procs import rss_kib

_TCP_STATES = {"08": "CLOSE-WAIT"}


@attrs.define(eq=False, kw_only=True)
class Sample:
    """The worker process's resources at one moment."""

    at: float
    rss_kib: int
    fds: int
    close_wait: int


def socket_states(pid: int) -> Counter[str]:
    """The TCP states of the sockets ``pid`` holds (from /proc/PID/fd and /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                states[_TCP_STATES.get(fields[3], fields[3])] += 1
    return states


def sample(pid: int) -> Sample:
    """Read the worker's RSS, descriptors and CLOSE-WAIT sockets now."""
    return Sample(
        at=time.monotonic(),
        rss_kib=rss_kib(pid),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        close_wait=socket_states(pid)["CLOSE-WAIT"],
    )


def fd_limit(pid: int) -> str:
    """The soft and hard limits on open files of ``pid`` (from /proc/PID/limits)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return f"{soft} (hard {hard})"
    except OSError:
        pass
    return "unknown"
