"""One thread per (path, topic): follow the file by name, read lines, send them, move the
offset on acknowledgement.

What it does with Kafka (the books of what is in flight, acknowledgements, refusals) it
shares with every Follower; here is what is a file's own: rotation, truncation, a file
that appears later, multiline events, and the offsets of each file under the name.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Callable

from logship.checkpoint import CheckpointStore, FileCheckpoint
from logship.config import FilesConfig
from logship.follower import DRAIN_TIMEOUT, Follower
from logship.fswatch import MISSING, DirWatcher, Subscription
from logship.ledger import InFlight
from logship.logs import plural
from logship.metrics import Metrics
from logship.processors import Processed, Processor
from logship.sink import Job, Sent, Sink
from logship.spec import Target
from logship.tailer import Chunk, FollowedFile, Tailer, TailSettings

log = logging.getLogger(__name__)

SEND_BATCH = 1000
SAVE_WAIT = 5.0


@dataclass(frozen=True)
class Progress:
    """Where a worker stands, for the status document."""

    state: str          # shipping | waiting (no file yet) | held (Kafka cannot take lines)
    offset: int         # acknowledged, in the file now under the path
    size: int
    lag_bytes: int      # not yet acknowledged, rotated files included
    records_sent: int   # acknowledged since this worker started


class Worker(Follower[FollowedFile]):
    def __init__(self, target: Target, files: FilesConfig, allowed_paths: tuple[str, ...],
                 sink: Sink, store: CheckpointStore, watcher: DirWatcher, metrics: Metrics,
                 keys: Callable[[Target], list[str]]) -> None:
        super().__init__(target, files, sink, metrics, keys)
        self._settings = TailSettings(files.read_chunk_bytes, files.max_line_bytes,
                                      files.close_rotated_after, files.close_removed_timeout,
                                      allowed_paths)
        self._store = store
        self._watcher = watcher
        self._processor = self._new_processor()
        self._queued: Chunk | None = None
        self._queued_at = 0
        self._tailer: Tailer | None = None
        self._truncated = metrics.lines_skipped.labels(target.topic, "truncated")
        self._invalid_json = metrics.invalid_json.labels(target.topic)

    def _new_processor(self) -> Processor | None:
        """Multiline, filters and formats, when the entry asks for any: its state (a held
        event) starts empty."""
        if not Processor.needed(self.target.options):
            return None
        return Processor(self.target, self._sink.host.decode())

    def serve(self) -> None:
        tailer = self._tailer = Tailer(self.target.path, self._settings)
        subscription = self._watcher.subscribe(self.target.path, self._wake.set)
        try:
            opened = self._start_up(lambda: self._restore(tailer))
            if opened is None:
                return
            self._save_opened(opened)
            self._follow(tailer, subscription)
            self._drain()
        finally:
            self._watcher.unsubscribe(subscription)
            self._ledger.close()
            tailer.close()
            log.info("worker stopped %s", self.target)

    def _restore(self, tailer: Tailer) -> list[FollowedFile]:
        """Reopen the files where they were left, or open the file under the name; returns
        the files opened anew (their start offsets, published, are not saved yet)."""
        target = self.target
        first = self._store.first_start(target.topic, target.path)
        own = self._store.for_target(target.topic, target.path)
        saved = own or self._renamed_here()
        read_from = target.read_from if first else "beginning"
        stale, where = tailer.restore(saved, read_from, time.monotonic())
        for checkpoint in stale:
            if checkpoint.path == target.path:
                self._store.remove(checkpoint)
        if saved and not own:
            self._publish(tailer.files())
        opened = tailer.take_opened()
        self._publish(opened)
        log.info("worker started %s: %s", target, where)
        return opened

    def _renamed_here(self) -> list[FileCheckpoint]:
        """A new glob match may be a file renamed from another match of the entry
        (app.log -> app.log.1 under app.log*): it resumes at that one's offset instead
        of sending the whole file again."""
        if self.target.glob is None:
            return []
        try:
            st = os.stat(self.target.path)
        except OSError:
            return []
        return self._store.same_file(self.target.topic, st.st_dev, st.st_ino)[:1]

    def _follow(self, tailer: Tailer, subscription: Subscription) -> None:
        while not self.stopping.is_set():
            if self._epoch != self._sink.epoch:
                self._resume_committed(tailer)
                continue
            self._collect()
            self._stalled()
            full = self._ledger.full()
            if self._queued is not None and not full:
                tailer.watch_name(time.monotonic())
                self._send_batch()
            elif self._queued is not None or full or not self._reserve():
                if self._ledger.held_by_commit():
                    self._sink.hurry()
                self._wait(self._files.poll_interval)
            elif not self._read(tailer) and not self._release_held(time.monotonic()):
                self._close_rotated(tailer, time.monotonic())
                self._watcher.ensure_watched(subscription)
                self._wait(self._idle_wait(tailer, subscription))

    def _resume_committed(self, tailer: Tailer) -> None:
        """Exactly-once: what was sent since the last commit is void (an aborted
        transaction), so every open file reads again from its committed offset, or from
        the position read from Kafka when that is further on (another agent with this
        name shipped meanwhile). The files stay open: a rotated one may have no name."""
        self._queued, self._queued_at = None, 0
        self._processor = self._new_processor()
        if not self._void_sent():
            return
        saved = {cp.identity: cp.offset
                 for cp in self._store.for_target(self.target.topic, self.target.path)}
        for followed in tailer.files():
            followed.resume_at(max(followed.acked_offset, saved.get(followed.identity, 0)))
        log.debug("%s: reading again from the committed offsets", self.target)

    def holds_files(self) -> bool:
        """Whether a file is still open or lines are in flight: a glob match that went
        away is stopped only once this is False, its last file drained. Attribute reads
        only, from the agent's thread."""
        tailer = self._tailer
        return bool(self._ledger) or (tailer is not None and bool(tailer.files()))

    def progress(self) -> Progress:
        """Called from the status thread: attribute reads and one stat by name, never a
        lock or a wait on this worker's thread."""
        tailer = self._tailer
        if tailer is None:
            return Progress("waiting", 0, 0, 0, self.records_sent)
        behind = sum(f.offset - f.acked_offset for f in list(tailer.rotated))
        current = tailer.current
        if current is None:
            return Progress("waiting", 0, 0, behind, self.records_sent)
        acked, size = current.acked_offset, current.offset
        with suppress(OSError):
            st = os.stat(self.target.path)
            if (st.st_dev, st.st_ino) == current.identity:
                size = st.st_size
        state = "shipping" if self._sink.health.up else "held"
        return Progress(state, acked, size, behind + max(0, size - acked), self.records_sent)

    def _read(self, tailer: Tailer) -> bool:
        """Queue the next chunk; False when there was nothing to read. What the read
        reserved and did not queue goes back to the budget."""
        try:
            return self._read_chunk(tailer)
        finally:
            self._ledger.unreserve()

    def _read_chunk(self, tailer: Tailer) -> bool:
        chunk = tailer.read(time.monotonic())
        opened = tailer.take_opened()
        if opened:
            self._publish(opened)
            self._save_opened(opened)
        if chunk is None:
            return False
        if chunk.truncated:
            self._truncated.inc(chunk.truncated)
            log.warning("%s: %s longer than files.max_line_bytes truncated", self.target,
                        plural(chunk.truncated, "line", "lines"))
        if chunk.lines:
            self._read_lines.inc(len(chunk.lines))
            if self._processor is not None:
                self._count(self._processor.process(chunk, time.monotonic()))
            self._enqueue(chunk)
        return True

    def _count(self, processed: Processed) -> None:
        self._filtered.inc(processed.filtered)
        self._invalid_json.inc(processed.invalid_json)

    def _enqueue(self, chunk: Chunk) -> None:
        """Queue a chunk to send. One that processing left without records (all filtered
        out, or all held in a multiline event) still moves the offset: as an empty batch,
        in order behind those in flight."""
        if chunk.lines:
            self._queued, self._queued_at = chunk, 0
            self._ledger.queue(chunk.lines)
        else:
            self._track(InFlight(chunk.file, chunk.end_offset, [], [], Sent(0), 0))

    def _release_held(self, now: float, force: bool = False) -> bool:
        """Queue a multiline event that timed out (any, with force); True if one was."""
        if self._processor is None or self._queued is not None:
            return False
        released = self._processor.expired(now, force)
        if released is None:
            return False
        self._count(released[1])
        self._enqueue(released[0])
        return True

    def _idle_wait(self, tailer: Tailer, subscription: Subscription) -> float | None:
        """An idle worker sleeps until inotify reports a change to its name (or the agent's
        sweep finds one that inotify lost), so a thousand idle files cost nothing: a
        thread's wake-up alone costs more than a stat. Where no event would come it looks
        by itself every poll_interval: a rotated file still draining (its events carry
        another name), a directory not watched yet, a file behind a symlink (events come
        from the target's directory), and acknowledgements still awaited. A held
        multiline event wakes it when its timeout is up."""
        release = self._processor.next_release() if self._processor is not None else None
        if release is not None:
            subscription.idle_state = None
            return max(0.0, min(release - time.monotonic(), self._files.poll_interval))
        if self._ledger or not (subscription.watched and tailer.notified()):
            subscription.idle_state = None
            return self._files.poll_interval
        current = tailer.current
        subscription.idle_state = MISSING if current is None else (*current.identity,
                                                                   current.read_pos)
        return None

    def _save_opened(self, opened: list[FollowedFile]) -> None:
        """A newly opened file's start offset is saved before its lines are read, so a
        kill -9 right after cannot turn it into a 'first start' that read_from: end would
        skip. A file opened at its start for an entry read from the beginning needs no
        wait: a restart without its checkpoint starts there too. A save that does not come
        (a full disk, said by the store) is not waited for longer than SAVE_WAIT."""
        if opened and (self.target.read_from != "beginning" or any(f.offset for f in opened)):
            self._sink.note_positions([f.checkpoint(self.target.topic) for f in opened])
            self._store.sync(SAVE_WAIT)

    def _send_batch(self) -> None:
        """Send the next slice of the queued chunk, so that acks and stop stay responsive."""
        chunk, start = self._queued, self._queued_at
        stop = min(start + SEND_BATCH, len(chunk.lines))
        end = chunk.offsets[stop] if stop < len(chunk.lines) else chunk.end_offset
        sent = self._sink.send(Job(self.target.topic, self._envelope, chunk.lines[start:stop],
                                   chunk.offsets[start:stop], self._wake.set,
                                   chunk.file.position(self.target.topic, end), self._epoch))
        if sent.refused:
            raise self._refused(sent.refused)
        stop = start + sent.count
        end_offset = chunk.offsets[stop] if stop < len(chunk.lines) else chunk.end_offset
        self._queued_at = stop
        if stop == len(chunk.lines):
            self._queued = None
        if sent.count:
            lines = chunk.lines[start:stop]
            self._track(InFlight(chunk.file, end_offset, lines, chunk.offsets[start:stop], sent,
                                 self._ledger.cost(lines)))
        self._kafka_state(sent.unavailable)

    def _acknowledged(self, batches: list[InFlight[FollowedFile]]) -> None:
        """Publish the offsets the acknowledged batches reach, once per file."""
        touched: set[FollowedFile] = set()
        for batch in batches:
            batch.source.acked_offset = batch.end
            touched.add(batch.source)
        self._publish(touched)

    def _resume_point(self, batch: InFlight[FollowedFile]) -> str:
        return f"offset {batch.source.acked_offset}"

    def _publish(self, files) -> None:
        for followed in files:
            self._store.update(followed.checkpoint(self.target.topic))

    def _close_rotated(self, tailer: Tailer, now: float) -> None:
        """A rotated file is closed once drained, and once its last multiline event has
        been released (by its timeout)."""
        for followed in tailer.closable(now):
            if self._processor is not None:
                if self._processor.holds(followed):
                    continue
                self._processor.forget(followed)
            self._store.remove(followed.checkpoint(self.target.topic))
            tailer.close_file(followed)
            log.info("%s: rotated file finished and closed", self.target)

    def _drain(self) -> None:
        """On a requested stop: send the multiline events still held, then wait a little
        for acknowledgements so offsets are saved."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and self._release_held(0.0, force=True):
            while self._queued is not None and time.monotonic() < deadline \
                    and self._epoch == self._sink.epoch:
                self._send_batch()
        self._await_acknowledgements(deadline)
