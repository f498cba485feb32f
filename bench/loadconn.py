"""The load generator's side of the wire: the requests it sends, and one connection's state.

:mod:`bench.loadgen` drives these from its epoll loop; nothing here does I/O.
"""

from __future__ import annotations

import socket
from typing import Any


class Body:
    """Request bytes: a fixed body, or a signed envelope with an increasing ``reqnum``."""

    def __init__(self, spec: dict[str, Any], host: str) -> None:
        self.method = spec.get("method", "POST").encode()
        self.path = spec["path"].encode()
        self.host = host.encode()
        self.fixed = spec.get("body", "").encode()
        signed = spec.get("signed")
        self.prefix = signed["prefix"].encode() if signed else None
        self.suffix = signed["suffix"].encode() if signed else b""
        self.reqnum = int(signed["reqnum_start"]) if signed else 0
        self._fixed_request = None if self.prefix is not None else self._frame(self.fixed)

    def _frame(self, body: bytes) -> bytes:
        if self.method == b"GET":
            return b"GET %s HTTP/1.1\r\nhost: %s\r\n\r\n" % (self.path, self.host)
        return (
            b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (self.method, self.path, self.host, len(body), body)
        )

    def next(self) -> bytes:
        """The next request's bytes."""
        if self._fixed_request is not None:
            return self._fixed_request
        self.reqnum += 1
        assert self.prefix is not None
        return self._frame(b"%s%d%s" % (self.prefix, self.reqnum, self.suffix))


class Conn:
    """One connection's state: what it sent, and the response being parsed."""

    __slots__ = (
        "arrival",
        "buf",
        "chunked",
        "closing",
        "connected",
        "events",
        "fd",
        "first_event",
        "last_event",
        "pending",
        "probe",
        "remaining",
        "retry_after",
        "sent",
        "sock",
        "state",
        "status",
    )

    def __init__(self, sock: socket.socket, probe: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.probe = probe
        self.buf = bytearray()
        self.connected = False
        self.pending = b""
        self.state = 0  # 0 idle, 1 head, 2 content-length body, 3 chunked body
        self.sent = 0
        self.arrival = 0
        self.status = 0
        self.remaining = 0
        self.chunked = False
        self.closing = False
        self.retry_after = False
        self.first_event = 0
        self.last_event = 0
        self.events = 0


def parse_head(conn: Conn, head: bytes) -> None:
    """Read a response head into ``conn``: its status, and how its body is framed."""
    conn.status = int(head[9:12])
    conn.chunked = False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            conn.chunked = True
        elif name == b"retry-after":
            conn.retry_after = True
        elif name == b"connection" and b"close" in value.lower():
            conn.closing = True  # e.g. Hypercorn's keep_alive_max_requests
    if conn.chunked:
        conn.state = 3
    else:
        conn.state = 2
        conn.remaining = length
