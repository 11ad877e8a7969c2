"""Log lines: plain text (the default) or one JSON object per line (`server.log_format`).

Every line Lasthop writes names a stable `event` (passed as
`extra={"event": "store.invalidation_dropped", ...}`; a test holds every call
to it), so a log pipeline can match on the event rather than on the wording.
Lines from libraries carry their logger's name as the event. Fields given
in `extra` (decision_id, request_id, trace_id, ...) become keys of the
object, or `key=value` pairs after a text line. Nothing here ever sees a
token: no call site passes one.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from authz.config import ServerSettings

# What every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "event"}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra` fields of a record, in the order they were given."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def event(record: logging.LogRecord) -> str:
    name = record.__dict__.get("event")
    return name if isinstance(name, str) and name else record.name


def _time(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "event", "logger", "message", ...extra, "error"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "event": event(record),
            "logger": record.name,
            "message": record.getMessage(),
            **fields(record),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """`time LEVEL event: message key=value ...`, then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in fields(record).items())
        text = f"{_time(record)} {record.levelname} {event(record)}: {record.getMessage()}"
        if extra:
            text += f" {extra}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(server: ServerSettings, stream: TextIO | None = None) -> None:
    """Send every log line to stderr (or `stream`) in the configured format and level.
    `debug` is Lasthop's own debug lines; libraries stay at info and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if server.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = LEVELS[server.log_level]
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("authz").setLevel(level)
