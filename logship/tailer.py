"""`tail -F` by name, as pure file logic: no threads, no Kafka, no clocks of its own.

A Tailer follows one path. The file currently under the name is `current`; a file that
was renamed away or deleted stays in `rotated` and keeps being read (a writer may still
append through its old descriptor) until it has been quiet long enough and all of its
lines are acknowledged. Every open file tracks `offset`, the start of its first
unfinished line, so a saved offset never points into the middle of a line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Iterable, Iterator

from logship.checkpoint import FileCheckpoint
from logship.errors import SourceError
from logship.logs import shown
from logship.spec import real_path_allowed

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 1024
NAME_CHECK_INTERVAL = 0.2
_TAIL_SCAN = 64 * 1024


@dataclass(frozen=True)
class Opened:
    """A descriptor as open_checked judged it: its stat and its real path are reused,
    not asked for again (each system call hands the GIL over, which many threads make
    costly)."""

    fd: int
    st: os.stat_result
    real: str


@dataclass
class Chunk:
    """Complete lines read in one go; offsets are the file offsets of their first bytes."""

    file: FollowedFile
    lines: list[bytes]
    offsets: list[int]
    end_offset: int
    truncated: int = 0


class FollowedFile:
    """One open descriptor, its identity (device, inode, fingerprint) and read position."""

    def __init__(self, path: str, opened: Opened, offset: int, now: float) -> None:
        st = opened.st
        self.path = path
        self.fd = fd = opened.fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.offset = offset
        self.acked_offset = offset
        self.read_pos = offset
        self.last_data = now
        self.skipping = False
        self._partial = b""
        self.fp_len, self.fp = fingerprint(fd, st.st_size)
        self.by_name = opened.real == _resolved(path)
        self.linked = st.st_nlink > 1

    @property
    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def checkpoint(self, topic: str) -> FileCheckpoint:
        if self.fp_len < FINGERPRINT_BYTES and self.acked_offset > self.fp_len:
            self.fp_len, self.fp = fingerprint(self.fd, self.acked_offset)
        return FileCheckpoint(self.path, topic, self.dev, self.ino, self.fp_len, self.fp,
                              self.acked_offset)

    def position(self, topic: str, offset: int) -> FileCheckpoint:
        """The file at `offset`, ahead of acknowledgement: the fingerprint as known, no
        read (once per batch sent)."""
        return FileCheckpoint(self.path, topic, self.dev, self.ino, self.fp_len, self.fp, offset)

    def read(self, size: int, max_line: int, now: float) -> Chunk | None:
        """Read up to `size` bytes; None at end of file, else a (maybe empty) Chunk."""
        data = os.pread(self.fd, size, self.read_pos)
        if not data:
            return None
        self.last_data = now
        start = self.read_pos
        self.read_pos += len(data)
        if self.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return Chunk(self, [], [], self.offset)
            self.skipping = False
            data = data[newline + 1:]
            self.offset = start + newline + 1
        buf = self._partial + data if self._partial else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            return self._hold_partial(buf, max_line)
        self._partial = buf[cut + 1:]
        raw = buf[:cut].split(b"\n")
        offsets = list(accumulate((len(line) + 1 for line in raw), initial=self.offset))
        offsets.pop()
        self.offset += cut + 1
        lines = [line[:-1] if line.endswith(b"\r") else line for line in raw] \
            if b"\r" in buf else raw
        truncated = 0
        if cut > max_line:
            truncated = sum(1 for line in lines if len(line) > max_line)
            if truncated:
                lines = [line[:max_line] for line in lines]
        return Chunk(self, lines, offsets, self.offset, truncated)

    def _hold_partial(self, buf: bytes, max_line: int) -> Chunk:
        """Keep an unfinished line; one longer than max_line ships its head, the rest is skipped."""
        if len(buf) <= max_line:
            self._partial = buf
            return Chunk(self, [], [], self.offset)
        self._partial = b""
        self.skipping = True
        return Chunk(self, [buf[:max_line]], [self.offset], self.offset, truncated=1)

    def resume_at(self, offset: int) -> None:
        """Read again from `offset`, a line boundary acknowledged before (exactly-once:
        what was read after it was sent in a transaction that did not commit)."""
        self.offset = self.acked_offset = self.read_pos = offset
        self._partial = b""
        self.skipping = False

    def rewind(self) -> None:
        """The file was truncated: start over from its beginning."""
        self.offset = self.acked_offset = self.read_pos = 0
        self._partial = b""
        self.skipping = False
        self.fp_len, self.fp = fingerprint(self.fd, os.fstat(self.fd).st_size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def removed(self) -> bool:
        return os.fstat(self.fd).st_nlink == 0

    def close(self) -> None:
        os.close(self.fd)


def open_checked(path: str, allowed: Iterable[str]) -> Opened | None:
    """Open without blocking, then judge what was opened, never the name.

    The name can be swapped (a symlink renamed over it) between any check and the open,
    so the descriptor's own path (/proc/self/fd) is matched against allowed_paths.
    O_NONBLOCK keeps a FIFO from hanging the open. None when nothing is there (any more).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SourceError(f"path={shown(path)}: cannot open: {exc.strerror}") from None
    try:
        return _check_opened(path, fd, allowed)
    except BaseException:
        os.close(fd)
        raise


def _check_opened(path: str, fd: int, allowed: Iterable[str]) -> Opened:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"path={shown(path)}: not a regular file")
    real = os.readlink(f"/proc/self/fd/{fd}")
    if not real_path_allowed(real, allowed):
        raise SourceError(f"path={shown(path)}: real path {shown(real)} is outside allowed_paths")
    _refuse_pseudo_file(path, fd, st.st_size)
    return Opened(fd, st, real)


def _refuse_pseudo_file(path: str, fd: int, size: int) -> None:
    """procfs and sysfs files report a size that reading does not reach: at their stated
    end there is still data, and stat again says the same size. Followed, they would look
    truncated at every read and ship their content in an endless loop."""
    if os.pread(fd, 1, size) and os.fstat(fd).st_size <= size:
        raise SourceError(f"path={shown(path)}: its size does not grow as it is read "
                          f"(procfs or sysfs?); not a log file")


def fingerprint(fd: int, size: int) -> tuple[int, str]:
    """Hash of the first bytes: tells a new file that reuses an inode from the old one."""
    length = min(size, FINGERPRINT_BYTES)
    head = os.pread(fd, length, 0) if length else b""
    return len(head), hashlib.blake2b(head, digest_size=8).hexdigest()


def _resolved(path: str) -> str:
    """The path with its directory's symlinks resolved, but not the last component's."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(directory), name)


def _matches(opened: Opened, saved: FileCheckpoint) -> bool:
    st = opened.st
    if (st.st_dev, st.st_ino) != (saved.dev, saved.ino) or st.st_size < saved.offset:
        return False
    return fingerprint(opened.fd, saved.fp_len) == (saved.fp_len, saved.fp)


def _find_by_inode(directory: str, dev: int, ino: int) -> str | None:
    """Where a rotated file went: the directory entry with the saved inode, if any."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.inode() == ino and entry.is_file(follow_symlinks=False) \
                        and entry.stat(follow_symlinks=False).st_dev == dev:
                    return entry.path
    except OSError:
        return None
    return None


def _end_of_last_line(opened: Opened) -> int:
    """Where `read_from: end` starts: after the last newline, so no half line is shipped."""
    size = opened.st.st_size
    start = max(0, size - _TAIL_SCAN)
    tail = os.pread(opened.fd, size - start, start)
    newline = tail.rfind(b"\n")
    return start + newline + 1 if newline >= 0 else (0 if start == 0 else size)


@dataclass
class TailSettings:
    read_chunk_bytes: int
    max_line_bytes: int
    close_rotated_after: float
    close_removed_timeout: float
    allowed_paths: tuple[str, ...] = field(default=())


class Tailer:
    """Follows one path by name; reports what it read, never where to send it."""

    def __init__(self, path: str, settings: TailSettings) -> None:
        self.path = path
        self.settings = settings
        self.current: FollowedFile | None = None
        self.rotated: list[FollowedFile] = []
        self.opened: list[FollowedFile] = []
        self._name_checked = 0.0

    def notified(self) -> bool:
        """Whether inotify on the path's directory reports every change to the open files:
        not while a rotated file drains, nor for a file reached through a symlink, nor for
        one with other hard links (a write through one of them is an event in its own
        directory)."""
        current = self.current
        return not self.rotated and (current is None or current.by_name and not current.linked)

    def take_opened(self) -> list[FollowedFile]:
        """Files opened since the last call: their starting offsets must be saved at once."""
        opened, self.opened = self.opened, []
        return opened

    def files(self) -> list[FollowedFile]:
        return self.rotated + ([self.current] if self.current else [])

    def restore(self, saved: Iterable[FileCheckpoint], read_from: str,
                now: float) -> tuple[list[FileCheckpoint], str]:
        """Reopen the files of saved checkpoints; returns the checkpoints no file matches,
        and where following starts, for the worker's one start line.

        read_from applies only when nothing was saved for this path: with a saved
        checkpoint, a file now under the name is a successor and is read from its start.
        """
        saved = list(saved)
        where: list[str] = []
        stale = [cp for cp in saved if not self._reopen(cp, now, where)]
        if self.current is None:
            at_end = not saved and read_from == "end"
            where.append(self._open_current(now, at_end=at_end)
                         or "does not exist yet; waiting for it")
        return stale, "; ".join(where)

    def _reopen(self, saved: FileCheckpoint, now: float, where: list[str]) -> bool:
        for candidate in self._candidates(saved):
            try:
                opened = open_checked(candidate, self.settings.allowed_paths)
            except SourceError as exc:
                log.warning("%s; not resuming it", exc)
                continue
            if opened is None:
                continue
            if not _matches(opened, saved):
                os.close(opened.fd)
                continue
            followed = FollowedFile(self.path, opened, saved.offset, now)
            if candidate == self.path and self.current is None:
                self.current = followed
                where.append(f"resuming at offset {saved.offset}")
            else:
                self.rotated.append(followed)
                where.append(f"resuming rotated file {shown(candidate)} at offset {saved.offset}")
            return True
        return False

    def _candidates(self, saved: FileCheckpoint) -> Iterator[str]:
        """The name first; the directory is scanned only when the name holds another file."""
        yield self.path
        found = _find_by_inode(os.path.dirname(self.path), saved.dev, saved.ino)
        if found is not None:
            yield found

    def read(self, now: float) -> Chunk | None:
        """The next chunk from rotated files first, then the current one; None when idle."""
        size, max_line = self.settings.read_chunk_bytes, self.settings.max_line_bytes
        self.watch_name(now)
        for followed in self.files():
            chunk = followed.read(size, max_line, now)
            if chunk is not None:
                return chunk
        if self._follow_name(now):
            return self.read(now)
        return None

    def watch_name(self, now: float) -> None:
        """Look at the name a few times a second even while catching up: a reader slower
        than the writer must still see every rotation happen, or the files renamed away
        in between would never be opened."""
        if now - self._name_checked >= NAME_CHECK_INTERVAL:
            self._name_checked = now
            self._follow_name(now)

    def _follow_name(self, now: float) -> bool:
        """At end of file: look at the name again. True when there is something new to read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._retire_current("removed or renamed away")
            return False
        except OSError as exc:
            raise SourceError(f"path={shown(self.path)}: cannot stat: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"path={shown(self.path)}: not a regular file")
        current = self.current
        if current is not None and current.identity == (st.st_dev, st.st_ino):
            current.linked = st.st_nlink > 1
            if st.st_size < current.read_pos:
                _refuse_pseudo_file(self.path, current.fd, st.st_size)
                log.warning("path=%s truncated (size %d < offset %d); reading from the start",
                            self.path, st.st_size, current.read_pos)
                current.rewind()
                return True
            return False
        if any(f.identity == (st.st_dev, st.st_ino) for f in self.rotated):
            return False
        self._retire_current("rotated")
        opened = self._open_current(now, at_end=False)
        if opened is not None:
            log.info("path=%s %s", self.path, opened)
        return opened is not None

    def _retire_current(self, why: str) -> None:
        if self.current is not None:
            log.info("path=%s %s; draining the old file", self.path, why)
            self.rotated.append(self.current)
            self.current = None

    def _open_current(self, now: float, at_end: bool) -> str | None:
        """Open the file under the name; says where it starts, None when there is none."""
        opened = open_checked(self.path, self.settings.allowed_paths)
        if opened is None:
            return None
        offset = _end_of_last_line(opened) if at_end else 0
        self.current = FollowedFile(self.path, opened, offset, now)
        self.opened.append(self.current)
        if offset:
            return (f"opened at offset {offset} (read_from: end; the {offset} bytes already "
                    f"there are not shipped)")
        return "opened at offset 0"

    def closable(self, now: float) -> list[FollowedFile]:
        """Rotated files done with: quiet, at their end, and acknowledged (or timed out)."""
        done = []
        for followed in self.rotated:
            quiet = now - followed.last_data
            if quiet < self.settings.close_rotated_after or followed.size() > followed.read_pos:
                continue
            acked = followed.acked_offset >= followed.offset
            if acked or quiet >= self.settings.close_removed_timeout:
                done.append(followed)
        return done

    def close_file(self, followed: FollowedFile) -> None:
        if followed.acked_offset < followed.offset:
            log.error("path=%s closing a rotated file with unacknowledged lines after %.0fs",
                      self.path, self.settings.close_removed_timeout)
        self.rotated.remove(followed)
        followed.close()

    def close(self) -> None:
        for followed in self.files():
            followed.close()
        self.rotated.clear()
        self.current = None
