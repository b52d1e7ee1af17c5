"""One thread per (path, topic): read lines, send them, move the offset on acknowledgement.

The books of what is in flight are the worker's Ledger, touched by this thread only.
Kafka's callbacks do nothing but wake the thread; it then takes the batches whose
records are all done, in send order, so an offset never skips a line that is not
acknowledged. A record Kafka finally fails makes the worker fail: its supervisor
restarts it from the last acknowledged offset (duplicates possible, loss not).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Callable

from logship.checkpoint import CheckpointStore, FileCheckpoint
from logship.config import FilesConfig
from logship.errors import SinkError, TopicRefused
from logship.fswatch import MISSING, DirWatcher, Subscription
from logship.ledger import Bounds, InFlight, Ledger
from logship.logs import plural
from logship.metrics import Metrics
from logship.processors import Processed, Processor
from logship.sink import Job, Sent, Sink
from logship.spec import Target
from logship.supervisor import Backoff, Service
from logship.tailer import Chunk, FollowedFile, Tailer, TailSettings

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 4.0
SEND_BATCH = 1000
TYPICAL_LINE = 100      # bytes: what a read reserves is a chunk of lines this long


RESEND_TIMEOUT = 30.0
SAVE_WAIT = 5.0


@dataclass(frozen=True)
class Progress:
    """Where a worker stands, for the status document."""

    state: str          # shipping | waiting (no file yet) | held (Kafka cannot take lines)
    offset: int         # acknowledged, in the file now under the path
    size: int
    lag_bytes: int      # not yet acknowledged, rotated files included
    records_sent: int   # acknowledged since this worker started


class Worker(Service):
    def __init__(self, target: Target, files: FilesConfig, allowed_paths: tuple[str, ...],
                 sink: Sink, store: CheckpointStore, watcher: DirWatcher, metrics: Metrics,
                 keys: Callable[[Target], list[str]]) -> None:
        super().__init__(name=f"worker:{target.topic}:{target.path}")
        self.target = target
        self._keys = keys
        self._files = files
        self._settings = TailSettings(files.read_chunk_bytes, files.max_line_bytes,
                                      files.close_rotated_after, files.close_removed_timeout,
                                      allowed_paths)
        self._sink = sink
        self._store = store
        self._watcher = watcher
        self._envelope = sink.envelope(target)
        self._processor = self._new_processor()
        self._wake = threading.Event()
        self._ledger: Ledger[FollowedFile] = Ledger(
            sink.budget, sink.record_cost, Bounds(files.max_in_flight_lines,
                                                  files.max_in_flight_bytes))
        self._queued: Chunk | None = None
        self._queued_at = 0
        self._outage: Backoff | None = None
        self._tailer: Tailer | None = None
        self._epoch = 0
        self.records_sent = 0
        self._read_lines = metrics.lines_read.labels(target.topic)
        self._sent = metrics.records_sent.labels(target.topic)
        self._sent_bytes = metrics.bytes_sent.labels(target.topic)
        self._errors = metrics.send_errors.labels(target.topic)
        self._too_large = metrics.lines_skipped.labels(target.topic, "too_large")
        self._truncated = metrics.lines_skipped.labels(target.topic, "truncated")
        self._filtered = metrics.lines_skipped.labels(target.topic, "filtered")
        self._invalid_json = metrics.invalid_json.labels(target.topic)

    def stop(self) -> None:
        super().stop()
        self._wake.set()
        self._sink.release_waiters()

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
            if not self._sink.wait_ready(self.stopping):
                return
            self._epoch = self._sink.epoch
            with self.start_gate:
                if self.stopping.is_set():
                    return
                opened = self._restore(tailer)
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
        name shipped meanwhile). The files stay open: a rotated one may have no name.
        Batches of the transactions committed before are collected first: their offsets
        hold, they were committed before the one that failed began."""
        self._collect()
        self._ledger.void()
        self._queued, self._queued_at = None, 0
        self._processor = self._new_processor()
        if not self._sink.wait_ready(self.stopping):
            return
        self._epoch = self._sink.epoch
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

    def _wait(self, timeout: float | None) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

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

    def _reserve(self) -> bool:
        """Reserve the agent-wide budget for the next read (a full chunk of 100-byte
        lines), or be woken when there is room. The queued chunk's memory is counted from
        its read, so the budget holds back reading, never the sending of what was read."""
        size = self._files.read_chunk_bytes
        return self._ledger.reserve(size + self._sink.record_cost * (size // TYPICAL_LINE),
                                    self._wake.set)

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

    def _track(self, batch: InFlight[FollowedFile]) -> None:
        skipped = batch.sent.skipped
        if skipped:
            self._too_large.inc(len(skipped))
            log.error("%s: %s larger than kafka.max_request_size skipped", self.target,
                      plural(len(skipped), "line", "lines"))
        self._ledger.track(batch)

    def _kafka_state(self, unavailable: str | None) -> None:
        """While Kafka cannot take records, hold the lines and retry with backoff (the
        sink's KafkaHealth says so, once for the agent)."""
        if unavailable is None:
            self._outage = None
            return
        if self._outage is None:
            self._outage = Backoff(base=0.5, cap=5.0)
        self.stopping.wait(self._outage.next_delay(0.0))

    def _stalled(self) -> None:
        """Kafka may take records and acknowledge none: the clients would fail them only
        much later (or never, lines being held), so the oldest batch's age is what tells."""
        oldest = self._ledger.oldest_sent_at
        if oldest is not None:
            self._sink.health.stalled(oldest)

    def _collect(self) -> None:
        """Account for the acknowledged batches in send order and publish the offsets
        they reach."""
        touched: set[FollowedFile] = set()
        for batch in self._ledger.settle():
            self._account(batch)
            batch.source.acked_offset = batch.end
            touched.add(batch.source)
        if touched:
            self._publish(touched)

    def _account(self, batch: InFlight[FollowedFile]) -> None:
        failures = batch.sent.delivery.failures() if batch.sent.delivery else []
        other = [error for _, error in failures if not self._sink.is_too_large(error)]
        if other and self._sink.is_topic_error(other[0]):
            raise self._refused(self._sink.explain_topic(self.target.topic, other[0])
                                or str(other[0]))
        if other:
            self._errors.inc(len(failures))
            lines = plural(len(failures), "line", "lines")
            brokers = ",".join(self._sink.config.bootstrap_servers)
            raise SinkError(f"{self.target}: Kafka ({brokers}) did not acknowledge {lines}: "
                            f"{other[0]}; resending from offset {batch.source.acked_offset}")
        delivered = batch.sent.handed_over - len(failures)
        if failures:
            delivered += self._resend_refused(batch, [index for index, _ in failures])
        self._sent.inc(delivered)
        self._sent_bytes.inc(batch.nbytes)
        self.records_sent += delivered

    def _refused(self, reason: str) -> TopicRefused:
        """Only this entry is held: its supervisor restarts it from the last acknowledged
        offset with a growing backoff, so a fix on the broker's side is picked up."""
        keys = ",".join(self._keys(self.target)) or "none"
        brokers = ",".join(self._sink.config.bootstrap_servers)
        return TopicRefused(f"key={keys}: Kafka ({brokers}) refuses topic {self.target.topic}: "
                            f"{reason}; this entry's lines are held, the others ship")

    def _resend_refused(self, batch: InFlight[FollowedFile], indices: list[int]) -> int:
        """The broker refused records as too large. A client may fail the records
        around the culprit too (kafka-python with idempotence fails every one behind
        it), so all of them are resent alone: only the one really too large is skipped."""
        self._sink.recover(batch.sent.generation)
        resent = self._sink.resend_alone(self.target.topic, self._envelope,
                                         [batch.lines[i] for i in indices],
                                         [batch.offsets[i] for i in indices], RESEND_TIMEOUT)
        if resent.too_large:
            self._too_large.inc(resent.too_large)
            log.error("%s: %s refused by the broker as too large; skipped", self.target,
                      plural(resent.too_large, "line", "lines"))
        return resent.delivered

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
        self._collect()
        while self._ledger and time.monotonic() < deadline:
            self._wake.wait(0.05)
            self._wake.clear()
            self._collect()
        if self._ledger:
            log.warning("%s: %s not acknowledged at stop; they will be sent again",
                        self.target, plural(self._ledger.lines, "line", "lines"))
