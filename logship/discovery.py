"""Glob entries: which files they match now, kept current by inotify, not by a timer.

Filebeat and Fluent Bit scan their globs every few seconds. Here a watch on the glob's
directory tree reports names that come and go (never writes), and only then is the
tree walked again; a walk every files.safety_poll_interval covers events the kernel
dropped. Each match becomes a Target of its own, followed by its own worker.

A file that stops matching (renamed away, deleted) keeps its worker until that worker
holds nothing more, so a rotated file is drained as for a plain path. read_from applies
to the files an entry matches when it is first applied; a file that matches later is a
new file and is read from its beginning, as after a restart of the agent for an entry
whose files have saved offsets.

Everything here runs on the agent's thread, but for the watch callbacks (which only set
a flag) and `matched`, a snapshot the checkpoint writer reads.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from logship.checkpoint import CheckpointStore
from logship.fswatch import DirWatcher, TreeSubscription, watch_failure
from logship.globs import GlobRoot, compile_glob, glob_root, walk_matches
from logship.logs import plural, shown
from logship.spec import Target, real_path_allowed

log = logging.getLogger(__name__)

Holds = Callable[[Target], bool]
TargetId = tuple[str, str]


@dataclass(eq=False)
class _Glob:
    entry: Target
    root: GlobRoot
    regex: re.Pattern[str]
    matches: dict[str, Target] = field(default_factory=dict)    # by path, leaving ones too
    leaving: set[str] = field(default_factory=set)              # no longer match; draining
    refused: set[str] = field(default_factory=set)              # outside allowed_paths, said so
    scanned: bool = False
    dirty: bool = True
    watch: TreeSubscription | None = None
    watch_error: str | None = None
    unfollowed: int = 0                                         # over files.max_files, said so

    def __str__(self) -> str:
        return f"glob={self.entry.path} topic={self.entry.topic}"


class Discovery:
    def __init__(self, watcher: DirWatcher, store: CheckpointStore,
                 allowed_paths: tuple[str, ...], wake: Callable[[], None]) -> None:
        self._watcher = watcher
        self._store = store
        self._allowed = allowed_paths
        self._wake = wake
        self._globs: dict[Target, _Glob] = {}
        self.matched: frozenset[tuple[str, str]] = frozenset()   # (topic, path), any thread
        self.unfollowed = 0

    def sync(self, entries: Iterable[Target]) -> None:
        """Follow these glob entries (and no others); a new one is walked at the next refresh."""
        wanted = set(entries)
        for entry in [e for e in self._globs if e not in wanted]:
            self._unwatch(self._globs.pop(entry))
        for entry in wanted - set(self._globs):
            self._globs[entry] = _Glob(entry, glob_root(entry.path), compile_glob(entry.path))
        self._publish()

    def rescan_all(self) -> None:
        """The safety net for dropped inotify events."""
        for glob in self._globs.values():
            glob.dirty = True

    def refresh(self, holds: Holds) -> bool:
        """Walk the globs whose trees changed, and let go of the files that no longer match
        once their workers hold nothing; True when the matches changed."""
        changed = False
        for glob in self._globs.values():
            if glob.dirty:
                glob.dirty = False
                self._rewatch(glob)
                changed |= self._scan(glob)
                if self._watching_elsewhere(glob):
                    glob.dirty = True       # never cleared here: an event may have set it
            changed |= self._let_go(glob, holds)
        if changed:
            self._publish()
        return changed

    def targets(self, limit: int, taken: set[TargetId],
                running: set[TargetId]) -> dict[TargetId, Target]:
        """The matches to follow besides the `taken` plain entries, `limit` files in all:
        those already running first, then by path. What is left out is logged per glob and
        counted in `unfollowed`."""
        room = max(limit - len(taken), 0)
        candidates: dict[TargetId, tuple[_Glob, Target]] = {}
        for glob in self._globs.values():
            for target in glob.matches.values():
                if target.id not in taken:
                    candidates.setdefault(target.id, (glob, target))
        order = sorted(candidates, key=lambda tid: (tid not in running, tid))
        chosen = {tid: candidates[tid][1] for tid in order[:room]}
        left_out: dict[_Glob, int] = {}
        for tid in order[room:]:
            glob = candidates[tid][0]
            left_out[glob] = left_out.get(glob, 0) + 1
        for glob in self._globs.values():
            self._report_cap(glob, left_out.get(glob, 0), limit)
        self.unfollowed = len(candidates) - len(chosen)
        return chosen

    def close(self) -> None:
        for glob in self._globs.values():
            self._unwatch(glob)
        self._globs.clear()

    def _changed(self, glob: _Glob) -> None:
        """On watchdog's thread: a name under the tree came or went."""
        glob.dirty = True
        self._wake()

    def _rewatch(self, glob: _Glob) -> None:
        """Watch the glob's base, or while it does not exist its nearest ancestor, for the
        base to appear. The walk comes after, so nothing created before the watch is missed."""
        directory = _existing_ancestor(glob.root.base)
        tree = (directory, glob.root.recursive and directory == glob.root.base)
        if glob.watch is not None and glob.watch.alive and glob.watch.tree == tree:
            return
        self._unwatch(glob)
        try:
            glob.watch = self._watcher.watch_tree(*tree, lambda: self._changed(glob))
        except OSError as exc:
            reason = watch_failure(exc)
            if glob.watch_error != reason:
                log.warning("%s: cannot watch %s (%s); looking for new files every "
                            "files.safety_poll_interval only", glob, directory, reason)
            glob.watch_error = reason
            return
        glob.watch_error = None

    @staticmethod
    def _watching_elsewhere(glob: _Glob) -> bool:
        """A directory on the way to the base appeared after it was watched for: no event
        will say so, so the next refresh watches and walks again."""
        return glob.watch is not None and glob.watch.directory != _existing_ancestor(glob.root.base)

    def _unwatch(self, glob: _Glob) -> None:
        if glob.watch is not None:
            self._watcher.unwatch_tree(glob.watch)
            glob.watch = None

    def _scan(self, glob: _Glob) -> bool:
        found = walk_matches(glob.root, glob.regex)
        present = {path for path in found if path in glob.matches or self._allowed_match(glob, path)}
        glob.refused &= set(found)      # a name that comes back is judged (and said) again
        read_from = self._read_from(glob)
        new = [path for path in found if path in present and path not in glob.matches]
        for path in new:
            glob.matches[path] = glob.entry.matched(path, read_from)
        leaving = set(glob.matches) - present
        gone = leaving - glob.leaving
        glob.leaving = leaving
        if new or gone or not glob.scanned:
            log.info("%s: matching files: %d (%d new, %d no longer matching)", glob,
                     len(present), len(new), len(gone))
        glob.scanned = True
        return bool(new)

    def _read_from(self, glob: _Glob) -> str:
        """The entry's read_from for what it matches when first applied, unless its files
        have saved offsets (the agent restarted): then every file without one is new."""
        entry = glob.entry
        if glob.scanned or self._store.has_match(entry.topic, glob.regex.fullmatch):
            return "beginning"
        return entry.read_from

    def _allowed_match(self, glob: _Glob, path: str) -> bool:
        """Judged on the real path, and said once per name. The worker judges the file it
        opens again, since a name can be swapped for a symlink at any time."""
        real = os.path.realpath(path)
        if real_path_allowed(real, self._allowed):
            return True
        if path not in glob.refused:
            glob.refused.add(path)
            log.error("%s: %s (real path %s) is outside allowed_paths; not followed",
                      glob, shown(path), shown(real))
        return False

    def _let_go(self, glob: _Glob, holds: Holds) -> bool:
        done = [path for path in glob.leaving if not holds(glob.matches[path])]
        for path in done:
            glob.leaving.discard(path)
            del glob.matches[path]
            log.info("%s: path=%s no longer matches and holds nothing more; its worker stops",
                     glob, shown(path))
        return bool(done)

    def _report_cap(self, glob: _Glob, left_out: int, limit: int) -> None:
        if left_out == glob.unfollowed:
            return
        glob.unfollowed = left_out
        if left_out:
            log.error("%s: %s not followed: the agent follows at most files.max_files (%d) "
                      "files", glob, plural(left_out, "matching file", "matching files"), limit)
        else:
            log.info("%s: every matching file is followed again", glob)

    def _publish(self) -> None:
        self.matched = frozenset((glob.entry.topic, path) for glob in self._globs.values()
                                 for path in glob.matches)


def _existing_ancestor(directory: str) -> str:
    while not os.path.isdir(directory) and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
    return directory
