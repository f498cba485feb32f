"""A sans-IO reader of HTTP/1.1 responses, for the upstream hop to the model server.

h11 is the reference here, and a fine one, but validating and dispatching every event costs
~95 us per request on this class of machine: a fifth of the worker's CPU per proxied request.
The model server is a trusted peer on loopback, so this reader does just what relaying needs,
strictly: the status line, headers, and a body framed by Content-Length, chunked encoding or
the connection's close (RFC 9112 §6.3), with bounded heads and chunk lines.

Feed it bytes with :meth:`ResponseReader.feed` (``b""`` for EOF) and pull events with
:meth:`ResponseReader.next_event`: a :class:`ResponseHead`, body ``bytes``, :data:`END`, or
:data:`NEED_DATA`.
"""

from __future__ import annotations

import enum
import re

import attrs

MAX_HEAD_BYTES = 64 * 1024
_MAX_CHUNK_LINE = 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class ProtocolError(Exception):
    """The peer's bytes are not a valid HTTP/1.1 response."""


class _Marker(enum.Enum):
    NEED_DATA = "need data"
    END = "end of message"


NEED_DATA = _Marker.NEED_DATA
"""More bytes are needed before the next event."""
END = _Marker.END
"""The response is complete."""


@attrs.frozen
class ResponseHead:
    """A response's status line and headers (names lower-cased)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    """Whether the connection may carry another request after this response."""


class _Body(enum.Enum):
    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    UNTIL_CLOSE = 3


class _Chunk(enum.Enum):
    SIZE = 0
    DATA = 1
    DATA_END = 2
    TRAILERS = 3


class ResponseReader:
    """Reads one response after another from one connection (call :meth:`expect` first)."""

    def __init__(self) -> None:
        self._head_request = False
        self._buf = b""
        self._eof = False
        self._head: ResponseHead | None = None
        self._body = _Body.NONE
        self._remaining = 0
        self._chunk = _Chunk.SIZE
        self._done = False
        self._received_any = False
        self._error: ProtocolError | None = None

    @property
    def started(self) -> bool:
        """Whether any byte of the current response has arrived."""
        return self._received_any

    @property
    def reusable(self) -> bool:
        """Whether the response is complete and the connection may be reused."""
        return (
            self._done
            and self._head is not None
            and self._head.keep_alive
            and not self._buf
            and not self._eof
        )

    def expect(self, *, head_request: bool = False) -> None:
        """Get ready for the response to a new request.

        Args:
            head_request: the request was HEAD (no body follows, whatever the head says).
        """
        self._head = None
        self._done = False
        self._received_any = bool(self._buf)
        self._head_request = head_request

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if data:
            self._buf = self._buf + data if self._buf else data
            self._received_any = True
        else:
            self._eof = True

    def next_event(self) -> ResponseHead | bytes | _Marker:
        """The next event from the bytes fed so far.

        Raises:
            ProtocolError: malformed response, or the connection closed mid-response (again
                on every later call: the connection is beyond repair).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> ResponseHead | bytes | _Marker:
        if self._done:
            return END
        if self._head is None:
            return self._read_head()
        body = self._body
        if body is _Body.LENGTH:
            return self._read_length()
        if body is _Body.CHUNKED:
            return self._read_chunked()
        if body is _Body.UNTIL_CLOSE:
            if self._buf:
                data, self._buf = self._buf, b""
                return data
            if self._eof:
                self._done = True
                return END
            return NEED_DATA
        self._done = True
        return END

    # -- the head --------------------------------------------------------------------------
    def _read_head(self) -> ResponseHead | _Marker:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                if self._eof:
                    raise ProtocolError(
                        "connection closed mid-head" if self._buf else "connection closed"
                    )
                return NEED_DATA
            raw, self._buf = self._buf[:end], self._buf[end + 4 :]
            head = self._parse_head(raw)
            if 100 <= head.status < 200:
                continue  # an informational response: the real one follows
            self._head = head
            return head

    def _parse_head(self, raw: bytes) -> ResponseHead:
        lines = raw.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        http10 = match.group(1) == b"0"
        status = int(match.group(2))
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        close = http10
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            name = name.lower()
            value = value.strip(b" \t")
            headers.append((name, value))
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise ProtocolError(f"bad content-length {value[:40]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                if codings[-1] != b"chunked":
                    raise ProtocolError(f"unsupported transfer-encoding {value[:40]!r}")
                chunked = True
            elif name == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    close = True
                elif b"keep-alive" in tokens and http10:
                    close = False
        if self._head_request or status in (204, 304):
            self._body = _Body.NONE
        elif chunked:
            self._body, self._chunk = _Body.CHUNKED, _Chunk.SIZE
        elif length is not None:
            self._body, self._remaining = _Body.LENGTH, length
        else:
            self._body, close = _Body.UNTIL_CLOSE, True
        return ResponseHead(status=status, headers=headers, keep_alive=not close)

    # -- bodies ------------------------------------------------------------------------------
    def _read_length(self) -> bytes | _Marker:
        if not self._remaining:
            self._done = True
            return END
        buf = self._buf
        if not buf:
            if self._eof:
                raise ProtocolError("connection closed mid-body")
            return NEED_DATA
        take = self._remaining
        if len(buf) <= take:
            self._buf = b""
            self._remaining -= len(buf)
            return buf
        self._buf = buf[take:]
        self._remaining = 0
        return buf[:take]

    def _read_chunked(self) -> bytes | _Marker:
        while True:
            state = self._chunk
            if state is _Chunk.DATA:
                buf = self._buf
                if not buf:
                    break
                take = self._remaining
                if len(buf) < take:
                    self._buf = b""
                    self._remaining -= len(buf)
                    return buf
                self._buf = buf[take:]
                self._chunk = _Chunk.DATA_END
                return buf[:take]
            if state is _Chunk.DATA_END:
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                self._buf = self._buf[2:]
                self._chunk = _Chunk.SIZE
                continue
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                if len(self._buf) > _MAX_CHUNK_LINE:
                    raise ProtocolError("chunk line too long")
                break
            line, self._buf = self._buf[:line_end], self._buf[line_end + 2 :]
            if state is _Chunk.TRAILERS:
                if not line:
                    self._done = True
                    return END
                continue  # trailer fields are not relayed
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if _CHUNK_SIZE.fullmatch(size_text) is None:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                self._chunk = _Chunk.TRAILERS
            else:
                self._chunk, self._remaining = _Chunk.DATA, size
        if self._eof:
            raise ProtocolError("connection closed mid-body")
        return NEED_DATA
