"""Micro-benchmark of the upstream response reader (:mod:`pyworker._http1`), beside h11.

``python -m bench.reader [--rounds N] [--against FILE]``

Each case is timed for our reader and for h11 on the same bytes, in the same run, and printed
with the ratio ours / h11 (h11 is the baseline: the reader exists because h11 costs too much on
the hot path). ``--against FILE`` times another revision's reader as well, a second baseline
(its ``_http1.py``, with the modules beside it that it imports)::

    mkdir -p /tmp/main && git archive main pyworker | tar -x -C /tmp/main
    .venv/bin/python -m bench.reader --against /tmp/main/pyworker/_http1.py

Cases (the best of ``--rounds`` rounds; CPU time per event, in microseconds):

* ``head``: a typical model server's answer (uvicorn's head, a small JSON body), per response;
* ``stream N``: N server-sent events as chunks of 66 bytes on the wire, all buffered at once
  (the relay fell behind the model server), per event: the cost of an event must not grow
  with what is buffered behind it;
* ``large``: a 4 MiB Content-Length body in 64 KiB reads, per read.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import h11

from pyworker import _http1

HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Wed, 25 Nov 2026 10:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-length: 70\r\ncontent-type: application/json\r\n\r\n"
)
JSON = b'{"response": " the answer", "prompt_tokens": 1, "generated_tokens": 2}'
EVENT = b'data: {"token": {"id": 12, "text": " word", "special": 0}}\n\n'
assert len(JSON) == 70
assert len(EVENT) == 60  # with its chunk line and CRLF, 66 bytes on the wire
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
READ = 64 * 1024

Case = Callable[[], float]
"""One round: returns the seconds spent per event."""


def _ours(module: ModuleType) -> dict[str, Callable[[int], Case]]:
    reader_type = module.ResponseReader
    need_data, end = module.NEED_DATA, module.END

    def head(count: int) -> Case:
        def run() -> float:
            readers = [reader_type() for _ in range(count)]
            for reader in readers:
                reader.expect()
            start = time.perf_counter()
            for reader in readers:
                reader.feed(HEAD + JSON)
                while reader.next_event() is not end:
                    pass
            return (time.perf_counter() - start) / count

        return run

    def stream(count: int) -> Case:
        body = _chunks(count)

        def run() -> float:
            reader = reader_type()
            reader.expect()
            reader.feed(STREAM_HEAD)
            reader.next_event()
            reader.feed(body)
            events = 0
            start = time.perf_counter()
            while True:
                event = reader.next_event()
                if event is end or event is need_data:
                    break
                events += 1
            elapsed = time.perf_counter() - start
            assert events == count, events
            return elapsed / events

        return run

    def large(size: int) -> Case:
        reads = [b"x" * READ] * (size // READ)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size

        def run() -> float:
            reader = reader_type()
            reader.expect()
            reader.feed(head)
            reader.next_event()
            start = time.perf_counter()
            for data in reads:
                reader.feed(data)
                while reader.next_event().__class__ is bytes:
                    pass
            return (time.perf_counter() - start) / len(reads)

        return run

    return {"head": head, "stream": stream, "large": large}


def _h11() -> dict[str, Callable[[int], Case]]:
    def connection() -> h11.Connection:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="POST", target="/", headers=[("host", "m")]))
        conn.send(h11.EndOfMessage())
        return conn

    def head(count: int) -> Case:
        def run() -> float:
            conns = [connection() for _ in range(count)]
            start = time.perf_counter()
            for conn in conns:
                conn.receive_data(HEAD + JSON)
                while type(conn.next_event()) is not h11.EndOfMessage:
                    pass
            return (time.perf_counter() - start) / count

        return run

    def stream(count: int) -> Case:
        body = _chunks(count)

        def run() -> float:
            conn = connection()
            conn.receive_data(STREAM_HEAD)
            conn.next_event()
            conn.receive_data(body)
            events = 0
            start = time.perf_counter()
            while type(conn.next_event()) is h11.Data:
                events += 1
            elapsed = time.perf_counter() - start
            assert events == count, events
            return elapsed / events

        return run

    def large(size: int) -> Case:
        reads = [b"x" * READ] * (size // READ)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size

        def run() -> float:
            conn = connection()
            conn.receive_data(head)
            conn.next_event()
            start = time.perf_counter()
            for data in reads:
                conn.receive_data(data)
                while type(conn.next_event()) is h11.Data:
                    pass
            return (time.perf_counter() - start) / len(reads)

        return run

    return {"head": head, "stream": stream, "large": large}


def _chunks(count: int) -> bytes:
    return b"%x\r\n%s\r\n" % (len(EVENT), EVENT) * count


def _load(path: str) -> ModuleType:
    # A package of its own for the file, so that its relative imports find the files beside it.
    package = ModuleType("_bench_other")
    package.__path__ = [os.path.dirname(os.path.abspath(path))]
    sys.modules[package.__name__] = package
    spec = importlib.util.spec_from_file_location("_bench_other._http1", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _best(case: Case, rounds: int) -> float:
    return min(case() for _ in range(rounds)) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.reader", description=__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="best of N (default %(default)s)")
    parser.add_argument("--against", metavar="FILE", help="another revision's _http1.py")
    args = parser.parse_args(argv)
    readers = {"ours": _ours(_http1), "h11": _h11()}
    if args.against:
        readers["against"] = _ours(_load(args.against))
    cases = [
        ("head", "head", 200),
        ("stream 100 (6.6 kB)", "stream", 100),
        ("stream 4000 (264 kB)", "stream", 4000),
        ("large (4 MiB)", "large", 4 << 20),
    ]
    columns = ["ours us", "h11 us", "ours/h11"]
    if args.against:
        columns += ["against us", "ours/against"]
    print(f"{'case (per event)':<22}" + "".join(f"{c:>14}" for c in columns))
    for label, kind, size in cases:
        figures = {name: _best(make[kind](size), args.rounds) for name, make in readers.items()}
        row = [figures["ours"], figures["h11"], figures["ours"] / figures["h11"]]
        if args.against:
            row += [figures["against"], figures["ours"] / figures["against"]]
        print(f"{label:<22}" + "".join(f"{v:>14.2f}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
