"""The fake servers' log: timestamped lines appended to a file, one flush per line."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import attrs


def _utc_seconds(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))


@attrs.define(eq=False)
class LogWriter:
    """Writes ``2026-11-25T16:00:00.123Z INFO message`` lines, as a model server logs.

    Each line is written and flushed at once, so a process tailing the file sees it as soon
    as the event happened (the file is what the server's redirected stdout+stderr would be).
    """

    _stream: TextIO
    _owns_stream: bool = False
    # strftime is the slow part of a timestamp; most lines share their second with the last.
    _second: int = -1
    _second_text: str = ""

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None) -> LogWriter:
        """Append to ``path``, or write to standard output when ``path`` is None.

        Args:
            path: the log file; created if missing, never truncated.

        Raises:
            OSError: the file cannot be opened for appending.
        """
        if path is None:
            return cls(sys.stdout)
        return cls(open(path, "a", buffering=1, encoding="utf-8"), owns_stream=True)

    def redirect_std_streams(self) -> None:
        """Send this process's stdout and stderr (file descriptors 1 and 2) to the log too.

        Tracebacks, C-level errors and stray prints then land in the log between our own
        lines, as when an operator runs ``server >log 2>&1``.
        """
        if not self._owns_stream:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        fd = self._stream.fileno()
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def write(self, level: str, message: str) -> None:
        """Append one line at ``level`` (``INFO``, ``WARNING``, ``ERROR``)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = _utc_seconds(now)
        millis = int((now - second) * 1000)
        self._stream.write(f"{self._second_text}.{millis:03d}Z {level} {message}\n")
        if not self._owns_stream:
            self._stream.flush()

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
        """Close the file (standard output is left open)."""
        if self._owns_stream:
            self._stream.close()
        else:
            self._stream.flush()
