"""What an upstream may send, for the tests of our HTTP/1.1 response reader: Hypothesis
strategies for responses valid and not (odd status lines, control characters, framing fields
right and wrong, interim responses, chunk extensions and trailers, cut short, mutated) and plain
noise (:func:`wires`, for ``test_http1_h11.py``), and :func:`split`, which cuts bytes into the
pieces a reader is fed (for it and ``test_http1.py``).

Sizes stay under both readers' bounds (our ``MAX_HEAD_BYTES`` and chunk line bound, h11's
``max_incomplete_event_size`` as ``test_http1_h11.py`` raises it).
"""

from __future__ import annotations

from typing import TypeVar

from hypothesis import strategies as st

from pyworker._http1 import MAX_INFORMATIONAL


def _bytes(alphabet: bytes, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(list(alphabet)), max_size=max_size).map(bytes)


T = TypeVar("T")


def _mostly(
    usual: st.SearchStrategy[T], odd: st.SearchStrategy[T], one_in: int
) -> st.SearchStrategy[T]:
    """``usual``, but ``odd`` about once in ``one_in`` draws (shrinking towards ``usual``)."""
    # Not an end of the range: Hypothesis draws those often.
    return st.integers(min_value=0, max_value=one_in - 1).flatmap(
        lambda i: odd if i == 1 else usual
    )


_ODD = b'\x00\x01\t\n\r\x0b\x0c\x1b\x7f\x80\xff :;,"('
TOKEN = _bytes(b"abcxyzABC0129-_.!~", max_size=8).filter(bool)
NAME = _mostly(TOKEN, _bytes(b"abc-" + _ODD, max_size=6), one_in=80)
VALUE = _mostly(_bytes(b"abc XYZ019,;=/\t\x80\xfe"), _bytes(b"ab 1" + _ODD), one_in=80)
VERSION = _mostly(
    st.sampled_from([b"HTTP/1.1"] * 3 + [b"HTTP/1.0"]),
    st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 "]),
    one_in=20,
)
REASON = _mostly(
    st.sampled_from([b" OK", b"", b" ", b" Not Found", b" \tx\t"]),
    VALUE.map(lambda v: b" " + v),
    one_in=4,
)
EOL = _mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n"]), one_in=200)


@st.composite
def status_line(draw: st.DrawFn, *, informational: bool) -> bytes:
    if informational:
        code = draw(_mostly(st.sampled_from([100, 102, 103, 199]), st.just(101), one_in=20))
    else:
        code = draw(
            st.one_of(
                st.sampled_from([200, 200, 200, 201, 204, 304, 404, 500, 599]),
                st.sampled_from([200, 200, 200, 201, 204, 304, 404, 500, 599]),
                st.sampled_from([200, 200, 200, 201, 204, 304, 404, 500, 599]),
                st.integers(min_value=0, max_value=999),
            )
        )
    odd = st.sampled_from([b"%d" % code, b"2000", b"2x0", b" 200"])
    status = draw(_mostly(st.just(b"%03d" % code), odd, one_in=40))
    return draw(VERSION) + b" " + status + draw(REASON)


@st.composite
def field_line(draw: st.DrawFn) -> bytes:
    separator = draw(
        _mostly(st.sampled_from([b": ", b":", b":\t"]), st.sampled_from([b" :", b""]), 30)
    )
    line = draw(NAME) + separator + draw(VALUE)
    if draw(st.integers(min_value=0, max_value=30)) == 30:
        line += draw(EOL) + draw(st.sampled_from([b" ", b"\t"])) + draw(VALUE)  # obs-fold
    return line


CONNECTION = st.sampled_from(
    [
        [],
        [],
        [],
        [b"Connection: close"],
        [b"Connection: keep-alive"],
        [b"Connection: Keep-Alive, X-Hop"],
        [b"connection: CLOSE"],
        [b"Connection: x-hop", b"Connection: close"],
    ]
)


@st.composite
def chunked_body(draw: st.DrawFn, data: bytes) -> bytes:
    out = []
    rest = data
    while rest:
        size = draw(st.integers(min_value=1, max_value=max(1, len(rest))))
        piece, rest = rest[:size], rest[size:]
        size_text = draw(st.sampled_from([b"%x" % size] * 4 + [b"%X" % size, b"00%x" % size]))
        extension = draw(st.sampled_from([b""] * 12 + [b";a=1", b";", b" ", b" ;a", b";\x01"]))
        out.append(size_text + extension + b"\r\n" + piece + b"\r\n")
    out.append(draw(st.sampled_from([b"0", b"0", b"000", b"0;last"])) + b"\r\n")
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        out.append(draw(field_line()) + draw(EOL))
    out.append(b"\r\n")
    return b"".join(out)


@st.composite
def response(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.sampled_from([0] * 12 + [1, 1, 2, MAX_INFORMATIONAL + 1]))):
        lines = [draw(status_line(informational=True))]
        lines += draw(st.lists(field_line(), max_size=2))
        parts.append(b"".join(line + draw(EOL) for line in lines) + draw(EOL))

    data = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length"] * 4 + ["chunked"] * 4 + ["close"] * 2 + ["odd"]))
    fields = draw(st.lists(field_line(), max_size=4)) + draw(CONNECTION)
    if framing == "length":
        length = len(data) + draw(st.sampled_from([0] * 20 + [-1, 1]))
        form = draw(st.sampled_from([b"%d"] * 8 + [b"%d, %d", b"0%d"]))
        text = form % ((length, length) if form.count(b"%") == 2 else (length,))
        fields.append(b"Content-Length: " + text)
        if draw(st.integers(min_value=0, max_value=6)) == 0:
            fields.append(b"content-length: %d" % draw(st.sampled_from([length, length + 1])))
        body = data
    elif framing == "chunked":
        coding = draw(st.sampled_from([b"chunked"] * 12 + [b"Chunked", b"gzip, chunked"]))
        fields.append(b"Transfer-Encoding: " + coding)
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            fields.append(b"Content-Length: %d" % draw(st.integers(min_value=0, max_value=999)))
        body = draw(chunked_body(data))
    elif framing == "close":
        body = data
    else:
        fields.append(
            draw(
                st.sampled_from(
                    [
                        b"Content-Length: -1",
                        b"Content-Length: 1, 2",
                        b"Content-Length: ",
                        b"Content-Length: 1" + b"0" * 20,
                        b"Transfer-Encoding: gzip",
                        b"Transfer-Encoding: chunked, chunked",
                        b"Transfer-Encoding: identity",
                    ]
                )
            )
        )
        body = data
    fields = draw(st.permutations(fields))
    lines = [draw(status_line(informational=False)), *fields]
    parts.append(b"".join(line + draw(EOL) for line in lines) + draw(EOL) + body)
    return b"".join(parts)


@st.composite
def mutated(draw: st.DrawFn, wire: bytes) -> bytes:
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(wire)))
        byte = bytes([draw(st.sampled_from(list(_ODD + b"0aH\r\n")))])
        how = draw(st.sampled_from(["insert", "replace", "delete"]))
        if how == "insert":
            wire = wire[:at] + byte + wire[at:]
        elif how == "replace":
            wire = wire[:at] + byte + wire[at + 1 :]
        else:
            wire = wire[:at] + wire[at + 1 :]
    return wire


@st.composite
def wires(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["response"] * 12 + ["mutated", "mutated", "cut", "noise"]))
    if kind == "noise":
        return draw(st.sampled_from([b"", b"HTTP/1.1 ", b"HTTP/1.1 200 OK\r\n"])) + draw(
            st.binary()
        )
    wire = draw(response())
    if kind == "mutated":
        return draw(mutated(wire))
    if kind == "cut":
        return wire[: draw(st.integers(min_value=0, max_value=len(wire)))]
    return wire


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    return [p for p in pieces if p]  # an empty piece would mean EOF
