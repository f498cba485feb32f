"""The upstream response reader: any valid response, split anywhere, reads back exactly."""

from __future__ import annotations

import pytest
from http1_wires import split
from hypothesis import given
from hypothesis import strategies as st

from pyworker import _http1 as http1
from pyworker._http1 import END, NEED_DATA, ProtocolError, ResponseHead, ResponseReader


def _read_all(pieces: list[bytes], reader: ResponseReader) -> tuple[ResponseHead, bytes, bool]:
    """Feed ``pieces`` (then EOF if the reader still needs data); return head, body, ended."""
    head: ResponseHead | None = None
    body = b""
    queue = list(pieces)
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            reader.feed(queue.pop(0) if queue else b"")
            continue
        if event is END:
            assert head is not None
            return head, body, True
        if isinstance(event, ResponseHead):
            head = event
        else:
            assert isinstance(event, bytes)
            assert event
            body += event


@given(
    body=st.binary(max_size=3000),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20),
    chunked=st.booleans(),
    informational=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_any_response_split_anywhere_reads_back_exactly(
    body: bytes, chunk_sizes: list[int], chunked: bool, informational: bool, cuts: list[int]
) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" if informational else b""
    if chunked:
        wire += b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
        rest, i = body, 0
        while rest:
            size = chunk_sizes[i % len(chunk_sizes)]
            piece, rest, i = rest[:size], rest[size:], i + 1
            wire += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
        wire += b"0\r\nTrailer: x\r\n\r\n"
    else:
        wire += b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: b\r\n\r\n%s" % (len(body), body)
    reader = ResponseReader()
    reader.expect()
    head, got, _ = _read_all(split(wire, cuts), reader)
    assert head.status == 200
    assert (b"x-a", b"b") in head.headers
    assert got == body
    assert reader.reusable


def test_two_responses_on_one_connection_and_close_semantics() -> None:
    reader = ResponseReader()
    reader.expect()
    reader.feed(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    head, body, _ = _read_all([], reader)
    assert (head.status, body) == (204, b"")
    assert not reader.reusable  # the next response's bytes are already waiting
    reader.expect()
    head, body, _ = _read_all([], reader)
    assert (head.status, body, reader.reusable) == (200, b"ok", True)

    reader = ResponseReader()
    reader.expect()
    head, body, _ = _read_all([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"], reader)
    assert (body, head.keep_alive, reader.reusable) == (b"until close", False, False)

    reader = ResponseReader()
    reader.expect(head_request=True)
    head, body, _ = _read_all([b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"], reader)
    assert (body, reader.reusable) == (b"", True)


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # closed before anything
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # closed mid-body
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # closed mid-chunk
    ],
)
def test_malformed_or_cut_responses_are_protocol_errors(wire: bytes) -> None:
    reader = ResponseReader()
    reader.expect()
    with pytest.raises(ProtocolError):
        _read_all([wire] if wire else [], reader)


def test_an_endless_head_is_refused() -> None:
    reader = ResponseReader()
    reader.expect()
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000)
    with pytest.raises(ProtocolError, match="too large"):
        reader.next_event()


@pytest.mark.parametrize(
    ("status", "head_request", "framing"),
    [
        (304, False, b"Content-Length: 5"),
        (304, False, b"Transfer-Encoding: chunked"),
        (204, False, b"Content-Length: 5"),
        (200, True, b"Content-Length: 5"),
        (200, True, b"Transfer-Encoding: chunked"),
    ],
)
def test_304_204_and_head_answers_have_no_body_even_with_framing_headers(
    status: int, head_request: bool, framing: bytes
) -> None:
    # The framing header describes the body a GET would have had (RFC 9112 §6.3): reading it
    # as a body would eat the next response on the connection.
    reader = ResponseReader()
    reader.expect(head_request=head_request)
    reader.feed(b"HTTP/1.1 %d X\r\n%s\r\n\r\n" % (status, framing))
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
    head, body, _ = _read_all([], reader)
    assert (head.status, body, head.keep_alive) == (status, b"", True)
    reader.expect()
    head, body, _ = _read_all([], reader)
    assert (head.status, body, reader.reusable) == (200, b"next", True)


def test_304_alone_is_complete_and_reusable_at_once() -> None:
    reader = ResponseReader()
    reader.expect()
    reader.feed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: x\r\n\r\n")
    assert isinstance(reader.next_event(), ResponseHead)
    assert reader.next_event() is END  # not NEED_DATA: no body is coming
    assert reader.reusable


@pytest.mark.parametrize(
    ("wire", "keep_alive"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
    ],
    ids=[
        "1.0",
        "1.0-keep-alive",
        "1.0-Keep-Alive",
        "1.0-keep-alive-close",
        "1.1",
        "1.1-keep-alive",
    ],
)
def test_http10_is_keep_alive_only_when_it_says_so(wire: bytes, keep_alive: bool) -> None:
    reader = ResponseReader()
    reader.expect()
    reader.feed(wire)  # no EOF: a Content-Length body ends without one
    head, body, _ = _read_all([], reader)
    assert (body, head.keep_alive, reader.reusable) == (b"ok", keep_alive, keep_alive)


def test_http10_keep_alive_without_a_length_still_ends_at_close() -> None:
    reader = ResponseReader()
    reader.expect()
    wire = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nuntil close"
    head, body, _ = _read_all([wire], reader)
    assert (body, head.keep_alive, reader.reusable) == (b"until close", False, False)


# -- upstream oddities: every malformed response is a ProtocolError ------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 600 High\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 999 High\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 +20 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\x1bb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: ab\r\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX\x01A: b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n(X): b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: b\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX\x00: y\r\n\r\n",
    ],
    ids=[
        "status-000",
        "status-099",
        "status-600",
        "status-999",
        "status-4-digits",
        "status-sign",
        "reason-nul",
        "reason-ctl",
        "value-nul",
        "value-cr",
        "value-lf",
        "value-ctl",
        "value-esc",
        "value-del",
        "value-trailing-cr",
        "name-ctl",
        "name-separators",
        "obs-fold",
        "length-5000-digits",
        "length-list-conflict",
        "te-gzip-chunked",
        "te-chunked-twice",
        "te-repeated",
        "101-unasked",
        "http-2",
        "trailer-name-nul",
    ],
)
def test_upstream_oddities_are_protocol_errors(wire: bytes) -> None:
    reader = ResponseReader()
    reader.expect()
    with pytest.raises(ProtocolError):
        _read_all([wire], reader)


def test_what_is_not_http_is_refused_at_once() -> None:
    # A server that speaks something else (a TLS port, SSH, a proxy's banner) is refused on its
    # first bytes, not after the whole head bound or the timeout.
    for first in (b"SSH-2.0-OpenSSH_9.6\r\n", b"\x16\x03\x01\x02\x00", b"<html>", b"HTTP/2 "):
        reader = ResponseReader()
        reader.expect()
        reader.feed(first)
        with pytest.raises(ProtocolError):
            reader.next_event()
    reader = ResponseReader()
    reader.expect()
    reader.feed(b"HTTP/1.")  # a prefix of a valid status line: wait for more
    assert reader.next_event() is NEED_DATA


# -- framing and header rules ----------------------------------------------------------------------


def test_length_and_chunked_together_is_chunked_and_the_length_is_dropped() -> None:
    # RFC 9112 §6.3 ¶3: Transfer-Encoding overrides Content-Length, and an intermediary must
    # remove the Content-Length before forwarding.
    reader = ResponseReader()
    reader.expect()
    wire = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: Chunked\r\nX-A: b\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    head, body, _ = _read_all([wire], reader)
    assert head.headers == [(b"transfer-encoding", b"chunked"), (b"x-a", b"b")]
    assert (body, reader.reusable) == (b"hello", True)


def test_http10_with_transfer_encoding_is_chunked_then_closed() -> None:
    # RFC 9112 §6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty: read
    # it as chunked, then close the connection.
    reader = ResponseReader()
    reader.expect()
    wire = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
    head, body, _ = _read_all([wire + b"2\r\nok\r\n0\r\n\r\n"], reader)
    assert (body, head.keep_alive, reader.reusable) == (b"ok", False, False)


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 2, 2", b"Content-Length: 2\r\nContent-Length: 2", b"Content-Length:  2 "],
)
def test_repeated_equal_lengths_are_one_length(framing: bytes) -> None:
    # RFC 9110 §8.6: a recipient may replace a list of one repeated value with a single field.
    reader = ResponseReader()
    reader.expect()
    head, body, _ = _read_all([b"HTTP/1.1 200 OK\r\n%s\r\n\r\nok" % framing], reader)
    assert (head.headers, body) == ([(b"content-length", b"2")], b"ok")


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Encoding: gzip\r\nContent-Length: 4",
        b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked",
        b"Content-Encoding: gzip\r\nContent-Length: 9\r\nTransfer-Encoding: chunked",
    ],
)
def test_a_content_coded_body_is_read_as_it_is(framing: bytes) -> None:
    # The reader decodes transfer codings (chunked only) and never content codings: a gzip
    # body comes out as the gzip bytes, its Content-Encoding kept beside it.
    coded = b"\x1f\x8b\x08\x00"
    body = b"4\r\n%s\r\n0\r\n\r\n" % coded if b"chunked" in framing else coded
    reader = ResponseReader()
    reader.expect()
    head, got, _ = _read_all([b"HTTP/1.1 200 OK\r\n%s\r\n\r\n%s" % (framing, body)], reader)
    assert got == coded
    assert (b"content-encoding", b"gzip") in head.headers


# -- bounds ----------------------------------------------------------------------------------------


def _head_of(size: int, *, status: bytes = b"200 OK", framing: bytes = b"") -> bytes:
    """A response head of exactly ``size`` bytes, its blank line included."""
    start = b"HTTP/1.1 " + status + b"\r\n" + framing + b"X-Fill: "
    fill = size - len(start) - len(b"\r\n\r\n")
    assert fill > 0
    return start + b"f" * fill + b"\r\n\r\n"


@given(cuts=st.lists(st.integers(min_value=0, max_value=70_000), max_size=6))
def test_a_head_of_exactly_the_bound_is_read_and_one_byte_more_refused(cuts: list[int]) -> None:
    limit = http1.MAX_HEAD_BYTES
    final = _head_of(limit, framing=b"Content-Length: 2\r\n") + b"ok"
    reader = ResponseReader()
    reader.expect()
    head, body, _ = _read_all(split(final, cuts), reader)
    assert (head.status, body) == (200, b"ok")

    reader = ResponseReader()
    reader.expect()
    too_big = _head_of(limit + 1, framing=b"Content-Length: 2\r\n") + b"ok"
    with pytest.raises(ProtocolError, match="head"):
        _read_all(split(too_big, cuts), reader)

    # Each informational head is bounded alike (not their sum).
    reader = ResponseReader()
    reader.expect()
    interim = _head_of(limit, status=b"103 Early Hints")
    head, body, _ = _read_all(split(interim * 2 + final, cuts), reader)
    assert (head.status, body) == (200, b"ok")
    reader = ResponseReader()
    reader.expect()
    with pytest.raises(ProtocolError, match="head"):
        _read_all(split(_head_of(limit + 1, status=b"100 Continue") + final, cuts), reader)


@given(cuts=st.lists(st.integers(min_value=0, max_value=70_000), max_size=6))
def test_the_trailer_section_is_bounded_like_a_head(cuts: list[int]) -> None:
    limit = http1.MAX_HEAD_BYTES
    start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
    for size, ok in ((limit, True), (limit + 1, False)):
        fill = size - len(b"X-Fill: \r\n\r\n")
        wire = start + b"X-Fill: " + b"f" * fill + b"\r\n\r\n"
        reader = ResponseReader()
        reader.expect()
        if ok:
            assert _read_all(split(wire, cuts), reader)[1] == b"ok"
        else:
            with pytest.raises(ProtocolError, match="trailer"):
                _read_all(split(wire, cuts), reader)


def test_informational_responses_are_bounded_in_number() -> None:
    limit = http1.MAX_INFORMATIONAL
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    reader = ResponseReader()
    reader.expect()
    head, body, _ = _read_all([b"HTTP/1.1 103 Early Hints\r\n\r\n" * limit + final], reader)
    assert (head.status, body) == (200, b"ok")
    # The count starts again with each response.
    reader.expect()
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\n" * limit + final)
    assert isinstance(reader.next_event(), ResponseHead)

    reader = ResponseReader()
    reader.expect()
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\n" * (limit + 1))  # no EOF: refused at once
    with pytest.raises(ProtocolError, match="informational"):
        reader.next_event()


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_a_chunk_line_is_bounded_whatever_the_split(extra: int) -> None:
    limit = http1._MAX_CHUNK_LINE
    line = b"2;" + b"e" * (limit - 2 + extra)
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\nok\r\n0\r\n\r\n"
    for cut in (len(wire), len(wire) - 10, len(wire) - 11, len(wire) - 12):
        reader = ResponseReader()
        reader.expect()
        if extra == 0:
            assert _read_all(split(wire, [cut]), reader)[1] == b"ok"
        else:
            with pytest.raises(ProtocolError, match="chunk line"):
                _read_all(split(wire, [cut]), reader)
