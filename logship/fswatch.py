"""The only importer of watchdog: one Observer for the agent, directories watched by name.

Files are followed by name, so we watch their directory (a watch on the file itself
would stay on the old inode after a rotation). Events are only a hint to read now:
they coalesce and can be lost on queue overflow, so every follower keeps a slow
safety poll, and a directory that does not exist yet is watched once it appears.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

from watchdog.events import (EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_OPENED, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

log = logging.getLogger(__name__)

Wake = Callable[[], None]
# Reading a file (ours included) is no change: reacting would loop on our own reads.
_READ_ONLY = {EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE}


@dataclass(eq=False)
class Subscription:
    directory: str
    name: str
    wake: Wake
    watched: bool = False


class _DirHandler(FileSystemEventHandler):
    def __init__(self, watcher: DirWatcher, directory: str) -> None:
        self._watcher = watcher
        self._directory = directory

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _READ_ONLY:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self._watcher.notify(self._directory, os.path.basename(os.fsdecode(path)))


class DirWatcher:
    def __init__(self) -> None:
        self._observer = Observer()
        self._lock = threading.Lock()
        # Copy-on-write under _lock, read without it: notify() runs on watchdog's thread
        # while it holds the observer's lock, which schedule() needs too.
        self._subs: dict[str, dict[str, frozenset[Subscription]]] = {}
        self._watches: dict[str, ObservedWatch] = {}

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(5)

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
            if sub.directory not in self._watches and os.path.isdir(sub.directory):
                try:
                    handler = _DirHandler(self, sub.directory)
                    self._watches[sub.directory] = self._observer.schedule(handler, sub.directory)
                except OSError as exc:
                    log.warning("dir=%s cannot be watched (%s); relying on polling",
                                sub.directory, exc)
                    return
            sub.watched = sub.directory in self._watches

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._set_subs(sub.directory, sub.name,
                           self._names(sub.directory).get(sub.name, frozenset()) - {sub})
            if sub.directory in self._subs:
                return
            watch = self._watches.pop(sub.directory, None)
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
        for sub in self._names(directory).get(name, ()):
            sub.wake()
