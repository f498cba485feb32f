"""The rules a response's field lines are held to (RFC 9110 §5, RFC 9112 §5-§6), for
:mod:`pyworker._http1`.

A field name is a token; a line holds no control character but HTAB; the framing fields
(Content-Length, Transfer-Encoding, Connection) are checked and normalised as h11 does, since
the head the reader lets through goes on to the client. The header section and the trailer
section are held to the same rules.
"""

from __future__ import annotations

import re

# RFC 9110 §5.1: field-name = token (checked by deleting its characters: bytes.translate is
# several times faster than a regular expression here, and heads are parsed per request).
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# RFC 9110 §5.5: a field value is VCHAR, obs-text, SP and HTAB; RFC 9112 §2.2: lines end with
# CRLF. So a line holds no control character but HTAB (the CRLFs between lines aside).
_CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_CONTROL = re.compile(b"[%s]" % re.escape(_CONTROLS))
# RFC 9110 §8.6: Content-Length = 1*DIGIT (bounded: Python refuses to parse >4300 digits).
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")


class ProtocolError(Exception):
    """The peer's bytes are not a valid HTTP/1.1 response."""


def check_controls(text: bytes, where: str) -> None:
    if len(text.translate(None, _CONTROLS)) != len(text):
        bad = _CONTROL.search(text)
        assert bad is not None
        raise ProtocolError(f"control character {bad.group()!r} in {where}")


def _one_length(value: bytes) -> bytes:
    """A Content-Length value other than plain digits: a list of one repeated value, or not
    valid.

    RFC 9110 §8.6: a list of one repeated value, or repeated fields of one value, may be read
    as one field; anything else is an unrecoverable error.
    """
    lengths = {v.strip() for v in value.split(b",")}
    if len(lengths) != 1:
        raise ProtocolError(f"conflicting content-length {value[:40]!r}")
    value = lengths.pop()
    if _CONTENT_LENGTH.fullmatch(value) is None:
        raise ProtocolError(f"bad content-length {value[:40]!r}")
    return value


def parse_fields(
    lines: list[bytes],
) -> tuple[list[tuple[bytes, bytes]], int | None, bool, list[bytes]]:
    """Header lines (free of control characters) as (headers, content length, whether chunked,
    connection options), the framing fields checked and normalised as h11 does.

    Raises:
        ProtocolError: a malformed line or framing field.
    """
    headers: list[tuple[bytes, bytes]] = []
    length_text: bytes | None = None
    chunked = False
    connection: list[bytes] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        # RFC 9112 §5.1: no whitespace before the colon. RFC 9112 §5.2: obs-fold (a line
        # starting with whitespace) may be answered with a 502 by a gateway, and is.
        if not colon or not name or name.translate(None, _TCHAR):
            raise ProtocolError(f"bad header line {line[:80]!r}")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if not value.isdigit() or len(value) > 20:
                value = _one_length(value)
            if length_text is not None:
                if value != length_text:
                    raise ProtocolError("conflicting content-length fields")
                continue
            length_text = value
        elif name == b"transfer-encoding":
            # RFC 9112 §6.1: chunked is the only transfer coding we decode; a body in any other
            # would be relayed still coded (and chunked must be last, and applied once).
            value = value.lower()
            if chunked or value != b"chunked":
                raise ProtocolError(f"unsupported transfer-encoding {value[:40]!r}")
            chunked = True
        elif name == b"connection":
            connection += [option.strip() for option in value.lower().split(b",")]
        headers.append((name, value))
    length = None if length_text is None else int(length_text)
    return headers, length, chunked, connection
