"""Reading a worker's answer for a person: a stream's tokens as text, images as files.

Streams come as server-sent events (``data: {...}`` lines, an event per blank line) or as JSON
lines; :class:`EventReader` splits either into its events' data, whatever the chunking. Each
backend's model server puts a token's text in its own place (:data:`TOKEN_READERS`):

============  =================================================
hello_world   ``{"token": " word"}``
tgi           ``{"token": {"text": " word", "special": false}}``
openai        ``{"choices": [{"text": …}]}`` (completions) or
              ``{"choices": [{"delta": {"content": …}}]}`` (chat)
============  =================================================

ComfyUI answers carry their images base64-encoded (``{"images": [{"data", "content_type",
"filename", …}]}``): :func:`save_images` writes them to files and leaves a note in their place.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TOKEN_READERS",
    "EventReader",
    "event_error",
    "save_images",
    "token_text",
]


class EventReader:
    """Splits a byte stream into its events' data, chunk by chunk.

    Server-sent events: ``data:`` lines (one leading space dropped) make an event, several
    joined by newlines, ended by a blank line; comments (``:``) and other fields are skipped.
    A line that starts with ``{`` or ``[`` is an event by itself (JSON lines). UTF-8 and line
    endings (``\\n`` or ``\\r\\n``) may be split anywhere between chunks.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of the events that ``chunk`` completes."""
        lines = (self._partial + self._decoder.decode(chunk)).split("\n")
        self._partial = lines.pop()
        events: list[str] = []
        for line in lines:
            self._line(line.removesuffix("\r"), events)
        return events

    def close(self) -> list[str]:
        """The data of the last event, had the stream no blank line at its end."""
        events: list[str] = []
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._line(rest.removesuffix("\r"), events)
        self._line("", events)
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(("{", "[")):
            events.append(line)
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))


def _first_choice(event: dict[str, Any]) -> dict[str, Any] | None:
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _hello_world_token(event: dict[str, Any]) -> str | None:
    token = event.get("token")
    return token if isinstance(token, str) else None


def _tgi_token(event: dict[str, Any]) -> str | None:
    token = event.get("token")
    if not isinstance(token, dict) or token.get("special") is True:
        return None
    text = token.get("text")
    return text if isinstance(text, str) else None


def _openai_token(event: dict[str, Any]) -> str | None:
    choice = _first_choice(event)
    if choice is None:
        return None
    text = choice.get("text")
    if isinstance(text, str):
        return text
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None


TOKEN_READERS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "hello_world": _hello_world_token,
    "tgi": _tgi_token,
    "openai": _openai_token,
}
"""Each backend's way to find a token's text in one of its stream's events."""


def token_text(event: object, backend: str | None = None) -> str | None:
    """The text a stream event carries, or None (a closing event, a role, an error).

    Args:
        event: the event's data, decoded from JSON.
        backend: whose stream it is; None (or a backend without streams) tries each reader.
    """
    if not isinstance(event, dict):
        return None
    reader = TOKEN_READERS.get(backend or "")
    for read in (reader,) if reader is not None else TOKEN_READERS.values():
        text = read(event)
        if text is not None:
            return text
    return None


def event_error(event: object) -> str | None:
    """The error an event reports in the stream (TGI's and OpenAI's in-stream errors), or None."""
    if not isinstance(event, dict):
        return None
    error = event.get("error")
    if isinstance(error, dict):
        error = error.get("message", error)
    return None if error in (None, "") else str(error)


def _suffix(content_type: object, filename: object) -> str:
    if isinstance(filename, str) and Path(filename).suffix:
        return Path(filename).suffix
    guessed = mimetypes.guess_extension(content_type) if isinstance(content_type, str) else None
    return guessed or ".png"


def _image_path(output: Path, index: int, count: int, image: dict[str, Any]) -> Path:
    suffix = output.suffix or _suffix(image.get("content_type"), image.get("filename"))
    if count == 1:
        return output.with_suffix(suffix)
    return output.with_name(f"{output.stem}-{index + 1}{suffix}")


def save_images(answer: object, output: Path | None) -> tuple[object, list[Path]]:
    """Write an answer's base64 images to files and put a note in place of each one's data.

    Blocks (it writes files): call it off the event loop.

    Args:
        answer: the decoded answer; only ``answer["images"][i]["data"]`` strings are touched.
        output: where to write: this path for one image, ``NAME-1.png``, ``NAME-2.png``, ... for
            several (the suffix from the path, else from the image); None writes nothing.

    Returns:
        The answer with each image's ``data`` replaced by a note (saved where, or how to save
        it), and the paths written.

    Raises:
        OSError: a file cannot be written.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("images"), list):
        return answer, []
    images = [image for image in answer["images"] if isinstance(image, dict)]
    encoded = [image for image in images if isinstance(image.get("data"), str)]
    saved: list[Path] = []
    notes: dict[int, str] = {}
    for index, image in enumerate(encoded):
        try:
            data = base64.b64decode(image["data"], validate=True)
        except (binascii.Error, ValueError):
            continue
        if output is None:
            notes[id(image)] = f"<{len(data)} bytes: not saved, use --output FILE>"
            continue
        path = _image_path(output, index, len(encoded), image)
        path.write_bytes(data)
        saved.append(path)
        notes[id(image)] = f"<{len(data)} bytes: saved to {path}>"
    shown = [
        {**image, "data": notes[id(image)]} if id(image) in notes else image
        for image in answer["images"]
    ]
    return {**answer, "images": shown}, saved
