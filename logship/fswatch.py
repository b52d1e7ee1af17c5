"""The only importer of watchdog: one Observer for the agent, directories watched by name.

Files are followed by name, so we watch their directory (a watch on the file itself
would stay on the old inode after a rotation); a directory that does not exist yet is
watched once it appears. Events are only a hint to read now. On a local filesystem the
kernel reports every write but can drop events when its queue overflows: watchdog then
says so in its log, and the agent sweeps every idle file at once (a stat each) and wakes
those that changed. On any other filesystem (NFS, FUSE, ...: another host writes
unseen) the idle files are swept every files.safety_poll_interval.

Glob entries watch a directory tree for names that come and go (never for writes,
which the kernel then does not even report): a separate watch per (directory,
recursive), shared by the globs that need it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileCreatedEvent,
                             FileDeletedEvent, FileModifiedEvent, FileMovedEvent,
                             FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from logship.logs import plural

log = logging.getLogger(__name__)

Wake = Callable[[], None]
# What changes a followed name: writes, truncation, creation, deletion, renames. Opens and
# closes are left out in the kernel (reacting to them would loop on our own reads), and so
# is every other event a busy log directory would make the watchdog thread decode.
_EVENTS = [FileModifiedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent, DirDeletedEvent]
# What changes the set of names under a tree.
_TREE_EVENTS = [FileCreatedEvent, FileDeletedEvent, FileMovedEvent, DirCreatedEvent,
                DirDeletedEvent, DirMovedEvent]


FileState = tuple[int, int, int]     # (st_dev, st_ino, st_size)
MISSING: FileState = (0, 0, -1)

# Filesystems whose every write goes through this host's kernel, which reports it to
# inotify. Unknown ones count as remote: their directories are swept.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs",
                               "jfs", "reiserfs", "bcachefs", "nilfs2"})
# watchdog 7.1 handles an inotify queue overflow inside its reader thread and tells only
# its log, with this message, under this logger.
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
OVERFLOW_MESSAGE = "Inotify queue overflowed"


@dataclass(eq=False)
class Subscription:
    directory: str
    name: str
    wake: Wake
    watched: bool = False
    # What the subscriber last saw of its file when it went idle; the sweep wakes it when
    # the file under the name differs. None: not swept (it polls by itself, or is no file).
    idle_state: FileState | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.name)


@dataclass(eq=False)
class TreeSubscription:
    directory: str
    recursive: bool
    changed: Wake
    alive: bool = True      # False once the directory itself was deleted: watch it again

    @property
    def tree(self) -> tuple[str, bool]:
        return (self.directory, self.recursive)


class _TreeHandler(FileSystemEventHandler):
    def __init__(self, watcher: DirWatcher, tree: tuple[str, bool]) -> None:
        self._watcher = watcher
        self._tree = tree

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher.tree_changed(self._tree, isinstance(event, DirDeletedEvent)
                                   and event.src_path == self._tree[0])


class _DirHandler(FileSystemEventHandler):
    def __init__(self, watcher: DirWatcher, directory: str) -> None:
        self._watcher = watcher
        self._directory = directory

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirDeletedEvent) and event.src_path == self._directory:
            self._watcher.lost(self._directory)
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self._watcher.notify(self._directory, os.path.basename(os.fsdecode(path)))


class _OverflowListener(logging.Handler):
    def __init__(self, overflowed: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._overflowed = overflowed

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(OVERFLOW_MESSAGE):
            self._overflowed()


class DirWatcher:
    def __init__(self) -> None:
        self._observer = Observer()
        self._lock = threading.Lock()
        # Copy-on-write under _lock, read without it: notify() runs on watchdog's thread
        # while it holds the observer's lock, which schedule() needs too.
        self._subs: dict[str, dict[str, frozenset[Subscription]]] = {}
        self._watches: dict[str, ObservedWatch] = {}
        self._lost: set[str] = set()
        self._failed: dict[str, str] = {}       # directory -> why it cannot be watched
        self._trees: dict[tuple[str, bool], frozenset[TreeSubscription]] = {}
        self._tree_watches: dict[tuple[str, bool], ObservedWatch] = {}
        self._lost_trees: set[tuple[str, bool]] = set()
        # Watched directories on a local filesystem, reached without a symlink, and their
        # (st_dev, st_ino) when watched (changed under _lock; the sweep only looks names
        # up): inotify reports every change there while the name still leads to that
        # directory, and only an overflow makes them worth a sweep.
        self._local: dict[str, tuple[int, int]] = {}
        # st_dev -> its type, for the directories watched between two sweeps (a device
        # number can come back with another mount).
        self._filesystems: dict[int, str | None] = {}
        self._overflow_listener = _OverflowListener(self._overflowed)
        # Events on followed names, counted on watchdog's thread only: a status that has
        # not seen this move knows no followed file changed (cheap beside a stat each).
        self.changes = 0
        self.overflowed = False     # since the last sweep: the next one looks at everything

    def start(self) -> None:
        overflows = logging.getLogger(OVERFLOW_LOGGER)
        if not overflows.isEnabledFor(logging.WARNING):
            overflows.setLevel(logging.WARNING)     # needed whatever the agent's log level
        overflows.addHandler(self._overflow_listener)
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(5)
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self._overflow_listener)

    def _overflowed(self) -> None:
        """On watchdog's thread: the kernel dropped events, of any watched directory."""
        self.overflowed = True

    def subscribe(self, path: str, wake: Wake) -> Subscription:
        directory, name = os.path.split(os.path.abspath(path))
        sub = Subscription(directory, name, wake)
        with self._lock:
            self._set_subs(directory, name, self._names(directory).get(name, frozenset()) | {sub})
        self.ensure_watched(sub)
        return sub

    def ensure_watched(self, sub: Subscription) -> None:
        """Watch the directory if it exists now; cheap to call on every safety poll."""
        if sub.watched:
            return
        with self._lock:
            self._drop_lost()
            if sub.directory not in self._watches and os.path.isdir(sub.directory):
                try:
                    handler = _DirHandler(self, sub.directory)
                    self._watches[sub.directory] = self._observer.schedule(
                        handler, sub.directory, event_filter=_EVENTS)
                except OSError as exc:
                    self._unwatchable(sub.directory, exc)
                    return
                self._failed.pop(sub.directory, None)
                identity = self._local_identity(sub.directory)
                if identity is not None:
                    self._local[sub.directory] = identity
            sub.watched = sub.directory in self._watches and sub.directory not in self._lost

    def _local_identity(self, directory: str) -> tuple[int, int] | None:
        """The directory's identity if inotify will see every change in it: on a local
        filesystem, and not behind a symlink (the watch would be on the link itself, and
        the link can be pointed elsewhere)."""
        identity = directory_identity(directory)
        if identity is None or os.path.realpath(directory) != directory:
            return None
        dev = identity[0]
        if dev not in self._filesystems:
            self._filesystems[dev] = filesystem(dev)
        return identity if self._filesystems[dev] in LOCAL_FILESYSTEMS else None

    def _unwatchable(self, directory: str, exc: OSError) -> None:
        """Said once per directory and cause: every worker in it asks again at each poll."""
        reason = watch_failure(exc)
        if self._failed.get(directory) != reason:
            self._failed[directory] = reason
            log.warning("dir=%s cannot be watched (%s); its files are looked at every "
                        "files.poll_interval instead", directory, reason)

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._set_subs(sub.directory, sub.name,
                           self._names(sub.directory).get(sub.name, frozenset()) - {sub})
            if sub.directory in self._subs:
                return
            watch = self._watches.pop(sub.directory, None)
            self._local.pop(sub.directory, None)
        if watch is not None:
            self._unschedule(watch)

    def watch_tree(self, directory: str, recursive: bool, changed: Wake) -> TreeSubscription:
        """Call `changed` (on watchdog's thread) when a name under the directory comes or
        goes. Raises OSError when the directory cannot be watched."""
        sub = TreeSubscription(directory, recursive, changed)
        with self._lock:
            if sub.tree in self._lost_trees:
                self._lost_trees.discard(sub.tree)
                lost = self._tree_watches.pop(sub.tree, None)
                if lost is not None:
                    self._unschedule(lost)
            if sub.tree not in self._tree_watches:
                self._tree_watches[sub.tree] = self._observer.schedule(
                    _TreeHandler(self, sub.tree), directory, recursive=recursive,
                    event_filter=_TREE_EVENTS)
            self._trees = {**self._trees, sub.tree: self._trees.get(sub.tree, frozenset()) | {sub}}
        return sub

    def unwatch_tree(self, sub: TreeSubscription) -> None:
        with self._lock:
            subs = self._trees.get(sub.tree, frozenset()) - {sub}
            self._trees = {**self._trees, sub.tree: subs} if subs else \
                {tree: s for tree, s in self._trees.items() if tree != sub.tree}
            watch = None if subs else self._tree_watches.pop(sub.tree, None)
            if not subs:
                self._lost_trees.discard(sub.tree)
        if watch is not None:
            self._unschedule(watch)

    def tree_changed(self, tree: tuple[str, bool], lost: bool) -> None:
        """On watchdog's thread: only marks a lost tree, to be watched again by its owners."""
        if lost:
            self._lost_trees.add(tree)
        for sub in self._trees.get(tree, ()):
            sub.alive = sub.alive and not lost
            sub.changed()

    def sweep(self) -> None:
        """The safety net for events never made (NFS: another host's writes) or lost (an
        inotify queue overflow): one stat per idle file, on the caller's thread, relative
        to its directory opened once (no path walk per file), and only the subscribers
        whose file changed are woken (a wake of a thread costs far more than a stat).
        Directories on a local filesystem are left out unless an overflow came since the
        last sweep, or their name leads to another directory now: ten thousand idle files
        there cost one stat per directory."""
        everything, self.overflowed = self.overflowed, False
        self._filesystems = {}
        local: dict[str, tuple[int, int]] = {} if everything else self._local
        looked = woken = 0
        for directory, names in self._subs.items():
            identity = local.get(directory)
            if identity is not None and directory_identity(directory) == identity:
                continue
            if identity is not None:
                self.lost(directory)        # renamed away or replaced: watch the new one
            counts = _sweep_directory(directory, names)
            looked, woken = looked + counts[0], woken + counts[1]
        if everything:
            log.warning("inotify queue overflowed, events were lost: %s looked at, %d had "
                        "changed; raise sysctl fs.inotify.max_queued_events (now %s)",
                        plural(looked, "idle file", "idle files"), woken,
                        sysctl("fs.inotify.max_queued_events"))

    def lost(self, directory: str) -> None:
        """The watched directory itself was deleted, and its watch with it (called on
        watchdog's thread, which holds the observer's lock), or its name leads to another
        directory now (on the sweep's): only mark it, and wake its subscribers so they
        poll until they have watched it again."""
        self._lost.add(directory)
        for subs in self._names(directory).values():
            for sub in subs:
                sub.watched = False
                sub.wake()

    def _drop_lost(self) -> None:
        while self._lost:
            directory = self._lost.pop()
            self._local.pop(directory, None)
            watch = self._watches.pop(directory, None)
            if watch is not None:
                self._unschedule(watch)

    def _names(self, directory: str) -> dict[str, frozenset[Subscription]]:
        return self._subs.get(directory, {})

    def _set_subs(self, directory: str, name: str, subs: frozenset[Subscription]) -> None:
        names = {**self._names(directory), name: subs}
        if not subs:
            del names[name]
        self._subs = {**self._subs, directory: names} if names else \
            {d: n for d, n in self._subs.items() if d != directory}

    def _unschedule(self, watch: ObservedWatch) -> None:
        try:
            self._observer.unschedule(watch)
        except (KeyError, OSError):
            pass

    def notify(self, directory: str, name: str) -> None:
        subs = self._names(directory).get(name, ())
        if subs:
            self.changes += 1
        for sub in subs:
            sub.wake()


LIMITS = {errno.ENOSPC: "fs.inotify.max_user_watches",
          errno.EMFILE: "fs.inotify.max_user_instances"}


def directory_identity(directory: str) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _sweep_directory(directory: str, names: dict[str, frozenset[Subscription]]
                     ) -> tuple[int, int]:
    """(idle files looked at, subscribers woken)."""
    looked = woken = 0
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        dir_fd = None           # gone: every file in it is missing
    try:
        for name, subs in names.items():
            state = None
            for sub in subs:
                if sub.idle_state is not None:
                    if state is None:
                        looked += 1
                        state = file_state(name, dir_fd) if dir_fd is not None else MISSING
                    if state != sub.idle_state:
                        woken += 1
                        sub.wake()
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return looked, woken


def watch_failure(exc: OSError) -> str:
    """Why a directory cannot be watched; a kernel limit is named with its sysctl."""
    name = LIMITS.get(exc.errno)
    if name is None:
        return exc.strerror or str(exc)
    return f"{exc.strerror or exc}: the limit is sysctl {name} (now {sysctl(name)}); raise it"


def sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}") as f:
            return f.read().strip()
    except OSError:
        return "?"


def filesystem(dev: int) -> str | None:
    """The type of the filesystem on device `dev`, from this process's mount table (a
    bind mount has its source's type); None when no mount has that device."""
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[2] == wanted and "-" in fields:
                    return fields[fields.index("-") + 1]
    except OSError:
        pass
    return None


def file_state(path: str, dir_fd: int | None = None) -> FileState:
    try:
        st = os.stat(path, dir_fd=dir_fd)
    except OSError:
        return MISSING
    return (st.st_dev, st.st_ino, st.st_size)
