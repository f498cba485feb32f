"""Tests for pyworker._logtail: following the model server's log file."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from pyworker._logtail import LogTailer, _LineSplitter

NEW = "<new file>"  # stands for an on_new_file() call in the recorded events
POLL = 0.01


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


@attrs.define(eq=False)
class Recorder:
    """Records the tailer's callbacks and lets a test wait for them without fixed sleeps."""

    events: list[str] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def on_line(self, line: str) -> None:
        self.events.append(line)
        self._changed.set()

    def on_new_file(self) -> None:
        self.on_line(NEW)

    async def wait_for(self, expected: list[str]) -> None:
        """Wait until exactly ``expected`` has been recorded (fail if it diverges)."""
        with trio.fail_after(5):
            while len(self.events) < len(expected):
                await self._changed.wait()
                self._changed = trio.Event()
        assert self.events == expected


async def _start(nursery: trio.Nursery, path: Path, **kwargs: int) -> tuple[LogTailer, Recorder]:
    tailer = LogTailer(path, poll_interval=POLL, **kwargs)
    rec = Recorder()
    await nursery.start(tailer.run, rec.on_line, rec.on_new_file)
    return tailer, rec


# --- the pure line splitter ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "lines", "tail"),
    [
        (b"a\nb\r\nc\rd", ["a", "b", "c"], "d"),
        (b"\r10%\r50%\r100%\n", ["", "10%", "50%", "100%"], None),
        (b"\n\n", ["", ""], None),
        ("caf\u00e9 \u2713\n".encode(), ["caf\u00e9 \u2713"], None),
        (b"bad \xff byte\n", ["bad \ufffd byte"], None),
    ],
)
def test_splitter_every_split_point(data: bytes, lines: list[str], tail: str | None) -> None:
    # Whatever the read boundaries, the lines are the same: covers "\r\n" and UTF-8 splits.
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            s = _LineSplitter(1024)
            got = s.feed(data[:i]) + s.feed(data[i:j]) + s.feed(data[j:])
            assert (got, s.flush()) == (lines, tail), (i, j)


def test_splitter_cuts_overlong_lines_at_character_boundary() -> None:
    s = _LineSplitter(10)
    assert s.feed(b"x" * 25 + b"\nshort\n") == ["x" * 10, "short"]
    # 13 bytes: the 5th "\u00e9" straddles the 10-byte cut and is dropped whole.
    assert s.feed(("a" + "\u00e9" * 6 + "\n").encode()) == ["a" + "\u00e9" * 4]
    for _ in range(100):  # an endless line does not grow the buffer
        assert s.feed(b"y" * 1000) == []
    assert s.feed(b"y\nok") == ["y" * 10]
    assert s.flush() == "ok"
    assert s.flush() is None


# --- the tailer ------------------------------------------------------------------------------


async def test_absent_at_start_then_created(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    _, rec = await _start(nursery, log)
    _append(log, b"loading\n")
    await rec.wait_for(["loading"])  # the first file is not a "new" one
    _append(log, b"infer server has started\n")
    await rec.wait_for(["loading", "infer server has started"])


async def test_existing_content_read_from_beginning_then_appends(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"one\ninfer server has started\n")
    _, rec = await _start(nursery, log)
    await rec.wait_for(["one", "infer server has started"])
    _append(log, b"two\n")
    _append(log, b"three\n")
    await rec.wait_for(["one", "infer server has started", "two", "three"])


async def test_partial_line_completed_later(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"one\npar")
    _, rec = await _start(nursery, log)
    await rec.wait_for(["one"])
    _append(log, b"tial\n")
    await rec.wait_for(["one", "partial"])


async def test_progress_lines_and_crlf_split_across_writes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"dl 10%\rdl 50%\rdl 100%\nhalf\r")
    _, rec = await _start(nursery, log)
    await rec.wait_for(["dl 10%", "dl 50%", "dl 100%", "half"])
    _append(log, b"\nnext\n")  # completes "half\r\n": no empty line in between
    await rec.wait_for(["dl 10%", "dl 50%", "dl 100%", "half", "next"])


async def test_utf8_character_split_across_writes(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    encoded = "caf\u00e9\n".encode()
    log.write_bytes(b"x\n" + encoded[:4])  # ends inside the two-byte "\u00e9"
    _, rec = await _start(nursery, log)
    await rec.wait_for(["x"])
    _append(log, encoded[4:])
    await rec.wait_for(["x", "caf\u00e9"])


async def test_truncation(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"old line 1\nold line 2\nold tail")
    _, rec = await _start(nursery, log)
    await rec.wait_for(["old line 1", "old line 2"])
    log.write_bytes(b"new 1\n")  # truncates in place: same inode, shorter than before
    await rec.wait_for(["old line 1", "old line 2", "old tail", NEW, "new 1"])
    _append(log, b"new 2\n")
    await rec.wait_for(["old line 1", "old line 2", "old tail", NEW, "new 1", "new 2"])


async def test_replacement_drains_old_file_first(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"old 1\n")
    _, rec = await _start(nursery, log)
    await rec.wait_for(["old 1"])
    # As Vast's start script does: the old server's last words, the move to .old, a fresh log.
    _append(log, b"old 2\nold 3\nold tail")
    os.replace(log, tmp_path / "model.log.old")
    log.write_bytes(b"new 1\n")
    await rec.wait_for(["old 1", "old 2", "old 3", "old tail", NEW, "new 1"])
    _append(log, b"new 2\n")
    await rec.wait_for(["old 1", "old 2", "old 3", "old tail", NEW, "new 1", "new 2"])


async def test_deleted_stays_absent_then_recreated(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"a\nb")
    _, rec = await _start(nursery, log)
    await rec.wait_for(["a"])
    log.unlink()
    await rec.wait_for(["a", "b"])  # the unfinished last line is flushed when the file goes
    await trio.sleep(20 * POLL)  # absence for a while: no callbacks, no crash
    assert rec.events == ["a", "b"]
    log.write_bytes(b"c\n")
    await rec.wait_for(["a", "b", NEW, "c"])


async def test_overlong_line_is_cut(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"z" * 5000)
    _, rec = await _start(nursery, log, max_line_bytes=100, read_chunk=64)
    _append(log, b"z" * 5000 + b"\nok\n")
    await rec.wait_for(["z" * 100, "ok"])


async def test_large_backlog_complete_and_in_order(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    expected = [f"line {i} of the backlog" for i in range(200_000)]
    log.write_bytes("".join(f"{line}\n" for line in expected).encode())
    _, rec = await _start(nursery, log)
    await rec.wait_for(expected)


class _Warnings(logging.Handler):
    """Collects warnings and wakes a waiting test (the tailer logs from the Trio thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.logged = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.logged.set()


async def test_os_error_logged_once_and_retried(tmp_path: Path, nursery: trio.Nursery) -> None:
    # A directory in the log's place fails on every poll (chmod would not: tests may run as
    # root); the tailer warns once and recovers when a real file takes its place.
    log = tmp_path / "model.log"
    log.mkdir()
    warnings = _Warnings()
    logger = logging.getLogger("pyworker.logtail")
    logger.addHandler(warnings)
    try:
        _, rec = await _start(nursery, log)
        with trio.fail_after(5):
            await warnings.logged.wait()
        await trio.sleep(20 * POLL)  # many more failing polls
        assert len(warnings.messages) == 1
        assert "not a regular file" in warnings.messages[0]
        log.rmdir()
        log.write_bytes(b"ready\n")
        await rec.wait_for(["ready"])
    finally:
        logger.removeHandler(warnings)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_cancellation_closes_the_file(tmp_path: Path) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"x\n" * 10_000)
    before = _open_fds()
    # Cancel at many different points, including while a thread read is in flight.
    for checkpoints in range(30):
        tailer = LogTailer(log, poll_interval=POLL, read_chunk=4096)
        rec = Recorder()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(tailer.run, rec.on_line, rec.on_new_file)
                for _ in range(checkpoints):
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
        assert _open_fds() == before
    # And once it has certainly opened the file.
    async with trio.open_nursery() as nursery:
        tailer = LogTailer(log, poll_interval=POLL)
        rec = Recorder()
        await nursery.start(tailer.run, rec.on_line, rec.on_new_file)
        await rec.wait_for(["x"] * 10_000)
        assert _open_fds() == before + 1
        nursery.cancel_scope.cancel()
    assert _open_fds() == before


# --- changes made between two polls ---------------------------------------------------------


async def _start_meddling(
    nursery: trio.Nursery, path: Path, at: str, meddle: Callable[[], object]
) -> Recorder:
    """Start a tailer that runs ``meddle()`` from its callback for the line ``at``: after one
    poll has returned and before the next begins, whatever the scheduling."""
    rec = Recorder()

    def on_line(line: str) -> None:
        rec.on_line(line)
        if line == at:
            meddle()

    await nursery.start(LogTailer(path, poll_interval=POLL).run, on_line, rec.on_new_file)
    return rec


async def _at_least(rec: Recorder, count: int) -> list[str]:
    """The events once there are ``count`` (a poll's callbacks all run before this looks)."""
    with trio.fail_after(5):
        while len(rec.events) < count:
            await rec._changed.wait()
            rec._changed = trio.Event()
    return rec.events


async def test_truncation_by_one_byte_is_noticed(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"one\ntwo\n")
    rec = await _start_meddling(nursery, log, "two", lambda: os.truncate(log, 7))
    # Re-read from the start: "two" has lost its line ending, so it waits for one.
    await rec.wait_for(["one", "two", NEW, "one"])
    _append(log, b"\n")
    await rec.wait_for(["one", "two", NEW, "one", "two"])


async def test_truncation_then_regrowth_between_polls_is_noticed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    log = tmp_path / "model.log"
    log.write_bytes(b"old\n")
    # write_bytes truncates in place (same inode), then writes more than was there.
    rec = await _start_meddling(nursery, log, "old", lambda: log.write_bytes(b"restarted\n"))
    assert await _at_least(rec, 2) == ["old", NEW, "restarted"]


async def test_a_missing_log_is_reported_every_30_s(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The polls run in a worker thread, which the virtual clock sees as "all tasks blocked":
    # a little real idleness lets each poll finish before time jumps on.
    autojump_clock.autojump_threshold = 0.01
    tailer = LogTailer(path=tmp_path / "nowhere" / "model.log", poll_interval=1.0)
    with caplog.at_level(logging.WARNING, logger="pyworker.logtail"):
        async with trio.open_nursery() as nursery:
            await nursery.start(tailer.run, lambda line: None, lambda: None)
            await trio.sleep(95)
            nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if "still does not exist" in r.getMessage()]
    assert len(warnings) == 3  # at 30, 60 and 90 s
    assert "MODEL_LOG" in warnings[0]
