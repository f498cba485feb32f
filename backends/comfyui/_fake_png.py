"""Small, valid PNG files for the fake ComfyUI (zlib and struct only, no imaging library)."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Mapping

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROWS_PER_CHUNK = 256


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(
    width: int, height: int, rgb: tuple[int, int, int], text: Mapping[str, str] | None = None
) -> bytes:
    """An 8-bit RGB PNG of ``width`` x ``height`` pixels, shaded from ``rgb`` (top) to a
    darker tone (bottom), with optional ``tEXt`` entries (ComfyUI stores the prompt there).

    Rows repeat in bands, so even large images compress in little time and memory.
    """
    if width < 1 or height < 1:
        raise ValueError(f"bad PNG size {width}x{height}")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    compressor = zlib.compressobj(6)
    parts: list[bytes] = []
    band = max(height // 16, 1)
    row = b""
    for y in range(height):
        if y % band == 0:
            shade = 1.0 - 0.4 * (y / height)
            pixel = bytes(int(c * shade) for c in rgb)
            row = b"\x00" + pixel * width  # filter type 0 (None) per scanline
        parts.append(compressor.compress(row))
        if len(parts) >= _ROWS_PER_CHUNK:
            parts = [b"".join(parts)]
    parts.append(compressor.flush())
    texts = b"".join(
        _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
        for key, value in (text or {}).items()
    )
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + texts
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def color_from_seed(seed: int, index: int = 0) -> tuple[int, int, int]:
    """A bright colour that depends only on ``seed`` and the image's index in its batch."""
    rng = random.Random(f"{seed}:{index}")
    return (rng.randrange(64, 256), rng.randrange(64, 256), rng.randrange(64, 256))


def color_from_int(color: int) -> tuple[int, int, int]:
    """``EmptyImage``'s ``color`` input (``0xRRGGBB``) as an RGB triple."""
    return ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height of a PNG file.

    Raises:
        ValueError: ``data`` is not a PNG.
    """
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height
