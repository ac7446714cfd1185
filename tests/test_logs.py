"""Logs: text or JSON lines on stderr, levels, and no secret in either."""

from __future__ import annotations

import io
import json
import logging

from batchsync import logs
from batchsync.config import register_secret


def test_json_lines_carry_context_and_no_secret() -> None:
    """--log-format json writes one object per line with the extra context, redacted."""
    stream = io.StringIO()
    logs.configure(logging.INFO, "json", stream)
    register_secret("sk-secret-99887766")
    logging.getLogger("batchsync.test").warning(
        "retrying with %s", "sk-secret-99887766", extra={"batch": "b1", "wait": 2.5}
    )
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "warning"
    assert entry["batch"] == "b1"
    assert entry["wait"] == 2.5
    assert "sk-secret" not in stream.getvalue()


def test_text_lines_are_prefixed_and_levels_filter() -> None:
    """Text logs read 'batchsync: level: message'; below the level nothing is written."""
    stream = io.StringIO()
    logs.configure(logging.WARNING, "text", stream)
    logging.getLogger("batchsync.x").info("hidden")
    logging.getLogger("batchsync.x").error("shown")
    assert stream.getvalue() == "batchsync: error: shown\n"


class TerminalStream(io.StringIO):
    """A stream that says it is a terminal, as stderr does under a person's shell."""

    def isatty(self) -> bool:
        return True


def test_text_lines_on_a_terminal_clear_the_progress_bar_line_first() -> None:
    """On a terminal each log line starts by erasing the current line (the progress bar),
    so the two are never glued together; off a terminal lines are plain."""
    stream = TerminalStream()
    logs.configure(logging.INFO, "text", stream)
    logging.getLogger("batchsync.x").info("batch b1: synced")
    assert stream.getvalue() == "\r\x1b[Kbatchsync: info: batch b1: synced\n"
