"""The fake servers' log: lines appended to a file (or the standard streams), flushed one by one.

One writer serves every fake; what differs between the servers they imitate is the shape of a
line (:data:`LineFormat`: :func:`stamped`, :func:`bare`, or a server's own) and, without a log
file, which standard stream a line goes to.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Self, TextIO

import attrs

LineFormat = Callable[[str, str], str]
"""Turns a level (``INFO``, ``WARNING``, ``ERROR``) and a message into a log line."""


# strftime is the slow part of a timestamp; most lines share their second with the last one.
@functools.lru_cache(maxsize=1)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def utc_timestamp(now: float, *, digits: int = 3) -> str:
    """``2026-11-25T16:00:00.123Z``: UTC, with ``digits`` digits of the second's fraction."""
    second = int(now)
    fraction = int((now - second) * 10**digits)
    return f"{_utc_second(second)}.{fraction:0{digits}d}Z"


def stamped(level: str, message: str) -> str:
    """``2026-11-25T16:00:00.123Z INFO message`` (the kit's own format)."""
    return f"{utc_timestamp(time.time())} {level} {message}"


def bare(level: str, message: str) -> str:
    """The message alone, as Python's logging with ``%(message)s`` writes it (ComfyUI)."""
    return message


@attrs.define(eq=False)
class LogWriter:
    """Writes a fake's log lines, each at once and flushed, formatted as its server does.

    With a log file both kinds of line, "stdout" and "stderr", go to it in the order written
    (it is what ``server >log 2>&1`` would hold), so a process tailing it sees each line as
    soon as the event happened. Without one, each goes to the standard stream the real server
    writes it on.

    Attributes:
        stdout: where stdout lines go.
        stderr: where stderr lines go (by default the same stream).
        line_format: the shape of :meth:`write`'s lines.
        levels_on_stderr: whether :meth:`write`'s lines are stderr lines.
    """

    stdout: TextIO
    stderr: TextIO = attrs.field(default=attrs.Factory(lambda self: self.stdout, takes_self=True))
    line_format: LineFormat = attrs.field(default=stamped, kw_only=True)
    levels_on_stderr: bool = attrs.field(default=False, kw_only=True)
    _owns_stream: bool = attrs.field(default=False, kw_only=True)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None,
        *,
        line_format: LineFormat = stamped,
        levels_on_stderr: bool = False,
    ) -> Self:
        """Append to ``path``, or write to the standard streams when ``path`` is None.

        Args:
            path: the log file; created if missing, never truncated.
            line_format: see :attr:`line_format`.
            levels_on_stderr: see :attr:`levels_on_stderr`.

        Raises:
            OSError: the file cannot be opened for appending.
        """
        if path is None:
            return cls(
                sys.stdout, sys.stderr, line_format=line_format, levels_on_stderr=levels_on_stderr
            )
        # Closed by close(): the writer owns the file for the process's life.
        file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        return cls(
            file, line_format=line_format, levels_on_stderr=levels_on_stderr, owns_stream=True
        )

    def redirect_std_streams(self) -> None:
        """Send this process's stdout and stderr (file descriptors 1 and 2) to the log file.

        Tracebacks, C-level errors and stray prints then land in the log between our own
        lines, as when an operator runs ``server >log 2>&1``. Without a file, nothing changes.
        """
        if not self._owns_stream:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        fd = self.stdout.fileno()
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def line(self, text: str, *, stderr: bool = False) -> None:
        """Append ``text`` as it is, as one stdout (or stderr) line."""
        stream = self.stderr if stderr else self.stdout
        stream.write(text + "\n")
        stream.flush()

    def write(self, level: str, message: str) -> None:
        """Append a line at ``level`` (``INFO``, ``WARNING``, ``ERROR``) in :attr:`line_format`."""
        self.line(self.line_format(level, message), stderr=self.levels_on_stderr)

    def info(self, message: str) -> None:
        """Append an ``INFO`` line."""
        self.write("INFO", message)

    def warning(self, message: str) -> None:
        """Append a ``WARNING`` line."""
        self.write("WARNING", message)

    def error(self, message: str) -> None:
        """Append an ``ERROR`` line."""
        self.write("ERROR", message)

    def close(self) -> None:
        """Close the file (standard streams are flushed and left open)."""
        if self._owns_stream:
            self.stdout.close()
        else:
            self.stdout.flush()
            self.stderr.flush()
