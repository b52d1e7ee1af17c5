"""What an entry asks to be done to its lines before they are sent (Filebeat's
processors): multiline events first, then line filters, then the record format.

Built once per worker, and only when the entry asks for something: a plain entry's lines
go to the sink untouched. Work is per chunk where it can be (one timestamp per read, one
regex alternation per filter list), per line where it must be.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import compress
from json.encoder import encode_basestring
from operator import not_
from typing import Callable, Iterable

from logship.spec import Multiline, Options, Target
from logship.tailer import Chunk, FollowedFile


@dataclass
class Processed:
    """What processing dropped or could not parse, for the metrics."""

    filtered: int = 0
    invalid_json: int = 0


class Processor:
    def __init__(self, target: Target, host: str) -> None:
        options = target.options
        self._multiline = options.multiline
        self._joiners: dict[FollowedFile, Joiner] = {}
        self._include = any_of(options.include_lines)
        self._exclude = any_of(options.exclude_lines)
        self._encode = _json_encoder(target, host) if options.format == "json" else None

    @staticmethod
    def needed(options: Options) -> bool:
        return bool(options.include_lines or options.exclude_lines or options.multiline) \
            or options.format == "json"

    def process(self, chunk: Chunk, now: float) -> Processed:
        """The chunk's lines become its records, in place. A held multiline event keeps
        the chunk's end offset at the event's start: a checkpoint never points inside
        an event, so a restart reads the whole event again."""
        if self._multiline is not None:
            joiner = self._joiners.get(chunk.file)
            if joiner is None:
                joiner = self._joiners[chunk.file] = Joiner(self._multiline)
            chunk.lines, chunk.offsets, chunk.end_offset = joiner.feed(
                chunk.lines, chunk.offsets, chunk.end_offset, now)
        return self._records(chunk)

    def expired(self, now: float, force: bool = False) -> tuple[Chunk, Processed] | None:
        """A held event quiet for multiline.timeout (any held one with `force`, at stop),
        as a chunk of its own; None when there is none."""
        for followed, joiner in self._joiners.items():
            if joiner.held and (force or now - joiner.last >= joiner.timeout):
                lines, offsets, end = joiner.release()
                chunk = Chunk(followed, lines, offsets, end)
                return chunk, self._records(chunk)
        return None

    def next_release(self) -> float | None:
        """When the oldest held event times out (monotonic), or None."""
        times = [j.last + j.timeout for j in self._joiners.values() if j.held]
        return min(times) if times else None

    def holds(self, followed: FollowedFile) -> bool:
        joiner = self._joiners.get(followed)
        return joiner is not None and joiner.held

    def forget(self, followed: FollowedFile) -> None:
        self._joiners.pop(followed, None)

    def _records(self, chunk: Chunk) -> Processed:
        """Filebeat's order: include_lines first, then exclude_lines; a dropped line's
        offset still advances (the batch's end covers it)."""
        lines, offsets = chunk.lines, chunk.offsets
        count = len(lines)
        if self._include is not None:
            lines, offsets = _keep(lines, offsets, map(self._include, lines))
        if self._exclude is not None:
            lines, offsets = _keep(lines, offsets, map(not_, map(self._exclude, lines)))
        chunk.lines, chunk.offsets = lines, offsets
        processed = Processed(filtered=count - len(lines))
        if self._encode is not None:
            chunk.lines, processed.invalid_json = self._encode(chunk.lines, chunk.offsets)
        return processed


class Joiner:
    """One file's multiline state: the event being gathered, its first line's offset,
    and the end of what has been read."""

    def __init__(self, spec: Multiline) -> None:
        self._search = re.compile(spec.pattern.encode()).search
        self._negate = spec.negate
        self._after = spec.match == "after"
        self._max_lines = spec.max_lines
        self.timeout = spec.timeout
        self._lines: list[bytes] = []
        self._start = 0
        self._end = 0
        self.last = 0.0

    @property
    def held(self) -> bool:
        return bool(self._lines)

    def feed(self, lines: list[bytes], offsets: list[int], end: int,
             now: float) -> tuple[list[bytes], list[int], int]:
        """Complete events and their first offsets, and the offset a checkpoint may reach.

        The lines are cut where events begin, found for the whole chunk in C (a map of
        the regex); a run of one-line events (most lines of most logs) is then sliced
        out whole, so only multi-line events cost Python work of their own."""
        cuts = self._cuts(lines)
        events: list[bytes] = []
        starts: list[int] = []
        if lines:
            self.last = now
        self._end = end
        last = cuts[-1] if cuts else 0
        if cuts:
            first = cuts[0]
            self._hold(lines[:first], offsets[:first])
            self._emit(events, starts)
            if last - first == len(cuts) - 1:
                events += lines[first:last]
                starts += offsets[first:last]
            else:
                for start, stop in zip(cuts, cuts[1:]):
                    event = lines[start:min(stop, start + self._max_lines)]
                    events.append(event[0] if len(event) == 1 else b"\n".join(event))
                    starts.append(offsets[start])
        self._hold(lines[last:], offsets[last:])
        return events, starts, (self._start if self._lines else end)

    def _cuts(self, lines: list[bytes]) -> list[int]:
        """Where a new event begins: before a line that does not continue (after), or
        after one (before)."""
        found = map(self._search, lines)
        breaks = found if self._negate else map(not_, found)
        positions = range(len(lines)) if self._after else range(1, len(lines) + 1)
        return list(compress(positions, breaks))

    def _hold(self, lines: list[bytes], offsets: list[int]) -> None:
        """Lines of the event not complete yet; beyond max_lines they are dropped."""
        if not lines:
            return
        if not self._lines:
            self._start = offsets[0]
        self._lines += lines[:self._max_lines - len(self._lines)]

    def release(self) -> tuple[list[bytes], list[int], int]:
        events: list[bytes] = []
        starts: list[int] = []
        self._emit(events, starts)
        return events, starts, self._end

    def _emit(self, events: list[bytes], starts: list[int]) -> None:
        if self._lines:
            events.append(b"\n".join(self._lines))
            starts.append(self._start)
            self._lines = []


def _keep(lines: list[bytes], offsets: list[int],
          flags: Iterable[object]) -> tuple[list[bytes], list[int]]:
    """The lines whose flag is true; when all are (the usual case), no copy is made."""
    flags = list(flags)
    if all(flags):
        return lines, offsets
    return list(compress(lines, flags)), list(compress(offsets, flags))


def any_of(patterns: tuple[str, ...]) -> Callable[[bytes], object] | None:
    """One alternation, so a line is scanned once however many patterns there are."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns).encode()).search


Encoder = Callable[[list[bytes], list[int]], tuple[list[bytes], int]]
# Bytes a JSON string holds as they are: printable ASCII but the quote and the backslash.
_JSON_VERBATIM = bytes(b for b in range(0x20, 0x7f) if b not in b'"\\')


def _json_encoder(target: Target, host: str) -> Encoder:
    """`{"@timestamp", "message", "path", "host", "offset", ...fields}` per line. The
    work is done per chunk in C where it can be. A chunk of plain ASCII with nothing to
    escape (most logs) fills one bytes template per line. Any other chunk takes one
    json.dumps of all the messages and one encode of all the records, each split apart
    again (a JSON text never holds a raw newline, and `", "` only ever separates two
    strings); per line there is a decode and one format. A json.dumps per line would
    cost more than the send."""
    options = target.options
    middle = (f',"path":{encode_basestring(target.path)},"host":{encode_basestring(host)},'
              f'"offset":')
    tail = "".join(f",{encode_basestring(name)}:{json.dumps(value)}"
                   for name, value in options.fields) + "}"
    embed = options.json_message

    def encode(lines: list[bytes], offsets: list[int]) -> tuple[list[bytes], int]:
        if not lines:
            return [], 0
        head = f'{{"@timestamp":"{_now()}","message":'
        if not embed and not b"".join(lines).translate(None, _JSON_VERBATIM):
            template = _template(f'{head}"', f'"{middle}', tail)
            return [template % line_offset for line_offset in zip(lines, offsets)], 0
        texts = [line.decode("utf-8", "replace") for line in lines]
        quoted = json.dumps(texts, ensure_ascii=False)[2:-2].split('", "')
        if not embed:
            records = "\n".join([f'{head}"{m}"{middle}{o}{tail}' for m, o in zip(quoted, offsets)])
            return records.encode().split(b"\n"), 0
        objects = [_json_object(text) for text in texts]
        messages = [o or f'"{m}"' for o, m in zip(objects, quoted)]
        records = "\n".join([f"{head}{m}{middle}{o}{tail}" for m, o in zip(messages, offsets)])
        return records.encode().split(b"\n"), objects.count(None)
    return encode


def _template(before_line: str, before_offset: str, after: str) -> bytes:
    """A bytes %-template of a record, to be filled with (line, offset)."""
    def literal(text: str) -> bytes:
        return text.encode().replace(b"%", b"%%")
    return literal(before_line) + b"%b" + literal(before_offset) + b"%d" + literal(after)


def _json_object(text: str) -> str | None:
    """The line itself when it is a JSON object, to embed as one; None otherwise."""
    try:
        return text if isinstance(json.loads(text), dict) else None
    except ValueError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
