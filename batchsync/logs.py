"""Logging on stderr, as text for people or JSON lines for log shippers, secrets redacted."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from batchsync.config import redact

# Attributes every LogRecord has; anything else was passed with extra= and is context.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Strip registered secrets from the final message, whatever formatted it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        return True


# Carriage return and erase-line: a log line on a terminal replaces the progress bar's line
# instead of being glued to its end; the bar redraws itself below on its next update.
_CLEAR_LINE = "\r\x1b[K"


class TextFormatter(logging.Formatter):
    def __init__(self, *, terminal: bool = False) -> None:
        super().__init__()
        self._prefix = _CLEAR_LINE if terminal else ""

    def format(self, record: logging.LogRecord) -> str:
        line = redact(f"batchsync: {record.levelname.lower()}: {record.getMessage()}")
        return self._prefix + line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return redact(orjson.dumps(entry, default=str).decode())


def configure(level: int, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send batchsync's logs to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    target = stream or sys.stderr
    handler = logging.StreamHandler(target)
    terminal = target.isatty()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(terminal=terminal))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger("batchsync")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # batchsync logs each request itself at -vv (with bytes and time); httpx's own INFO line
    # would only repeat it wherever a host application (Airflow, Dagster) logs the root logger.
    logging.getLogger("httpx").setLevel(logging.WARNING)
