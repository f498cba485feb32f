"""The worker's own log: human lines or JSON objects, one per line, on stderr.

What goes out at INFO: state changes, load reports whose figures changed, errors, and (with
``--access-log``, on in the demo) one line per proxied request. Never a payload or a signature:
the access line names the route, the status, the workload and the time, nothing the client
wrote. Fields beyond the message travel as ``extra=`` attributes of the record; the JSON format
writes them as keys of their own, the human format only the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = logging.getLogger("pyworker.access")
"""One line per proxied request (off unless asked for: see :func:`setup_logging`)."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

_QUIET = ("httpx", "httpcore", "hypercorn.error", "quart.app", "quart.serving", "transitions")
"""Chatty at INFO about what the worker reports itself (transitions logs every state change,
which the worker's own line says better)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (Unix seconds), ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, the record's ``extra=`` fields, and ``exc`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str, *, fmt: str = "text", access: bool = False) -> None:
    """Configure the root logger once, at start-up.

    Args:
        level: the least level written (``"INFO"``, ...).
        fmt: ``"text"`` (for people) or ``"json"`` (one object per line, for log shippers).
        access: write one line per proxied request (``pyworker.access``).
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    ACCESS.setLevel(logging.INFO if access else logging.WARNING)
