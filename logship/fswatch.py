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

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

log = logging.getLogger(__name__)

Wake = Callable[[], None]


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
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self._watcher.notify(self._directory, os.path.basename(os.fsdecode(path)))


class DirWatcher:
    def __init__(self) -> None:
        self._observer = Observer()
        self._lock = threading.Lock()
        self._subs: dict[str, dict[str, set[Subscription]]] = {}
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
            self._subs.setdefault(directory, {}).setdefault(name, set()).add(sub)
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
            names = self._subs.get(sub.directory, {})
            names.get(sub.name, set()).discard(sub)
            if names.get(sub.name) == set():
                del names[sub.name]
            if names:
                return
            self._subs.pop(sub.directory, None)
            watch = self._watches.pop(sub.directory, None)
        if watch is not None:
            self._unschedule(watch)

    def _unschedule(self, watch: ObservedWatch) -> None:
        try:
            self._observer.unschedule(watch)
        except (KeyError, OSError):
            pass

    def notify(self, directory: str, name: str) -> None:
        with self._lock:
            subs = list(self._subs.get(directory, {}).get(name, ()))
        for sub in subs:
            sub.wake()
