"""What an entry asks to be done to its lines before they are sent (Filebeat's
processors): line filters, then the record format.

Built once per worker, and only when the entry asks for something: a plain entry's lines
go to the sink untouched. Work is per chunk where it can be (one timestamp per read, one
regex alternation per filter list), per line where it must be.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring
from typing import Callable

from logship.spec import Options, Target


@dataclass
class Processed:
    lines: list[bytes]
    offsets: list[int]
    filtered: int = 0
    invalid_json: int = 0


class Processor:
    def __init__(self, target: Target, host: str) -> None:
        options = target.options
        self._include = _any_of(options.include_lines)
        self._exclude = _any_of(options.exclude_lines)
        self._encode = _json_encoder(target, host) if options.format == "json" else None

    @staticmethod
    def needed(options: Options) -> bool:
        return bool(options.include_lines or options.exclude_lines) or options.format == "json"

    def process(self, lines: list[bytes], offsets: list[int]) -> Processed:
        """Filebeat's order: include_lines first, then exclude_lines; a dropped line's
        offset still advances (the batch's end covers it)."""
        kept = list(range(len(lines)))
        if self._include is not None:
            kept = [i for i in kept if self._include(lines[i])]
        if self._exclude is not None:
            kept = [i for i in kept if not self._exclude(lines[i])]
        processed = Processed([lines[i] for i in kept], [offsets[i] for i in kept],
                              filtered=len(lines) - len(kept)) if len(kept) < len(lines) \
            else Processed(lines, offsets)
        if self._encode is not None:
            processed.lines, processed.invalid_json = self._encode(processed.lines,
                                                                   processed.offsets)
        return processed


def _any_of(patterns: tuple[str, ...]) -> Callable[[bytes], object] | None:
    """One alternation, so a line is scanned once however many patterns there are."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns).encode()).search


Encoder = Callable[[list[bytes], list[int]], tuple[list[bytes], int]]


def _json_encoder(target: Target, host: str) -> Encoder:
    """`{"@timestamp", "message", "path", "host", "offset", ...fields}` per line, built
    from constant parts around the escaped message (the C string encoder): a full
    json.dumps per line would cost more than the send."""
    options = target.options
    middle = (f',"path":{encode_basestring(target.path)},"host":{encode_basestring(host)},'
              f'"offset":')
    tail = "".join(f",{encode_basestring(name)}:{json.dumps(value)}"
                   for name, value in options.fields) + "}"
    embed = options.json_message

    def encode(lines: list[bytes], offsets: list[int]) -> tuple[list[bytes], int]:
        head = f'{{"@timestamp":"{_now()}","message":'
        invalid = 0
        values = []
        for line, offset in zip(lines, offsets):
            text = line.decode("utf-8", "replace")
            message = None
            if embed:
                message = _json_object(text)
                invalid += message is None
            values.append((head + (message or encode_basestring(text)) + middle + str(offset)
                           + tail).encode())
        return values, invalid
    return encode


def _json_object(text: str) -> str | None:
    """The line itself when it is a JSON object, to embed as one; None otherwise."""
    try:
        return text if isinstance(json.loads(text), dict) else None
    except ValueError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
