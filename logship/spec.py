"""The etcd value: a JSON array of {path, topic, ...options} entries, parsed into Targets.

An entry may name the systemd journal instead of a file ({"journal": {...}, "topic": T}):
its Target is named by its filters, "journal:unit=nginx.service,priority=4", so that it
is followed, supervised, checkpointed and reported like a file.

A value that is not a JSON array is refused whole (SpecError), so the key's running
workers stay as they are; a bad entry is refused alone and the good ones still apply.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable

from logship.errors import SpecError
from logship.globs import compile_glob, glob_root, is_glob, may_overlap
from logship.logs import did_you_mean, shown

READ_FROM = ("end", "beginning")
FORMATS = ("raw", "json")
KEYS = ("path", "host", "none")
PATH_MAX = 4096
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def valid_topic(topic: object) -> bool:
    """A name Kafka takes for a topic."""
    return isinstance(topic, str) and bool(_TOPIC.fullmatch(topic)) and topic not in (".", "..")


_FIELDS = {"path", "topic", "read_from", "include_lines", "exclude_lines", "format", "fields",
           "json_message", "key", "multiline"}
_JOURNAL_ENTRY_FIELDS = {"journal", "topic", "read_from", "include_lines", "exclude_lines",
                         "format", "fields", "key"}
_JOURNAL_FIELDS = {"units", "identifiers", "priority", "directory"}
JOURNAL_KEYS = ("unit", "host", "none")
JOURNAL_PREFIX = "journal:"
UNIT_TYPES = ("service", "socket", "device", "mount", "automount", "swap", "target", "path",
              "timer", "slice", "scope")
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,255}")       # systemd's unit name characters
_IDENTIFIER = re.compile(r"[^\x00-\x1f\x7f]{1,255}")       # postfix/smtpd, (sd-pam)
MULTILINE_MATCH = ("after", "before")
_MULTILINE_FIELDS = {"pattern", "negate", "match", "max_lines", "timeout"}
RESERVED_FIELDS = ("@timestamp", "message", "path", "host", "offset")
_INT_DIGITS = 4300   # Python's int-parsing limit (sys.get_int_max_str_digits)


@dataclass(frozen=True)
class Multiline:
    """Filebeat's multiline: a line for which `pattern` matches (or, with `negate`, does
    not) continues the event before it (`match: after`) or the one after it (`before`)."""

    pattern: str
    negate: bool = False
    match: str = "after"
    max_lines: int = 500
    timeout: float = 5.0


@dataclass(frozen=True)
class Options:
    """How an entry's lines become records (Filebeat's meaning where it has one): filters
    (include first, then exclude), the record format and key, constant fields."""

    include_lines: tuple[str, ...] = ()
    exclude_lines: tuple[str, ...] = ()
    format: str = "raw"
    fields: tuple[tuple[str, str | int | float | bool], ...] = ()
    json_message: bool = False
    key: str = "path"
    multiline: Multiline | None = None


@dataclass(frozen=True)
class Journal:
    """Which journal entries to ship: those of any of `units` or `identifiers` (all when
    both are empty), at `priority` or more severe, from `directory` (the system's journal
    when None)."""

    units: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    priority: int | None = None
    directory: str | None = None

    @property
    def name(self) -> str:
        """The entry's name where a file's path would be: stable, readable, unique."""
        parts = [f"unit={u}" for u in self.units] + [f"identifier={i}" for i in self.identifiers]
        if self.priority is not None:
            parts.append(f"priority={self.priority}")
        if self.directory is not None:
            parts.append(f"directory={self.directory}")
        return JOURNAL_PREFIX + (",".join(parts) or "all")


@dataclass(frozen=True)
class Target:
    """One (path, topic) to ship; read_from only matters the first time the path is seen.

    A path with wildcards is a glob entry: it is never followed itself, each file it
    matches is, as a Target of its own whose `glob` names the entry."""

    path: str
    topic: str
    read_from: str = "end"
    options: Options = Options()
    glob: str | None = None
    journal: Journal | None = None

    @property
    def id(self) -> tuple[str, str]:
        return (self.path, self.topic)

    @property
    def entry_id(self) -> tuple[str, str]:
        """The id of the entry that declared it: its glob's for a matched file."""
        return (self.glob or self.path, self.topic)

    @property
    def is_glob(self) -> bool:
        return self.glob is None and self.journal is None and is_glob(self.path)

    def matched(self, path: str, read_from: str) -> Target:
        return replace(self, path=path, read_from=read_from, glob=self.path)

    def __str__(self) -> str:
        if self.journal is not None:
            return f"{self.path} topic={self.topic}"
        return f"path={self.path} topic={self.topic}"


@dataclass(frozen=True)
class ParsedValue:
    targets: tuple[Target, ...]
    rejected: tuple[str, ...]


_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\]")


def split_host_port(text: str) -> tuple[str, int]:
    """'host:port' (a name, an IPv4 address or a bracketed IPv6 address) and nothing else."""
    host, sep, port = text.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {shown(text)!r}")
    return host.strip("[]"), int(port)


class HugeNumber:
    """A JSON number too long to parse: kept as a marker so only its entry is refused."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


def _parse_int(text: str) -> int | HugeNumber:
    return int(text) if len(text) <= _INT_DIGITS else HugeNumber(len(text))


def _js(value: Any) -> str:
    """An entry's value as JSON, escaped and capped for an error message."""
    return shown(json.dumps(value, ensure_ascii=False, default=repr))


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError(f"path: must be an absolute path, got {_js(path)}")
    if "\0" in path:
        raise ValueError(f"path: contains a NUL character: {_js(path)}")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"path: not valid UTF-8 (a lone surrogate escape): {_js(path)}") from None
    if len(encoded) > PATH_MAX:
        raise ValueError(f"path: longer than {PATH_MAX} bytes: {_js(path)}")
    path = os.path.normpath(path)
    if is_glob(path):
        _check_glob(path)
    return path


def _check_glob(path: str) -> None:
    try:
        compile_glob(path)
    except ValueError as exc:
        raise ValueError(f"path: {exc}") from None
    if any("**" in part and part != "**" for part in path.split("/")):
        raise ValueError(f"path: '**' must be a whole path component, as in "
                         f"/var/log/**/*.log: {_js(path)}")
    if glob_root(path).base == "/":
        raise ValueError(f"path: a glob needs a fixed directory before its first wildcard, "
                         f"as in /var/log/*.log: {_js(path)}")


def parse_entry(entry: Any) -> Target:
    """Check one entry's shape; raises ValueError naming the bad field."""
    if isinstance(entry, dict) and "journal" in entry:
        return _parse_journal_entry(entry)
    _check_object(entry, _FIELDS, "", f"entry must be an object, got {_json_type(entry)}")
    path = _check_path(entry.get("path"))
    return Target(path, _topic(entry), _read_from(entry), _options(entry))


def _topic(entry: dict) -> str:
    topic = entry.get("topic")
    if not valid_topic(topic):
        raise ValueError(f"topic: not a valid Kafka topic name: {_js(topic)}")
    return topic


def _read_from(entry: dict) -> str:
    read_from = entry.get("read_from", "end")
    if read_from not in READ_FROM:
        raise ValueError(f"read_from: must be 'end' or 'beginning', got {_js(read_from)}")
    return read_from


def _parse_journal_entry(entry: dict) -> Target:
    """A journal entry takes the options that mean something for whole entries: filters
    on MESSAGE, the format and the key; no multiline (an entry is one event already)."""
    if "path" in entry:
        raise ValueError("journal: an entry names either a path or the journal, not both")
    for name in ("multiline", "json_message"):
        if name in entry:
            raise ValueError(f"{name}: not for a journal entry (each entry is one event)")
    _check_object(entry, _JOURNAL_ENTRY_FIELDS, "", "entry must be an object, got")
    journal = _journal(entry["journal"])
    return Target(journal.name, _topic(entry), _read_from(entry), _options(entry, JOURNAL_KEYS),
                  journal=journal)


def _journal(spec: Any) -> Journal:
    _check_object(spec, _JOURNAL_FIELDS, "journal: ",
                  "journal: must be an object of filters ({} for the whole journal), got")
    priority = spec.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 0 <= priority <= 7):
        raise ValueError(f"journal.priority: must be a syslog level from 0 (emerg) to 7 "
                         f"(debug), got {_js(priority)}")
    directory = spec.get("directory")
    directory = None if directory is None else _journal_directory(directory)
    return Journal(tuple(sorted(set(map(_unit, _names(spec, "units", _UNIT))))),
                   tuple(sorted(set(_names(spec, "identifiers", _IDENTIFIER)))), priority,
                   directory)


def _names(spec: dict, name: str, valid: re.Pattern[str]) -> list[str]:
    values = spec.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"journal.{name}: must be a list of names, got {_js(values)}")
    for index, value in enumerate(values):
        if not valid.fullmatch(value):
            what = "a unit name (no wildcards or spaces)" if valid is _UNIT \
                else "an identifier (no control characters)"
            raise ValueError(f"journal.{name}[{index}]: must be {what}, got {_js(value)}")
    return values


def _unit(name: str) -> str:
    """A unit named without its type is a service, as for systemctl and journalctl -u."""
    return name if name.rpartition(".")[2] in UNIT_TYPES else f"{name}.service"


def _journal_directory(directory: Any) -> str:
    try:
        directory = _check_path(directory)
    except ValueError as exc:
        raise ValueError(f"journal.directory{str(exc).removeprefix('path')}") from None
    if is_glob(directory):
        raise ValueError(f"journal.directory: must be one directory, not a glob: "
                         f"{_js(directory)}")
    return directory


def _check_object(value: Any, known: set[str], where: str, not_an_object: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{not_an_object} {_js(value)}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{where}unknown field '{shown(unknown[0])}'"
                         f"{did_you_mean(str(unknown[0]), known)}")


def _options(entry: dict, keys: tuple[str, ...] = KEYS) -> Options:
    options = Options(
        include_lines=_regexes(entry, "include_lines"),
        exclude_lines=_regexes(entry, "exclude_lines"),
        format=_choice(entry, "format", FORMATS),
        fields=_constant_fields(entry.get("fields", {})),
        json_message=entry.get("json_message", False),
        key=_choice(entry, "key", keys),
        multiline=_multiline(entry["multiline"]) if "multiline" in entry else None,
    )
    if not isinstance(options.json_message, bool):
        raise ValueError(f"json_message: must be true or false, got {_js(options.json_message)}")
    if options.json_message and options.format != "json":
        raise ValueError("json_message: needs \"format\": \"json\"")
    return options


def _multiline(spec: Any) -> Multiline:
    _check_object(spec, _MULTILINE_FIELDS, "multiline: ",
                  "multiline: must be an object with a pattern, got")
    pattern = spec.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"multiline.pattern: must be a regular expression, got {_js(pattern)}")
    _check_regex(pattern, "multiline.pattern")
    negate, max_lines, timeout = (spec.get("negate", False), spec.get("max_lines", 500),
                                  spec.get("timeout", 5))
    if not isinstance(negate, bool):
        raise ValueError(f"multiline.negate: must be true or false, got {_js(negate)}")
    if isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 1:
        raise ValueError(f"multiline.max_lines: must be an integer >= 1, got {_js(max_lines)}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"multiline.timeout: must be a number of seconds > 0, got {_js(timeout)}")
    return Multiline(pattern, negate, _choice(spec, "match", MULTILINE_MATCH, "multiline.match"),
                     max_lines, float(timeout))


def _choice(entry: dict, name: str, choices: tuple[str, ...], where: str = "") -> str:
    value = entry.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{where or name}: must be one of {', '.join(choices)}, "
                         f"got {_js(value)}")
    return value


def _regexes(entry: dict, name: str) -> tuple[str, ...]:
    """Compiled here once to refuse a bad one with its entry; the worker compiles again."""
    patterns = entry.get(name, [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name}: must be a list of regular expressions, got {_js(patterns)}")
    for index, pattern in enumerate(patterns):
        _check_regex(pattern, f"{name}[{index}]")
    return tuple(patterns)


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regular expression {_js(pattern)}: {exc}") from None


def _constant_fields(fields: Any) -> tuple[tuple[str, str | int | float | bool], ...]:
    if not isinstance(fields, dict):
        raise ValueError(f"fields: must be an object of constant fields, got {_js(fields)}")
    for name, value in fields.items():
        if name in RESERVED_FIELDS or not name:
            raise ValueError(f"fields: {_js(name)} is a field of every record; pick another name")
        if not isinstance(value, (str, int, float, bool)) or isinstance(value, HugeNumber):
            raise ValueError(f"fields.{shown(name)}: must be a string, number or boolean, "
                             f"got {_js(value)}")
    return tuple(sorted(fields.items()))


def _json_type(value: Any) -> str:
    """A parsed JSON value's type by its JSON name (object, not dict)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number", HugeNumber: "number"}
    return names.get(type(value), type(value).__name__)


def real_path_allowed(real: str, allowed: Iterable[str]) -> bool:
    return any(compile_glob(glob).fullmatch(real) for glob in allowed)


def check_allowed(target: Target, allowed: Iterable[str]) -> None:
    """Refuse early what is outside allowed_paths now. Only advisory: the name may point
    elsewhere by the time it is opened, so the worker judges the opened descriptor again.
    A glob is refused when no file under its directory could be allowed; each file it
    matches is judged by itself. A journal entry's directory is judged like a path; the
    system's journal (no directory) is journald's, not a file an entry could name."""
    if target.journal is not None:
        if target.journal.directory is not None:
            _check_directory_allowed(target.journal.directory, allowed)
        return
    if target.is_glob:
        _check_glob_allowed(target.path, allowed)
        return
    try:
        real = os.path.realpath(target.path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"path: {shown(target.path)}: cannot resolve: {exc}") from None
    if not real_path_allowed(real, allowed):
        raise ValueError(f"path: {shown(target.path)} (real path {shown(real)}) "
                         f"is outside allowed_paths")


def _check_directory_allowed(directory: str, allowed: Iterable[str]) -> None:
    """Every journal file in it must be allowed: the directory as a path, or its files."""
    real = os.path.realpath(directory)
    if not (real_path_allowed(real, allowed)
            or real_path_allowed(os.path.join(real, "x.journal"), allowed)):
        raise ValueError(f"journal.directory: {shown(directory)} (real path {shown(real)}) "
                         f"is outside allowed_paths")


def _check_glob_allowed(pattern: str, allowed: Iterable[str]) -> None:
    base = glob_root(pattern).base
    real = os.path.realpath(base)
    if not any(may_overlap(real, glob) for glob in allowed):
        raise ValueError(f"path: {shown(pattern)}: no file under {shown(real)} can be inside "
                         f"allowed_paths")


def parse_value(raw: bytes | str, allowed: Iterable[str]) -> ParsedValue:
    """Parse an etcd value; raises SpecError when the whole value must be refused."""
    try:
        data = json.loads(raw, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"value is not valid JSON: {shown(str(exc))}") from None
    if not isinstance(data, list):
        raise SpecError(f"value must be a JSON array of entries, got {_json_type(data)}")
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
