"""A sans-IO reader of HTTP/1.1 responses, for the upstream hop to the model server.

h11 is the reference here, and a fine one, but validating and dispatching every event costs
~95 us per request on this class of machine: a fifth of the worker's CPU per proxied request.
This reader does just what relaying needs: the status line, headers, and a body framed by
Content-Length, chunked encoding or the connection's close (RFC 9112 §6.3). It is as strict as
h11 (``tests/test_http1_h11.py`` holds it to h11 on any bytes, and lists where the two differ
by design), because whatever it accepts goes on to the client: a head it lets through must be
one the worker's own server can send.

Feed it bytes with :meth:`ResponseReader.feed` (``b""`` for EOF) and pull events with
:meth:`ResponseReader.next_event`: a :class:`ResponseHead`, body ``bytes``, :data:`END`, or
:data:`NEED_DATA`. Each event costs in proportion to its own size, not to what is buffered:
the reader keeps a read position into the bytes it was fed rather than re-slicing them, and a
body event that spans a whole fed buffer is that very buffer.

The field lines' own rules (names, values, the framing fields) are in
:mod:`pyworker._http1_fields`.
"""

from __future__ import annotations

import enum
import re

import attrs

from ._http1_fields import ProtocolError, check_controls, parse_fields

__all__ = [
    "END",
    "MAX_HEAD_BYTES",
    "MAX_INFORMATIONAL",
    "NEED_DATA",
    "ProtocolError",
    "ResponseHead",
    "ResponseReader",
]

MAX_HEAD_BYTES = 64 * 1024
"""The most bytes a response head may take: status line, header lines and the blank line that
ends them, CRLFs included. Each informational (1xx) head and the trailer section (its field
lines and blank line) are bounded alike, each on its own."""
MAX_INFORMATIONAL = 5
"""The most informational (1xx) responses before the final one (as Go's net/http allows):
more is a :class:`ProtocolError`. Their time is bounded by the caller's first-byte timeout."""
_MAX_CHUNK_LINE = 1024
"""The most bytes of a chunk-size line (extensions included, CRLF not)."""

# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]. Like h11, the
# SP before an empty reason may be missing. Any HTTP/1.x is read as 1.1 (RFC 9110 §2.5); other
# major versions are refused. Valid status codes are 100-599 (RFC 9110 §15). Control
# characters in the reason are refused with the rest of the head's (check_controls).
_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([1-5][0-9][0-9])(?: .*)?")
_STATUS_PREFIX = b"HTTP/1."
# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF. Extensions are skipped, as h11 does (with its
# allowance for trailing whitespace and its bound of 20 hex digits).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")


class _Marker(enum.Enum):
    NEED_DATA = "need data"
    END = "end of message"


NEED_DATA = _Marker.NEED_DATA
"""More bytes are needed before the next event."""
END = _Marker.END
"""The response is complete."""


@attrs.frozen
class ResponseHead:
    """A response's status line and headers.

    Header names are lower-cased, values stripped of surrounding whitespace. Framing fields
    are normalised as h11 does: Transfer-Encoding's value lower-cased, a repeated or listed
    Content-Length kept once, and a Content-Length that Transfer-Encoding overrides dropped
    (RFC 9112 §6.3: an intermediary must not forward it).
    """

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


# Enum members are slow to look up (~85 ns each on CPython 3.11, through the enum's metaclass):
# the per-event code compares against these module-level names instead.
_NO_BODY = _Body.NONE
_LENGTH = _Body.LENGTH
_CHUNKED = _Body.CHUNKED
_UNTIL_CLOSE = _Body.UNTIL_CLOSE
_SIZE = _Chunk.SIZE
_DATA = _Chunk.DATA
_DATA_END = _Chunk.DATA_END
_TRAILERS = _Chunk.TRAILERS


class ResponseReader:
    """Reads one response after another from one connection (call :meth:`expect` first)."""

    __slots__ = (
        "_body",
        "_buf",
        "_chunk",
        "_done",
        "_eof",
        "_error",
        "_head",
        "_head_request",
        "_informational",
        "_pos",
        "_received_any",
        "_remaining",
        "_scan",
        "_trailer_bytes",
        "_trailers",
    )

    def __init__(self) -> None:
        self._head_request = False
        # The bytes fed and not yet consumed are self._buf[self._pos:].
        self._buf = b""
        self._pos = 0
        self._scan = 0  # bytes after _pos already searched for the end of the head
        self._eof = False
        self._head: ResponseHead | None = None
        self._informational = 0
        self._body = _NO_BODY
        self._remaining = 0
        self._chunk = _SIZE
        self._trailers: list[bytes] = []
        self._trailer_bytes = 0
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
            and self._pos == len(self._buf)
            and not self._eof
        )

    def expect(self, *, head_request: bool = False) -> None:
        """Get ready for the response to a new request.

        Args:
            head_request: the request was HEAD (no body follows, whatever the head says).
        """
        self._head = None
        self._informational = 0
        self._done = False
        self._received_any = self._pos < len(self._buf)
        self._head_request = head_request

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        self._received_any = True
        pos = self._pos
        if pos == len(self._buf):
            # Everything before was consumed (the usual case): keep the bytes as they are.
            self._buf = data
        else:
            # An unfinished head, chunk line or trailer: never more than its own bound.
            self._buf = self._buf[pos:] + data
        self._pos = 0

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
        if body is _CHUNKED:
            return self._read_chunked()
        if body is _LENGTH:
            return self._read_length()
        if body is _UNTIL_CLOSE:
            return self._read_until_close()
        self._done = True
        return END

    # -- the head --------------------------------------------------------------------------
    def _read_head(self) -> ResponseHead | _Marker:
        while True:
            buf, pos = self._buf, self._pos
            end = buf.find(b"\r\n\r\n", pos + self._scan)
            if end < 0:
                size = len(buf) - pos
                # Even if the next byte ended it, the head would be one byte longer than this.
                if size >= MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head too large (over {MAX_HEAD_BYTES} bytes)")
                if not _STATUS_PREFIX.startswith(buf[pos : pos + len(_STATUS_PREFIX)]):
                    # Not HTTP/1 at all (a TLS port, another protocol): no use waiting.
                    raise ProtocolError(f"bad status line {buf[pos : pos + 40]!r}")
                if self._eof:
                    raise ProtocolError(
                        "connection closed mid-head" if size else "connection closed"
                    )
                self._scan = max(0, size - 3)  # the CRLFCRLF may be cut after 1 to 3 bytes
                return NEED_DATA
            if end + 4 - pos > MAX_HEAD_BYTES:
                raise ProtocolError(f"response head too large (over {MAX_HEAD_BYTES} bytes)")
            raw = buf[pos:end]
            self._pos = end + 4
            self._scan = 0
            head = self._parse_head(raw)
            if head is not None:
                self._head = head
                return head

    def _parse_head(self, raw: bytes) -> ResponseHead | None:
        """The final response's head, or None for an informational one (to be skipped)."""
        check_controls(raw.replace(b"\r\n", b" "), "response head")
        lines = raw.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(match.group(2))
        del lines[0]
        headers, length, chunked, connection = parse_fields(lines)
        if status < 200:
            # RFC 9110 §15.2: a client must read any number of 1xx before the final answer;
            # a bound keeps an endless stream of them from holding the request forever.
            # 101 switches protocols, which is only done when asked (we never ask).
            if status == 101:
                raise ProtocolError("101 Switching Protocols, never asked for")
            self._informational += 1
            if self._informational > MAX_INFORMATIONAL:
                raise ProtocolError(f"over {MAX_INFORMATIONAL} informational (1xx) responses")
            return None
        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive"
        # (RFC 9112 Appendix C.2.2).
        http10 = match.group(1) == b"0"
        close = b"close" in connection or (http10 and b"keep-alive" not in connection)
        if chunked:
            if length is not None:
                # RFC 9112 §6.3 ¶3: Transfer-Encoding overrides Content-Length, and an
                # intermediary must remove the Content-Length before forwarding.
                headers = [h for h in headers if h[0] != b"content-length"]
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing: close after.
            close = close or http10
        # RFC 9112 §6.3: no body after HEAD, 204 or 304 (¶1), then chunked (¶3), then
        # Content-Length (¶5), else until the connection closes (¶7).
        if self._head_request or status == 204 or status == 304:
            self._body = _NO_BODY
        elif chunked:
            self._body, self._chunk = _CHUNKED, _SIZE
            self._trailers, self._trailer_bytes = [], 0
        elif length is not None:
            self._body, self._remaining = _LENGTH, length
        else:
            self._body, close = _UNTIL_CLOSE, True
        return ResponseHead(status=status, headers=headers, keep_alive=not close)

    # -- bodies ------------------------------------------------------------------------------
    def _take_all(self) -> bytes:
        buf, pos = self._buf, self._pos
        self._buf, self._pos = b"", 0
        return buf[pos:] if pos else buf

    def _read_length(self) -> bytes | _Marker:
        remaining = self._remaining
        if not remaining:
            self._done = True
            return END
        buf, pos = self._buf, self._pos
        size = len(buf) - pos
        if not size:
            if self._eof:
                raise ProtocolError("connection closed mid-body")
            return NEED_DATA
        if size <= remaining:
            self._remaining = remaining - size
            return self._take_all()
        self._remaining = 0
        self._pos = end = pos + remaining
        return buf[pos:end]

    def _read_until_close(self) -> bytes | _Marker:
        if self._pos < len(self._buf):
            return self._take_all()
        if self._eof:
            self._done = True
            return END
        return NEED_DATA

    def _read_chunked(self) -> bytes | _Marker:
        buf, pos = self._buf, self._pos
        while True:
            state = self._chunk
            if state is _DATA:
                size = len(buf) - pos
                if not size:
                    break
                take = self._remaining
                if size <= take:
                    self._remaining = take - size
                    if size == take:
                        self._chunk = _DATA_END
                    return self._take_all()
                self._chunk = _DATA_END
                self._pos = end = pos + take
                return buf[pos:end]
            if state is _DATA_END:
                if len(buf) - pos < 2:
                    break
                if not buf.startswith(b"\r\n", pos):
                    raise ProtocolError("chunk data not followed by CRLF")
                self._pos = pos = pos + 2
                self._chunk = _SIZE
                continue
            line_end = buf.find(b"\r\n", pos)
            if state is _TRAILERS:
                if self._read_trailer_line(buf, pos, line_end):
                    self._done = True
                    return END
                if line_end < 0:
                    break
                pos = self._pos
                continue
            if line_end < 0:
                # Complete, the line would be at least this long (less a CR at the end).
                if len(buf) - pos > _MAX_CHUNK_LINE + 1:
                    raise ProtocolError(f"chunk line over {_MAX_CHUNK_LINE} bytes")
                break
            if line_end - pos > _MAX_CHUNK_LINE:
                raise ProtocolError(f"chunk line over {_MAX_CHUNK_LINE} bytes")
            match = _CHUNK_LINE.fullmatch(buf, pos, line_end)
            if match is None:
                raise ProtocolError(f"bad chunk line {buf[pos : min(line_end, pos + 40)]!r}")
            self._pos = pos = line_end + 2
            size = int(match.group(1), 16)
            if size:
                self._chunk, self._remaining = _DATA, size
            else:
                self._chunk = _TRAILERS
        if self._eof:
            raise ProtocolError("connection closed mid-body")
        return NEED_DATA

    def _read_trailer_line(self, buf: bytes, pos: int, line_end: int) -> bool:
        """Consume one trailer line if complete; True once the blank line ends the section."""
        if line_end < 0:
            # Even if the next byte ended the section, it would be one byte longer than this.
            if self._trailer_bytes + len(buf) - pos >= MAX_HEAD_BYTES:
                raise ProtocolError(f"trailer section too large (over {MAX_HEAD_BYTES} bytes)")
            return False
        self._trailer_bytes += line_end + 2 - pos
        if self._trailer_bytes > MAX_HEAD_BYTES:
            raise ProtocolError(f"trailer section too large (over {MAX_HEAD_BYTES} bytes)")
        self._pos = line_end + 2
        if line_end == pos:
            # Trailer fields are not relayed, but are held to the rules of header fields
            # (RFC 9112 §7.1.2), as h11 does.
            parse_fields(self._trailers)
            return True
        line = buf[pos:line_end]
        check_controls(line, "trailer section")
        self._trailers.append(line)
        return False
