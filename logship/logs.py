"""Operator-facing log lines: one event per line, whatever the input held.

Values that come from outside (etcd values, file names, config text) may hold newlines,
terminal escapes, lone surrogates or megabytes of text. `shown()` makes one such value
safe to echo; the formatter escapes control characters in every message as a last
line of defence, so no input can forge or split a log line.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import sys
from datetime import datetime
from typing import Iterable

ECHO_LIMIT = 200
MESSAGE_LIMIT = 16 * 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """Control characters and lone surrogates as \\xNN / \\uNNNN escapes."""
    return _UNSAFE.sub(_escape_char, text)


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """An outside value, escaped and capped, for an error message: 'abc... (N chars)'."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} chars)"
    return escape(text)


class SafeFormatter(logging.Formatter):
    """Escapes and caps the message; a traceback (exc_info) keeps its lines. Times are
    RFC 3339 with the zone, so lines from hosts in several zones can be compared."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message, MESSAGE_LIMIT)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(
            timespec="milliseconds")


class JsonFormatter(SafeFormatter):
    """One JSON object per line for log pipelines: time, level, logger, message, and the
    key, path and topic the event is about, taken from the message's `key=` / `path=` /
    `topic=` words, which every such event carries."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = shown(record.getMessage(), MESSAGE_LIMIT)
        line = {"time": self.formatTime(record), "level": record.levelname,
                "logger": record.name, "message": record.message}
        line |= dict(SUBJECT.findall(record.message))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


SUBJECT = re.compile(r"(?<![\w.])(key|path|topic)=(\S*[^\s:;,])")  # "topic=t: ..." is t
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str = "info", format: str = "text") -> None:
    """Called at start and again when config.yaml's `log` section changes."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else SafeFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def plural(count: int, one: str, many: str) -> str:
    """'1 entry', '2 entries': counts in messages read as an operator would write them."""
    return f"{count} {one if count == 1 else many}"


def did_you_mean(word: str, known: Iterable[str], qualify: str = "") -> str:
    """'; did you mean allowed_paths?' for a misspelt name (the known one after
    `qualify`, e.g. 'etcd.'), or '' when none is close."""
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {qualify}{close[0]}?" if close else ""
