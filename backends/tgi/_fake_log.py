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

Fatal exits print the launcher's error enum, ``Error: <Variant>``, as a plain line on stderr.
"""

from __future__ import annotations

import json
import time

from backends._fakekit import LogWriter, utc_timestamp

_LEVELS = {"WARNING": "WARN"}  # tracing's level names

ROUTER_SERVER = ("text_generation_router::server", "router/src/server.rs")
ROUTER_V3 = ("text_generation_router_v3", "backends/v3/src/lib.rs")


def _timestamp() -> str:
    return utc_timestamp(time.time(), digits=6)


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
    ) -> None:
        """Append a router line from ``source`` (its target and file) at ``line``."""
        target, filename = source
        self.line(
            _dumps(
                {
                    "timestamp": _timestamp(),
                    "level": _LEVELS.get(level, level),
                    "message": message,
                    "target": target,
                    "filename": filename,
                    "line_number": line,
                }
            )
        )

    def fatal(self, variant: str) -> None:
        """Append the launcher's exit line, ``Error: <variant>`` (on stderr)."""
        self.line(f"Error: {variant}", stderr=True)
