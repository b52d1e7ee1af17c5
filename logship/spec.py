"""The etcd value: a JSON array of {path, topic[, read_from]} entries, parsed into Targets.

A value that is not a JSON array is refused whole (SpecError), so the key's running
workers stay as they are; a bad entry is refused alone and the good ones still apply.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from logship.errors import SpecError

READ_FROM = ("end", "beginning")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_FIELDS = {"path", "topic", "read_from"}


@dataclass(frozen=True)
class Target:
    """One (path, topic) to ship; read_from only matters the first time the path is seen."""

    path: str
    topic: str
    read_from: str = "end"

    @property
    def id(self) -> tuple[str, str]:
        return (self.path, self.topic)

    def __str__(self) -> str:
        return f"path={self.path} topic={self.topic}"


@dataclass(frozen=True)
class ParsedValue:
    targets: tuple[Target, ...]
    rejected: tuple[str, ...]


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {text!r}")
    return host, int(port)


def parse_entry(entry: Any) -> Target:
    """Check one entry's shape; raises ValueError naming the bad field."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry must be an object, got {json.dumps(entry)}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    path, topic = entry.get("path"), entry.get("topic")
    read_from = entry.get("read_from", "end")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError(f"path: must be an absolute path, got {json.dumps(path)}")
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise ValueError(f"topic: not a valid Kafka topic name: {json.dumps(topic)}")
    if read_from not in READ_FROM:
        raise ValueError(f"read_from: must be 'end' or 'beginning', got {json.dumps(read_from)}")
    return Target(os.path.normpath(path), topic, read_from)


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style glob where '*' and '?' stay within one directory and '**' spans many."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


def path_allowed(path: str, allowed: Iterable[str]) -> bool:
    """Judge the real path, so that a symlink cannot lead outside the allowed globs."""
    real = os.path.realpath(path)
    return any(_glob_regex(glob).fullmatch(real) for glob in allowed)


def check_allowed(target: Target, allowed: Iterable[str]) -> None:
    if not path_allowed(target.path, allowed):
        raise ValueError(f"path: {target.path} (real path {os.path.realpath(target.path)}) "
                         f"is outside allowed_paths")


def parse_value(raw: bytes | str, allowed: Iterable[str]) -> ParsedValue:
    """Parse an etcd value; raises SpecError when the whole value must be refused."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"value is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise SpecError(f"value must be a JSON array of entries, got {type(data).__name__}")
    targets: dict[tuple[str, str], Target] = {}
    rejected = []
    for index, entry in enumerate(data):
        try:
            target = parse_entry(entry)
            check_allowed(target, allowed)
        except ValueError as exc:
            rejected.append(f"entry {index}: {exc}")
            continue
        targets.setdefault(target.id, target)
    return ParsedValue(tuple(targets.values()), tuple(rejected))
