"""The one glob dialect of logship, for `allowed_paths` and for entry paths alike.

`*` and `?` stay within one path component, `[...]` is a character class (`[!...]`
negates it), and `**` spans any number of directories: `/var/log/**/*.log` matches
`/var/log/a.log` and `/var/log/x/y/a.log`. Matching is on the whole path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

_WILDCARD = re.compile(r"[*?\[]")


def is_glob(path: str) -> bool:
    return _WILDCARD.search(path) is not None


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Raises ValueError for a character class that is not a valid one (`[z-a]`)."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("/**/", i):
            parts.append("/(?:.*/)?")
            i += 4
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := _class_end(pattern, i)) > 0:
            parts.append(_char_class(pattern[i + 1:end]))
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    try:
        return re.compile("".join(parts))
    except re.error as exc:
        raise ValueError(f"invalid glob {pattern!r}: {exc}") from None


def _class_end(pattern: str, start: int) -> int:
    """Where the class opened at `start` closes (a `]` first in it is literal); -1 when it
    does not, and the `[` is then a plain character."""
    i = start + 1
    if pattern[i:i + 1] in ("!", "^"):
        i += 1
    if pattern[i:i + 1] == "]":
        i += 1
    return pattern.find("]", i)


def _char_class(body: str) -> str:
    negate = body[:1] in ("!", "^")
    chars = "".join(c if c == "-" else re.escape(c) for c in (body[1:] if negate else body))
    return f"[^/{chars}]" if negate else f"(?!/)[{chars}]"


@dataclass(frozen=True)
class GlobRoot:
    """Where a glob's matches can be: under `base` (no wildcard in it), at most `depth`
    components below it (None: any depth, for `**`)."""

    base: str
    depth: int | None

    @property
    def recursive(self) -> bool:
        """Whether matches can lie in subdirectories, which must then be watched too."""
        return self.depth is None or self.depth > 1


def glob_root(pattern: str) -> GlobRoot:
    components = pattern.split("/")
    first = next(i for i, part in enumerate(components) if is_glob(part))
    base = "/".join(components[:first]) or "/"
    depth = None if "**" in pattern else len(components) - first
    return GlobRoot(base, depth)


def literal_prefix(pattern: str) -> str:
    """The pattern up to its first wildcard: every match starts with it."""
    match = _WILDCARD.search(pattern)
    return pattern if match is None else pattern[:match.start()]


def may_overlap(directory: str, allowed: str) -> bool:
    """Whether a file under `directory` could match the allowed glob: their fixed parts
    must not diverge."""
    prefix, inside = literal_prefix(allowed), directory.rstrip("/") + "/"
    return prefix.startswith(inside) or inside.startswith(prefix)


def walk_matches(root: GlobRoot, regex: re.Pattern[str]) -> list[str]:
    """Regular files (or symlinks to them) under root that match; symlinked directories
    are not entered (a loop would never end). Unreadable directories are skipped."""
    found, stack = [], [(root.base, 1)]
    while stack:
        directory, level = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if root.depth is None or level < root.depth:
                            stack.append((entry.path, level + 1))
                    elif regex.fullmatch(entry.path) and _is_file(entry):
                        found.append(entry.path)
        except OSError:
            continue
    return sorted(found)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False
