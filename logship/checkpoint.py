"""Read offsets that Kafka has acknowledged, per file identity, saved atomically.

Workers publish a FileCheckpoint only for offsets up to which every line was
acknowledged. A writer thread saves the whole store when something changed: temp file,
fsync, rename, fsync of the directory. A crash at any point leaves either the old or
the new file, never a torn one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from logship.errors import ConfigError
from logship.supervisor import Service

log = logging.getLogger(__name__)

FILE_NAME = "checkpoints.json"
LOCK_NAME = "lock"
STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
EXPIRE_INTERVAL = 60.0
CLOSED_KEPT = 10_000


@dataclass(frozen=True)
class FileCheckpoint:
    """Where a follower stands: a file's identity, fingerprint and byte offset, or for a
    journal entry (dev 0, ino a hash of its name) the cursor of the last entry
    acknowledged and the entries acknowledged since its first start as its offset."""

    path: str
    topic: str
    dev: int
    ino: int
    fp_len: int
    fp: str
    offset: int
    cursor: str = ""

    def as_dict(self) -> dict:
        """Without an empty cursor: a file's checkpoint stays readable by older agents."""
        data = vars(self)
        if not self.cursor:
            data = {name: value for name, value in data.items() if name != "cursor"}
        return data

    @property
    def target(self) -> tuple[str, str]:
        return (self.topic, self.path)

    @property
    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)


class CheckpointStore:
    """In-memory offsets shared by workers (one update per acknowledged batch)."""

    def __init__(self, state_dir: Path, on_save_error: Callable[[], None] = lambda: None) -> None:
        self.file = state_dir / FILE_NAME
        self.save_error: str | None = None
        self._on_save_error = on_save_error
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        # (topic, path) -> (dev, ino) -> checkpoint: a worker's start looks up its own
        # files without scanning those of thousands of others.
        self._entries: dict[tuple[str, str], dict[tuple[int, int], FileCheckpoint]] = {}
        # (topic, dev, ino) -> paths: which names a file has offsets under, for a glob
        # match that was renamed from another one.
        self._names: dict[tuple[str, int, int], set[str]] = {}
        # Offsets of files closed after a rotation, oldest first: the file may turn up
        # again as a glob match under its new name a moment later. In memory, bounded.
        self._closed: dict[tuple[str, int, int], FileCheckpoint] = {}
        self._started: set[tuple[str, str]] = set()
        self._version = 0
        self._saved_version = 0
        self._saved = threading.Condition()
        self._save_wanted = threading.Event()
        # Told of every file whose offset is dropped, so that exactly-once tombstones its
        # position in Kafka too.
        self.on_forget: Callable[[FileCheckpoint], None] = lambda checkpoint: None

    @property
    def version(self) -> int:
        """Moves with every change of an offset, a file's first or its last."""
        return self._version

    def load(self) -> None:
        """Read the saved offsets; a damaged file is set aside, never fatal."""
        prepare_state_dir(self.file.parent)
        try:
            raw = json.loads(self.file.read_text(encoding="utf-8"))
            entries = [FileCheckpoint(**item) for item in raw["files"]]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            aside = self.file.with_suffix(".corrupt")
            log.error("state file %s is unreadable (%s); moved to %s, starting without offsets",
                      self.file, exc, aside)
            os.replace(self.file, aside)
            return
        with self._lock:
            self._entries, self._names = {}, {}
            for cp in entries:
                self._entries.setdefault(cp.target, {})[cp.identity] = cp
                self._name(cp)
        log.info("loaded %d checkpoints from %s", len(entries), self.file)

    def first_start(self, topic: str, path: str) -> bool:
        """True the first time a target starts in this process (read_from applies then)."""
        with self._lock:
            first = (topic, path) not in self._started
            self._started.add((topic, path))
            return first

    def for_target(self, topic: str, path: str) -> list[FileCheckpoint]:
        with self._lock:
            return list(self._entries.get((topic, path), {}).values())

    def has_match(self, topic: str, matches: Callable[[str], object]) -> bool:
        """Whether a file of the topic whose path `matches` has a saved offset: a glob
        entry that ran before this start. A scan of all, once per glob entry."""
        with self._lock:
            return any(t == topic and matches(path) for t, path in self._entries)

    def same_file(self, topic: str, dev: int, ino: int) -> list[FileCheckpoint]:
        """The checkpoints of the topic for this file under any name, or the last one of
        it closed: a glob match that is a file renamed from another match resumes where
        that one was, whether its old worker still drains it or has just closed it."""
        with self._lock:
            found = self._same_file(topic, dev, ino)
            closed = self._closed.get((topic, dev, ino))
            return found or ([closed] if closed is not None else [])

    def _same_file(self, topic: str, dev: int, ino: int) -> list[FileCheckpoint]:
        return [self._entries[(topic, path)][(dev, ino)]
                for path in self._names.get((topic, dev, ino), ())]

    def update(self, checkpoint: FileCheckpoint) -> None:
        with self._lock:
            files = self._entries.setdefault(checkpoint.target, {})
            known = files.get(checkpoint.identity)
            if known != checkpoint:
                files[checkpoint.identity] = checkpoint
                self._version += 1
                if known is None:
                    self._name(checkpoint)

    def remove(self, checkpoint: FileCheckpoint) -> None:
        with self._lock:
            removed = self._drop(checkpoint)
            if removed is not None:
                self._remember_closed(removed)
                self._version += 1
        if removed is not None:
            self.on_forget(removed)

    def _drop(self, checkpoint: FileCheckpoint) -> FileCheckpoint | None:
        files = self._entries.get(checkpoint.target, {})
        removed = files.pop(checkpoint.identity, None)
        if removed is not None:
            self._unname(checkpoint)
            if not files:
                del self._entries[checkpoint.target]
        return removed

    def adopt(self, positions: list[FileCheckpoint], finished: set[tuple[str, int, int]]) -> int:
        """Exactly-once: the positions kept in Kafka, over those of state_dir, which may be
        behind them (saved after the commits, or lost). An offset of state_dir that is
        ahead stays: it was acknowledged at least once before exactly-once was switched
        on. A file finished in Kafka is dropped. Returns how many positions were ahead."""
        ahead = 0
        with self._lock:
            for topic, dev, ino in finished:
                for path in list(self._names.get((topic, dev, ino), ())):
                    self._drop(self._entries[(topic, path)][(dev, ino)])
            for position in positions:
                known = self._same_file(position.topic, position.dev, position.ino)
                if any(checkpoint.offset >= position.offset for checkpoint in known):
                    continue
                for checkpoint in known:
                    self._drop(checkpoint)
                self._entries.setdefault(position.target, {})[position.identity] = position
                self._name(position)
                ahead += 1
            self._version += 1
        return ahead

    def expire(self, configured: set[tuple[str, str]]) -> None:
        """Forget files that are gone and whose (topic, path) is no longer configured."""
        with self._lock:
            stale = [target for target in self._entries
                     if target not in configured and not os.path.exists(target[1])]
            forgotten = [cp for target in stale for cp in self._entries.pop(target).values()]
            for cp in forgotten:
                self._unname(cp)
            self._version += bool(stale)
        for cp in forgotten:
            self.on_forget(cp)

    def _name(self, cp: FileCheckpoint) -> None:
        self._names.setdefault((cp.topic, cp.dev, cp.ino), set()).add(cp.path)

    def _remember_closed(self, cp: FileCheckpoint) -> None:
        key = (cp.topic, cp.dev, cp.ino)
        self._closed.pop(key, None)
        self._closed[key] = cp
        if len(self._closed) > CLOSED_KEPT:
            del self._closed[next(iter(self._closed))]

    def _unname(self, cp: FileCheckpoint) -> None:
        key = (cp.topic, cp.dev, cp.ino)
        names = self._names.get(key, set())
        names.discard(cp.path)
        if not names:
            self._names.pop(key, None)

    def sync(self, timeout: float) -> bool:
        """Wait until what was published so far is on disk, written by the writer thread:
        it saves at once for whoever waits, so that many workers opening files at the
        same time share one write of the whole store instead of one each (10,000 workers
        starting would write 10,000 offsets 10,000 times). False after `timeout`."""
        with self._lock:
            version = self._version
        with self._saved:
            self._save_wanted.set()
            return self._saved.wait_for(lambda: self._saved_version >= version, timeout)

    def wait_for_save(self, timeout: float) -> None:
        """The writer's wait: `timeout`, or less when a sync() is waiting."""
        self._save_wanted.wait(timeout)
        self._save_wanted.clear()

    def wake_writer(self) -> None:
        self._save_wanted.set()

    def save(self) -> None:
        """Write if anything changed since the last save; safe from any thread. A failure
        (disk full) keeps everything in memory and is retried at the next save; it is
        logged when it starts and when it ends, and /healthz reports it meanwhile."""
        try:
            self._save()
        except OSError as exc:
            self._on_save_error()
            if self.save_error is None:
                log.error("cannot save checkpoints to %s: %s; retrying every save, offsets "
                          "are kept in memory", self.file, exc.strerror or exc)
            self.save_error = f"cannot save checkpoints to {self.file}: {exc.strerror or exc}"
            return
        if self.save_error is not None:
            log.info("checkpoints saved to %s again", self.file)
            self.save_error = None

    def _save(self) -> None:
        with self._save_lock:
            with self._lock:
                version = self._version
                if version == self._saved_version:
                    return
                data = {"version": 1, "files": [cp.as_dict() for files in self._entries.values()
                                                for cp in files.values()]}
                # json's C encoder (no indent): thousands of files are saved in milliseconds
                text = json.dumps(data)
            _write_atomically(self.file, text.encode())
            with self._saved:
                self._saved_version = version
                self._saved.notify_all()


class StateLock:
    """One agent per state_dir, like Filebeat's data path lock: a second agent on the same
    offsets would ship every line again. flock dies with the process, kill -9 included."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"state_dir {self.path.parent}: in use by another logship agent "
                              f"(pid {holder}); stop it, or give this one a state_dir of its "
                              f"own") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def prepare_state_dir(state_dir: Path) -> None:
    """state_dir lists every shipped path: 0700, like Filebeat's data path. An existing
    directory of ours that is looser is tightened (said once, in the log). A file is
    written and removed to prove it usable: a state_dir that takes no file would lose
    every offset (permissions say little for root, nothing for procfs)."""
    try:
        state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        st = state_dir.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & ~STATE_DIR_MODE:
            os.chmod(state_dir, STATE_DIR_MODE)
            log.info("state_dir %s: mode tightened from %o to %o", state_dir,
                     stat.S_IMODE(st.st_mode), STATE_DIR_MODE)
        _probe_writable(state_dir)
    except OSError as exc:
        raise _unusable(state_dir, exc) from None


def check_state_dir(state_dir: Path) -> None:
    """`logship check`: whether the agent could prepare state_dir, changing nothing. A
    directory that does not exist yet is judged by its nearest existing parent, where
    the agent would create it."""
    existing = next(p for p in (state_dir, *state_dir.parents) if os.path.lexists(p))
    try:
        _probe_writable(existing)
    except OSError as exc:
        raise _unusable(state_dir, exc) from None


def _probe_writable(directory: Path) -> None:
    """Create and remove a file: nothing is left behind."""
    probe = directory / f".write-test-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     STATE_FILE_MODE))
    probe.unlink()


def _unusable(state_dir: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"state_dir {state_dir}: cannot be created or used: {exc.strerror}")


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, STATE_FILE_MODE)
    with open(fd, "wb") as handle:
        os.fchmod(fd, STATE_FILE_MODE)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointWriter(Service):
    """Saves the store on a timer, batching many acknowledgements into one write, and at
    once when a worker waits for its opened offsets to be saved."""

    def __init__(self, store: CheckpointStore, interval: float,
                 configured: Callable[[], set[tuple[str, str]] | None]) -> None:
        super().__init__(name="checkpoint-writer")
        self._store = store
        self._interval = interval
        self._configured = configured

    def stop(self) -> None:
        super().stop()
        self._store.wake_writer()

    def serve(self) -> None:
        expired = time.monotonic()
        while not self.stopping.is_set():
            self._store.wait_for_save(self._interval)
            if time.monotonic() - expired >= EXPIRE_INTERVAL:
                expired = time.monotonic()
                self.expire()
            self._store.save()

    def flush(self) -> None:
        self.expire()
        self._store.save()

    def expire(self) -> None:
        """Rare on purpose: it looks at every target, and nothing waits for it."""
        configured = self._configured()
        if configured is not None:
            self._store.expire(configured)
