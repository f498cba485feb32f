"""The fake TGI's log: the launcher's and the router's JSON lines (``--json-output``).

TGI's two processes format their JSON differently (tracing-subscriber's JSON layer), and the
launcher copies the router's lines verbatim into its own stdout:

* launcher: fields nested under ``"fields"``; shard lines carry their span::

    {"timestamp":"…","level":"INFO","fields":{"message":"Shard ready in 12.3s"},
     "target":"text_generation_launcher","span":{"rank":0,"name":"shard-manager"},
     "spans":[{"rank":0,"name":"shard-manager"}]}

* router: flattened, with the source file and line::

    {"timestamp":"…","level":"INFO","message":"Connected",
     "target":"text_generation_router::server","filename":"router/src/server.rs",
     "line_number":2302}

The router logs each request's outcome (``Success``, or the error at ERROR) inside its
handler's span (``generate``, ``generate_stream``), whose ``parameters`` field is the request's
``GenerateParameters`` in Rust's ``Debug`` form, stop sequences included: a client's text, in
the log on the router's own lines::

    {"timestamp":"…","level":"INFO","message":"Success",
     "target":"text_generation_router::server","filename":"router/src/server.rs",
     "line_number":432,"span":{"inference_time":"…","parameters":"GenerateParameters {
     best_of: None, …, stop: [\"…\"], … }",…,"name":"generate"},"spans":[{…}]}

Fatal exits print the launcher's error enum, ``Error: <Variant>``, as a plain line on stderr.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from backends._fakekit import LogWriter, utc_timestamp

from ._fake_api import GENERATE_PARAMETERS

_LEVELS = {"WARNING": "WARN"}  # tracing's level names

ROUTER_SERVER = ("text_generation_router::server", "router/src/server.rs")
ROUTER_V3 = ("text_generation_router_v3", "backends/v3/src/lib.rs")


def _timestamp() -> str:
    return utc_timestamp(time.time(), digits=6)


_PLAIN = frozenset({"do_sample", "stop", "watermark", "details", "decoder_input_details"})


_RUST_ESCAPES = {
    **{code: f"\\u{{{code:x}}}" for code in (*range(0x20), 0x7F)},
    ord("\0"): "\\0",
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord('"'): '\\"',
    ord("\\"): "\\\\",
}


def rust_debug_str(text: str) -> str:
    """``text`` as Rust's ``Debug`` writes a string: quoted, with quotes, backslashes and
    control characters escaped (``\\n``, ``\\u{1b}``)."""
    return '"' + text.translate(_RUST_ESCAPES) + '"'


def _debug(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return rust_debug_str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_debug(item) for item in value) + "]"
    if isinstance(value, dict):  # a grammar: {"type": "json" | "regex", "value": …}
        kind = str(value.get("type", "json")).capitalize()
        return f"{kind}({_debug(json.dumps(value.get('value')))})"
    return str(value)


def generate_parameters(parameters: Mapping[str, object]) -> str:
    """A request's ``parameters`` as the router's span shows them, Rust's ``Debug`` of
    ``GenerateParameters``: ``GenerateParameters { best_of: None, …, stop: ["…"], … }``."""
    fields = []
    for name in GENERATE_PARAMETERS:
        value = parameters.get(name)
        shown = _debug(value)
        if name not in _PLAIN and value is not None:
            shown = f"Some({shown})"
        elif name in _PLAIN and value is None:
            shown = "[]" if name == "stop" else "false"
        fields.append(f"{name}: {shown}")
    return "GenerateParameters { " + ", ".join(fields) + " }"


def request_span(name: str, parameters: Mapping[str, object], **timings: str) -> dict[str, str]:
    """The router's span around a request: ``name`` (``generate``, ``generate_stream``), its
    ``parameters`` and the timings recorded so far, keys sorted as the JSON layer writes them,
    then ``name``."""
    fields = {"parameters": generate_parameters(parameters), **timings}
    return {**dict(sorted(fields.items())), "name": name}


def _dumps(obj: object) -> str:
    # serde_json: compact, non-ASCII left as is.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class TGILog(LogWriter):
    """Writes the fake TGI's log lines; ``info``/``warning``/``error`` are launcher lines."""

    def write(self, level: str, message: str) -> None:
        """Append a launcher line at ``level``."""
        self.launcher(level, message)

    def launcher(self, level: str, message: str, *, rank: int | None = None) -> None:
        """Append a launcher line; ``rank`` puts it in shard ``rank``'s span."""
        record: dict[str, object] = {
            "timestamp": _timestamp(),
            "level": _LEVELS.get(level, level),
            "fields": {"message": message},
            "target": "text_generation_launcher",
        }
        if rank is not None:
            span = {"rank": rank, "name": "shard-manager"}
            record["span"] = span
            record["spans"] = [span]
        self.line(_dumps(record))

    def router(
        self,
        level: str,
        message: str,
        *,
        source: tuple[str, str] = ROUTER_SERVER,
        line: int = 2302,
        span: Mapping[str, str] | None = None,
    ) -> None:
        """Append a router line from ``source`` (its target and file) at ``line``, inside
        ``span`` (see :func:`request_span`) if given."""
        target, filename = source
        record: dict[str, object] = {
            "timestamp": _timestamp(),
            "level": _LEVELS.get(level, level),
            "message": message,
            "target": target,
            "filename": filename,
            "line_number": line,
        }
        if span is not None:
            record["span"] = span
            record["spans"] = [span]
        self.line(_dumps(record))

    def fatal(self, variant: str) -> None:
        """Append the launcher's exit line, ``Error: <variant>`` (on stderr)."""
        self.line(f"Error: {variant}", stderr=True)
