"""Follow the model server's log file, line by line, across restarts.

The model server writes its log to a file that may not exist yet, may be truncated, or may be
replaced (Vast's start script moves the old log to ``MODEL_LOG.old`` and the new server writes a
fresh file). :class:`LogTailer` polls the file from a worker thread, so the event loop never
blocks on the filesystem, and turns what it reads into whole, decoded lines.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

logger = logging.getLogger("pyworker.logtail")

_LAST_BYTES = 64
"""Bytes of what was read last that each poll checks are still in place (a rewrite shows)."""

# "\r\n" first so it counts as one line ending; a lone "\r" ends a line too (tqdm progress bars).
_EOL = re.compile(rb"\r\n?|\n")


def _cut(line: bytes, limit: int) -> bytes:
    """Cut ``line`` to at most ``limit`` bytes, backing off to a UTF-8 character boundary."""
    if len(line) <= limit:
        return line
    end = limit
    # A continuation byte (0b10xxxxxx) just past the cut means a character straddles it; drop
    # that character's start too instead of leaving a U+FFFD behind. Never more than 3 bytes.
    while end > max(limit - 3, 0) and line[end] & 0xC0 == 0x80:
        end -= 1
    return line[:end]


@attrs.define(eq=False)
class _LineSplitter:
    """Turns a byte stream into decoded lines; pure, so the tests can drive it directly."""

    limit: int
    # Bytes of the unfinished last line, capped at limit + 1: the extra byte tells _cut whether a
    # character straddles the limit, and everything beyond it is discarded.
    _partial: bytearray = attrs.field(factory=bytearray)
    # The last chunk ended in "\r": a "\n" starting the next chunk belongs to that line ending.
    _after_cr: bool = False

    def feed(self, data: bytes) -> list[str]:
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]
        if not data:
            return []
        self._after_cr = data[-1:] == b"\r"
        parts = _EOL.split(data)
        self._partial += parts[0][: self.limit + 1 - len(self._partial)]
        if len(parts) == 1:
            return []
        lines = [self._decode(self._partial)]
        lines.extend(self._decode(part) for part in parts[1:-1])
        self._partial = bytearray(parts[-1][: self.limit + 1])
        return lines

    def flush(self) -> str | None:
        """End the stream: the unfinished last line, if any, as a line."""
        self._after_cr = False
        if not self._partial:
            return None
        line = self._decode(self._partial)
        self._partial = bytearray()
        return line

    def _decode(self, line: bytes | bytearray) -> str:
        # Whole lines only, so a multi-byte character split across reads decodes correctly.
        return _cut(bytes(line), self.limit).decode("utf-8", errors="replace")


@attrs.define(eq=False)
class _Source:
    """The file being followed. Only one thread touches it at a time (see LogTailer.run)."""

    fd: int | None = None
    ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of fd
    pos: int = 0
    seen_file: bool = False
    last: bytes = b""  # the last bytes read, just before pos: still there unless rewritten


@attrs.define(eq=False)
class _Step:
    """What one poll found, in the order the caller must act on it."""

    closed: bool = False  # the old file was drained, then replaced or removed
    new_file: bool = False  # truncated in place, or a file other than the first was opened
    data: bytes = b""
    error: OSError | None = None
    missing: bool = False  # no file at the path (yet)


@attrs.define(eq=False)
class LogTailer:
    """Follows a log file by polling, from its beginning and across truncation and replacement.

    Attributes:
        path: the log file. It need not exist yet.
        poll_interval: seconds between polls once all available data has been read.
        max_line_bytes: longer lines are cut to this many bytes (at a UTF-8 character
            boundary); the rest of such a line is discarded.
        read_chunk: most bytes read per poll; a large backlog is read in a series of polls
            without sleeping in between, yielding to other tasks after each.
    """

    path: Path = attrs.field(converter=Path)
    poll_interval: float = attrs.field(default=0.25, validator=attrs.validators.gt(0))
    max_line_bytes: int = attrs.field(default=64 * 1024, validator=attrs.validators.ge(1))
    read_chunk: int = attrs.field(
        default=1024 * 1024, kw_only=True, validator=attrs.validators.ge(1)
    )
    missing_warning_every: float = attrs.field(
        default=30.0, kw_only=True, validator=attrs.validators.gt(0)
    )
    """While no file is at the path, a warning this often (a wrong ``MODEL_LOG`` path would
    otherwise wait in silence)."""

    async def run(
        self,
        on_line: Callable[[str], None],
        on_new_file: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the file until cancelled, calling back for each line.

        The first file found (at start, or when it first appears) is read from its beginning,
        so a worker restarted after the model loaded still sees the ready line. Lines end in
        ``\\n``, ``\\r\\n`` or a lone ``\\r``; an unfinished last line waits for its ending.

        When the file is truncated or replaced, the old file's remaining data is delivered
        first, then its unfinished last line (as a line), then ``on_new_file()``, then the new
        file's lines. Filesystem errors are logged once each and retried at every poll.

        Args:
            on_line: called synchronously, in order, with each line without its line ending.
            on_new_file: called when the model server starts a new log, before its first line.
            task_status: ``started()`` (with no value) once watching, which does not wait for
                the file to exist.

        Raises:
            Whatever ``on_line`` or ``on_new_file`` raise. It never returns otherwise.
        """
        src = _Source()
        lines = _LineSplitter(self.max_line_bytes)
        warned: set[tuple[type[OSError], int | None, str | None]] = set()
        missing_since: float | None = None
        missing_warned = 0.0
        task_status.started()
        try:
            while True:
                # One thread hop per poll. abandon_on_cancel=False (the default) keeps a
                # cancellation waiting for the thread, so `src` is never touched by two threads
                # and the finally below closes whatever fd the thread left open.
                step = await trio.to_thread.run_sync(self._poll, src)
                if step.closed or step.new_file:
                    tail = lines.flush()
                    if tail is not None:
                        on_line(tail)
                if step.new_file:
                    on_new_file()
                for line in lines.feed(step.data):
                    on_line(line)
                if step.missing:
                    now = trio.current_time()
                    if missing_since is None:
                        missing_since = missing_warned = now
                    elif now - missing_warned >= self.missing_warning_every:
                        missing_warned = now
                        logger.warning(
                            "model log %s still does not exist after %.0f s: is MODEL_LOG "
                            "right, and is the model server running?",
                            self.path,
                            now - missing_since,
                        )
                else:
                    missing_since = None
                if step.error is not None:
                    key = (type(step.error), step.error.errno, step.error.strerror)
                    if key not in warned:
                        warned.add(key)
                        logger.warning("cannot follow model log %s: %s", self.path, step.error)
                if len(step.data) < self.read_chunk:
                    # Caught up (or waiting for the file): only now is it worth sleeping.
                    await trio.sleep(self.poll_interval)
        finally:
            if src.fd is not None:
                os.close(src.fd)
                src.fd = None

    def _poll(self, src: _Source) -> _Step:
        """One poll, in a worker thread: notice a new file, then read at most one chunk."""
        step = _Step()
        try:
            if src.fd is not None:
                if (
                    src.last
                    and os.pread(src.fd, len(src.last), src.pos - len(src.last)) != src.last
                ):
                    # Truncated in place: the bytes just read are gone (the file is shorter) or
                    # others stand there (truncated, then rewritten past our position between
                    # two polls, which a size check alone reads as appended data). A new log.
                    src.pos = 0
                    step.new_file = True
                step.data = os.pread(src.fd, self.read_chunk, src.pos)
                # At EOF: the only moment a replacement can be noticed, so the old file is
                # always drained first.
                if not step.data and not step.new_file and not self._still_current(src):
                    os.close(src.fd)
                    src.fd = None
                    step.closed = True
                src.pos += len(step.data)
                kept = b"" if step.new_file else src.last
                src.last = (kept + step.data)[-_LAST_BYTES:]
            if src.fd is None:
                self._open(src, step)
        except OSError as exc:
            step.error = exc
        return step

    def _still_current(self, src: _Source) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        # Holding the old fd keeps its inode alive, so a new file cannot reuse its number.
        return (st.st_dev, st.st_ino) == src.ident

    def _open(self, src: _Source, step: _Step) -> None:
        try:
            # O_NONBLOCK: opening a FIFO must not block this (uncancellable) thread.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            step.missing = True
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path))
            data = os.pread(fd, self.read_chunk, 0)
        except BaseException:
            os.close(fd)
            raise
        src.fd, src.ident, src.pos = fd, (st.st_dev, st.st_ino), len(data)
        src.last = data[-_LAST_BYTES:]
        step.new_file = src.seen_file
        src.seen_file = True
        step.data = data
