"""One thread per (path, topic): read lines, send them, move the offset on acknowledgement.

The in-flight deque is touched by this thread only. Kafka's callbacks do nothing but
wake the thread; it then pops the batches whose records are all done, in send order,
so an offset never skips a line that is not acknowledged. A record Kafka finally
fails makes the worker fail: its supervisor restarts it from the last acknowledged
offset (duplicates possible, loss not).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from logship.checkpoint import CheckpointStore
from logship.config import FilesConfig
from logship.errors import SinkError
from logship.fswatch import DirWatcher
from logship.metrics import Metrics
from logship.sink import Future, Sink, is_too_large
from logship.spec import Target
from logship.supervisor import Service
from logship.tailer import FollowedFile, Tailer, TailSettings

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0


@dataclass
class InFlight:
    """One sent batch: it is acknowledged when all of its futures are done."""

    file: FollowedFile
    end_offset: int
    futures: list[Future]
    nbytes: int

    def done(self) -> bool:
        return all(f.is_done for f in self.futures) if self.futures else True


class Worker(Service):
    def __init__(self, target: Target, files: FilesConfig, allowed_paths: tuple[str, ...],
                 sink: Sink, store: CheckpointStore, watcher: DirWatcher, metrics: Metrics) -> None:
        super().__init__(name=f"worker:{target.topic}:{target.path}")
        self.target = target
        self._files = files
        self._settings = TailSettings(files.read_chunk_bytes, files.max_line_bytes,
                                      files.close_rotated_after, files.close_removed_timeout,
                                      allowed_paths)
        self._sink = sink
        self._store = store
        self._watcher = watcher
        self._key = target.path.encode()
        self._wake = threading.Event()
        self._pending: deque[InFlight] = deque()
        self._pending_lines = 0
        self._pending_bytes = 0
        self._read = metrics.lines_read.labels(target.topic)
        self._sent = metrics.lines_sent.labels(target.topic)
        self._sent_bytes = metrics.bytes_sent.labels(target.topic)
        self._errors = metrics.send_errors.labels(target.topic)
        self._too_large = metrics.lines_skipped.labels(target.topic, "too_large")
        self._truncated = metrics.lines_skipped.labels(target.topic, "truncated")

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    def serve(self) -> None:
        tailer = Tailer(self.target.path, self._settings)
        subscription = self._watcher.subscribe(self.target.path, self._wake.set)
        try:
            self._restore(tailer)
            self._follow(tailer, subscription)
            self._drain()
        finally:
            self._watcher.unsubscribe(subscription)
            self._sink.budget.give(self._pending_bytes)
            tailer.close()
            log.info("worker stopped %s", self.target)

    def _restore(self, tailer: Tailer) -> None:
        target = self.target
        first = self._store.first_start(target.topic, target.path)
        saved = self._store.for_target(target.topic, target.path)
        read_from = target.read_from if first else "beginning"
        for stale in tailer.restore(saved, read_from, time.monotonic()):
            self._store.remove(stale)
        self._publish(tailer.files())
        log.info("worker started %s", target)

    def _follow(self, tailer: Tailer, subscription) -> None:
        while not self.stopping.is_set():
            self._collect()
            if self._full():
                self._wait()
                continue
            now = time.monotonic()
            chunk = tailer.read(now)
            if chunk is None:
                self._close_rotated(tailer, now)
                self._watcher.ensure_watched(subscription)
                self._wait()
                continue
            if chunk.lines:
                self._send(chunk)

    def _wait(self) -> None:
        self._wake.wait(self._files.poll_interval)
        self._wake.clear()

    def _full(self) -> bool:
        return (self._pending_lines >= self._files.max_in_flight_lines
                or self._pending_bytes >= self._files.max_in_flight_bytes
                or not self._sink.budget.has_room())

    def _send(self, chunk) -> None:
        lines = chunk.lines
        futures, too_large = self._sink.send(self.target.topic, self._key, lines, chunk.offsets)
        nbytes = sum(map(len, lines))
        self._read.inc(len(lines))
        if too_large:
            self._too_large.inc(too_large)
            log.error("%s: %d line(s) larger than kafka.max_request_size skipped", self.target,
                      too_large)
        if chunk.truncated:
            self._truncated.inc(chunk.truncated)
            log.warning("%s: %d line(s) longer than files.max_line_bytes truncated", self.target,
                        chunk.truncated)
        if futures:
            futures[-1].add_both(self._on_done)
        self._pending.append(InFlight(chunk.file, chunk.end_offset, futures, nbytes))
        self._pending_lines += len(futures)
        self._pending_bytes += nbytes
        self._sink.budget.take(nbytes)

    def _on_done(self, _result: object) -> None:
        """Runs on Kafka's sender thread: only wake the worker."""
        self._wake.set()

    def _collect(self) -> None:
        """Pop acknowledged batches in send order and publish the offsets they reach."""
        touched: set[FollowedFile] = set()
        while self._pending and self._pending[0].done():
            batch = self._pending.popleft()
            self._pending_lines -= len(batch.futures)
            self._pending_bytes -= batch.nbytes
            self._sink.budget.give(batch.nbytes)
            self._account(batch)
            batch.file.acked_offset = batch.end_offset
            touched.add(batch.file)
        if touched:
            self._publish(touched)

    def _account(self, batch: InFlight) -> None:
        failed = [f.exception for f in batch.futures if f.exception is not None]
        too_large = [e for e in failed if is_too_large(e)]
        if len(too_large) < len(failed):
            self._errors.inc(len(failed) - len(too_large))
            error = next(e for e in failed if not is_too_large(e))
            raise SinkError(f"{self.target}: Kafka did not acknowledge {len(failed)} line(s): "
                            f"{error}; resending from offset {batch.file.acked_offset}")
        if too_large:
            self._too_large.inc(len(too_large))
            log.error("%s: %d line(s) refused by the broker as too large; skipped", self.target,
                      len(too_large))
        self._sent.inc(len(batch.futures) - len(failed))
        self._sent_bytes.inc(batch.nbytes)

    def _publish(self, files) -> None:
        for followed in files:
            self._store.update(followed.checkpoint(self.target.topic))

    def _close_rotated(self, tailer: Tailer, now: float) -> None:
        for followed in tailer.closable(now):
            self._store.remove(followed.checkpoint(self.target.topic))
            tailer.close_file(followed)
            log.info("%s: rotated file finished and closed", self.target)

    def _drain(self) -> None:
        """On a requested stop: wait a little for acknowledgements so offsets are saved."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        self._collect()
        while self._pending and time.monotonic() < deadline:
            self._wake.wait(0.05)
            self._wake.clear()
            self._collect()
        if self._pending:
            log.warning("%s: %d line(s) not acknowledged at stop; they will be sent again",
                        self.target, self._pending_lines)
