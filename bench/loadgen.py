"""The load generator: one process, one epoll loop, many keep-alive HTTP/1.1 connections.

``python -m bench.loadgen SPEC_JSON`` prints one JSON line of results. Written against raw
non-blocking sockets (no framework, a few microseconds of CPU per request or event) so that on
its own core it stays well below saturation while the server under test is saturated; each
run reports the generator's own CPU so that claim is checked every time.

Modes (``spec["mode"]``):

* ``closed``: ``connections`` connections each send a request as soon as the previous answer
  is complete; per-request latency.
* ``stream``: the same, for chunked streams: time to the first event, the gaps between events
  of one stream (server-sent events, counted inside each chunk: events relayed in one chunk
  show as gaps of 0), events per second. Streams longer than the run are simply held open
  (and dropped at the end, which the server sees as clients going away).
* ``open``: requests arrive at ``rate`` per second on a fixed schedule whatever the answers do
  (no coordinated omission: latency counts from the scheduled arrival), each on an idle
  connection or a new one.

Measurements count only inside the window ``[warmup, warmup + duration]`` from the start. An
optional probe sends ``GET probe_path`` every ``probe_interval`` seconds on its own connection
(the worker's loop-lag proxy); ``pids`` are processes whose CPU time is read at the window's
edges; ``rss_pid`` is sampled every 100 ms for its peak resident memory.
"""

from __future__ import annotations

import errno
import heapq
import json
import os
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.loadconn import Body, Conn, parse_head
from bench.procs import cpu_seconds, machine_busy_seconds, rss_kib
from bench.stats import summary_ms

_RECV = 65536
_HEAD_END = b"\r\n\r\n"
_HARD_MARGIN = 10.0
_RECONNECT_DELAY = 0.05
_MAX_ERRORS = 10_000


class LoadGen:
    """Runs one spec (see the module docstring) and collects its results."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.mode: str = spec["mode"]
        self.addr = (spec.get("host", "127.0.0.1"), int(spec["port"]))
        self.body = Body(spec, f"{self.addr[0]}:{self.addr[1]}")
        probe_port = spec.get("probe_port")
        self.probe_addr = (self.addr[0], int(probe_port)) if probe_port else None
        self.probe_body = Body({"method": "GET", "path": spec.get("probe_path", "/ping")}, "p")
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.idle: list[Conn] = []
        self.timers: list[tuple[int, int, Callable[[], None]]] = []
        self._timer_seq = 0
        now = time.perf_counter_ns()
        self.t0 = now
        self.win_start = now + int(spec.get("warmup", 0.0) * 1e9)
        self.win_end = self.win_start + int(spec["duration"] * 1e9)
        self.stop_at = self.win_end + int(spec.get("drain", 0.0) * 1e9)
        self.hard_stop = self.stop_at + int(_HARD_MARGIN * 1e9)
        self.running = True
        # Results.
        self.latency: list[int] = []
        self.latency_429: list[int] = []
        self.censored: list[int] = []
        self.ttfb: list[int] = []
        self.gaps: list[int] = []
        self.probe_latency: list[int] = []
        self.statuses: Counter[int] = Counter()
        self.retry_after = 0
        self.events_in_window = 0
        self.completed_in_window = 0
        self.errors: Counter[str] = Counter()
        self.arrivals = 0
        self.unfinished = 0
        self.peak_connections = 0
        self.rss_peak = 0
        self.reconnects = 0
        self.probe_conn: Conn | None = None
        self.probe_skipped = 0
        self.probe_interval = 0
        self.interarrival = 0
        self.next_arrival = 0
        self.cpu_start: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    # -- timers ----------------------------------------------------------------------------
    def at(self, when: int, action: Callable[[], None]) -> None:
        """Run ``action`` at ``when`` (perf_counter_ns)."""
        self._timer_seq += 1
        heapq.heappush(self.timers, (when, self._timer_seq, action))

    # -- connections -----------------------------------------------------------------------
    def open(self, probe: bool = False) -> Conn | None:
        """Start connecting a new connection (non-blocking); None if that failed at once."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        addr = self.probe_addr if probe and self.probe_addr else self.addr
        code = sock.connect_ex(addr)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.errors[f"connect: {os.strerror(code)}"] += 1
            return None
        conn = Conn(sock, probe)
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, select.EPOLLIN | select.EPOLLOUT)
        self.peak_connections = max(self.peak_connections, len(self.conns))
        return conn

    def close(self, conn: Conn) -> None:
        """Drop a connection."""
        if self.conns.pop(conn.fd, None) is None:
            return
        self.epoll.unregister(conn.fd)
        conn.sock.close()
        if conn in self.idle:
            self.idle.remove(conn)

    def send(self, conn: Conn, data: bytes, now: int) -> None:
        """Send one request on ``conn`` (queued until it is connected)."""
        conn.state = 1
        conn.sent = now
        conn.status = 0
        conn.events = 0
        conn.retry_after = False
        if not conn.connected:
            conn.pending = data
            return
        try:
            sent = conn.sock.send(data)
        except OSError as exc:
            self.fail(conn, f"send: {exc.strerror}", now)
            return
        if sent < len(data):
            conn.pending = data[sent:]
            self.epoll.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def fail(self, conn: Conn, reason: str, now: int) -> None:
        """A connection broke: count it, drop it, and keep the load going if it carried load."""
        self.errors[reason] += 1
        was_busy = conn.state != 0
        self.close(conn)
        if self.mode == "open" and was_busy:
            self.unfinished += 1
        if sum(self.errors.values()) > _MAX_ERRORS:
            self.running = False
        elif self.mode != "open" and not conn.probe and now < self.win_end:
            self.at(now + int(_RECONNECT_DELAY * 1e9), self.start_connection)

    def start_connection(self) -> None:
        """Open a load connection and send its first request (closed and stream modes)."""
        conn = self.open()
        if conn is not None:
            self.send(conn, self.body.next(), time.perf_counter_ns())

    # -- events ----------------------------------------------------------------------------
    def on_writable(self, conn: Conn, now: int) -> None:
        if not conn.connected:
            code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.fail(conn, f"connect: {os.strerror(code)}", now)
                return
            conn.connected = True
        if conn.pending:
            try:
                sent = conn.sock.send(conn.pending)
            except OSError as exc:
                self.fail(conn, f"send: {exc.strerror}", now)
                return
            conn.pending = conn.pending[sent:]
        if not conn.pending:
            self.epoll.modify(conn.fd, select.EPOLLIN)

    def on_readable(self, conn: Conn, now: int) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except OSError as exc:
            self.fail(conn, f"recv: {exc.strerror}", now)
            return
        if not data:
            if conn.state == 0:
                self.close(conn)  # the server closed an idle keep-alive connection
            else:
                self.fail(conn, "closed mid-response", now)
            return
        buf = conn.buf
        buf += data
        while True:
            state = conn.state
            if state == 1:
                end = buf.find(_HEAD_END)
                if end < 0:
                    return
                parse_head(conn, bytes(buf[:end]))
                del buf[: end + 4]
                if conn.state == 2 and conn.remaining == 0:
                    self.done(conn, now)
            elif state == 2:
                take = min(conn.remaining, len(buf))
                del buf[:take]
                conn.remaining -= take
                if conn.remaining:
                    return
                self.done(conn, now)
            elif state == 3:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                total = line_end + 2 + size + 2
                if len(buf) < total:
                    return
                # Server-sent events end with a blank line; a chunk holding several (relayed
                # together) counts as several, the later ones with no gap before them.
                events = buf.count(b"\n\n", line_end + 2, line_end + 2 + size) or 1
                del buf[:total]
                if size == 0:
                    self.done(conn, now)
                else:
                    for _ in range(events):
                        self.event(conn, now)
            else:
                if buf:
                    self.fail(conn, "unexpected bytes", now)
                return

    def event(self, conn: Conn, now: int) -> None:
        """One chunk (event) of a streamed answer arrived."""
        in_window = self.win_start <= now <= self.win_end
        if conn.events == 0:
            conn.first_event = now
            if in_window:
                self.ttfb.append(now - conn.sent)
        elif in_window and conn.last_event >= self.win_start:
            self.gaps.append(now - conn.last_event)
        conn.events += 1
        conn.last_event = now
        if in_window:
            self.events_in_window += 1

    def done(self, conn: Conn, now: int) -> None:
        """A response is complete: record it and send the next request."""
        conn.state = 0
        status = conn.status
        if conn.probe:
            if conn.closing:
                self.close(conn)
            if self.win_start <= now <= self.win_end:
                self.probe_latency.append(now - conn.sent)
            return
        if conn.closing:
            self.close(conn)
            self.reconnects += 1
        if self.mode == "open":
            if self.win_start <= conn.arrival <= self.win_end:
                self.statuses[status] += 1
                latency = now - conn.arrival
                if status == 429:
                    self.latency_429.append(latency)
                    self.retry_after += conn.retry_after
                elif 200 <= status < 300:
                    self.latency.append(latency)
            if not conn.closing:
                self.idle.append(conn)
            return
        if self.win_start <= now <= self.win_end:
            self.statuses[status] += 1
            self.completed_in_window += 1
            self.latency.append(now - conn.sent)
        if now < self.win_end and self.running:
            if conn.closing:
                self.start_connection()
            else:
                self.send(conn, self.body.next(), now)

    # -- open loop and probe ---------------------------------------------------------------
    def arrive(self) -> None:
        """One scheduled arrival (open loop); schedules the next."""
        scheduled = self.next_arrival
        self.arrivals += 1
        conn = self.idle.pop() if self.idle else self.open()
        if conn is not None:
            conn.arrival = scheduled
            self.send(conn, self.body.next(), time.perf_counter_ns())
        elif self.win_start <= scheduled <= self.win_end:
            self.unfinished += 1
        self.next_arrival = scheduled + self.interarrival
        if self.next_arrival <= self.win_end:
            self.at(self.next_arrival, self.arrive)

    def probe_tick(self) -> None:
        """Send a probe request unless the last one is still out; schedule the next tick."""
        now = time.perf_counter_ns()
        conn = self.probe_conn
        if conn is None or conn.fd not in self.conns:
            conn = self.probe_conn = self.open(probe=True)
        if conn is not None:
            if conn.state == 0:
                self.send(conn, self.probe_body.next(), now)
            else:
                self.probe_skipped += 1  # the last probe takes longer than the interval
        if now < self.win_end:
            self.at(now + self.probe_interval, self.probe_tick)

    # -- measurement window ----------------------------------------------------------------
    def read_cpu(self) -> dict[str, float]:
        values = {"loadgen": sum(os.times()[:2]), "machine": machine_busy_seconds()}
        for name, pid in self.spec.get("pids", {}).items():
            try:
                values[name] = cpu_seconds(int(pid))
            except OSError:
                values[name] = float("nan")
        return values

    def window_opens(self) -> None:
        self.cpu_start = self.read_cpu()

    def window_closes(self) -> None:
        end = self.read_cpu()
        self.cpu = {name: end[name] - self.cpu_start.get(name, 0.0) for name in end}

    def sample_rss(self) -> None:
        pid = self.spec.get("rss_pid")
        if pid:
            try:
                self.rss_peak = max(self.rss_peak, rss_kib(int(pid)))
            except OSError:
                pass
            now = time.perf_counter_ns()
            if now < self.win_end:
                self.at(now + 100_000_000, self.sample_rss)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        spec = self.spec
        self.at(self.win_start, self.window_opens)
        self.at(self.win_end, self.window_closes)
        if self.probe_addr is not None:
            self.probe_interval = int(spec.get("probe_interval", 0.1) * 1e9)
            self.at(self.t0, self.probe_tick)
        self.sample_rss()
        if self.mode == "open":
            self.interarrival = int(1e9 / spec["rate"])
            self.next_arrival = self.t0
            self.at(self.t0, self.arrive)
        else:
            ramp = int(spec.get("ramp", 0.0) * 1e9)
            count = int(spec["connections"])
            for index in range(count):
                self.at(self.t0 + ramp * index // max(count, 1), self.start_connection)
        self.loop()
        if self.mode == "open":
            now = time.perf_counter_ns()
            for conn in self.conns.values():
                if conn.state and not conn.probe and self.win_start <= conn.arrival <= self.win_end:
                    self.unfinished += 1
                    self.censored.append(now - conn.arrival)
        for conn in list(self.conns.values()):
            self.close(conn)
        return self.results()

    def loop(self) -> None:
        conns = self.conns
        timers = self.timers
        epoll = self.epoll
        stop_at = self.stop_at if self.mode == "open" else self.win_end
        while self.running:
            now = time.perf_counter_ns()
            while timers and timers[0][0] <= now:
                heapq.heappop(timers)[2]()
                now = time.perf_counter_ns()
            if now >= stop_at or now >= self.hard_stop:
                break
            if self.mode == "open" and now >= self.win_end and self.drained():
                break
            wake = min(timers[0][0] if timers else stop_at, stop_at)
            for fd, mask in epoll.poll(max(0.0, (wake - now) / 1e9)):
                conn = conns.get(fd)
                if conn is None:
                    continue
                now = time.perf_counter_ns()
                if mask & select.EPOLLOUT:
                    self.on_writable(conn, now)
                    if fd not in conns:
                        continue
                if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self.on_readable(conn, now)
        if not self.cpu:
            self.window_closes()

    def drained(self) -> bool:
        return not any(c.state and not c.probe for c in self.conns.values())

    def results(self) -> dict[str, Any]:
        window = (self.win_end - self.win_start) / 1e9
        return {
            "mode": self.mode,
            "window_s": window,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "completed": self.completed_in_window,
            "throughput": self.completed_in_window / window,
            "latency_ms": summary_ms(self.latency),
            "latency_429_ms": summary_ms(self.latency_429),
            "latency_with_unfinished_ms": summary_ms(self.latency + self.censored),
            "retry_after": self.retry_after,
            "ttfb_ms": summary_ms(self.ttfb),
            "gap_ms": summary_ms(self.gaps),
            "gaps_under_1ms": sum(1 for g in self.gaps if g < 1_000_000),
            "events": self.events_in_window,
            "events_per_s": self.events_in_window / window,
            "probe_ms": summary_ms(self.probe_latency),
            "probe_skipped": self.probe_skipped,
            "arrivals": self.arrivals,
            "unfinished": self.unfinished,
            "errors": dict(self.errors),
            "peak_connections": self.peak_connections,
            "reconnects": self.reconnects,
            "rss_peak_kib": self.rss_peak,
            "cpu_s": self.cpu,
        }


def main() -> int:
    """Run the spec given as the first argument; print the results as one JSON line."""
    spec = json.loads(sys.argv[1])
    print(json.dumps(LoadGen(spec).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
