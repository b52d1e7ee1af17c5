"""What every follower does with Kafka, whatever it reads: a file's worker, the journal's.

A follower is one thread that reads its source, hands batches to the sink and keeps
their books in its Ledger. Kafka's callbacks only wake the thread; it then takes the
acknowledged batches in send order (`_collect`), so a position never passes a record
that is not acknowledged, and hands them to the subclass (`_acknowledged`) to move its
position. A record Kafka finally fails makes the follower fail: its supervisor restarts
it from the last acknowledged position (duplicates possible, loss not).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Generic, TypeVar

from logship.config import FilesConfig
from logship.errors import SinkError, TopicRefused
from logship.ledger import Bounds, InFlight, Ledger
from logship.logs import plural
from logship.metrics import Metrics
from logship.sink import Job, Sink
from logship.spec import Target
from logship.supervisor import Backoff, Service

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")

DRAIN_TIMEOUT = 4.0
RESEND_TIMEOUT = 30.0
TYPICAL_LINE = 100      # bytes: what a read reserves is a chunk of lines this long


class Follower(Service, Generic[S]):
    def __init__(self, target: Target, files: FilesConfig, sink: Sink, metrics: Metrics,
                 keys: Callable[[Target], list[str]]) -> None:
        super().__init__(name=f"worker:{target.topic}:{target.path}")
        self.target = target
        self._keys = keys
        self._files = files
        self._sink = sink
        self._envelope = sink.envelope(target)
        self._wake = threading.Event()
        self._ledger: Ledger[S] = Ledger(sink.budget, sink.record_cost,
                                         Bounds(files.max_in_flight_lines,
                                                files.max_in_flight_bytes))
        self._outage: Backoff | None = None
        self._epoch = 0
        self.records_sent = 0
        self._read_lines = metrics.lines_read.labels(target.topic)
        self._sent = metrics.records_sent.labels(target.topic)
        self._sent_bytes = metrics.bytes_sent.labels(target.topic)
        self._errors = metrics.send_errors.labels(target.topic)
        self._too_large = metrics.lines_skipped.labels(target.topic, "too_large")
        self._filtered = metrics.lines_skipped.labels(target.topic, "filtered")

    def stop(self) -> None:
        super().stop()
        self._wake.set()
        self._sink.release_waiters()

    def _start_up(self, restore: Callable[[], R]) -> R | None:
        """Once the sink may be used (exactly-once: the positions kept in Kafka are in the
        store), find where to resume, through the supervisor's start gate; None if
        stopped first."""
        if not self._sink.wait_ready(self.stopping):
            return None
        self._epoch = self._sink.epoch
        with self.start_gate:
            if self.stopping.is_set():
                return None
            return restore()

    def _void_sent(self) -> bool:
        """Exactly-once: what was sent since the last commit is void (an aborted
        transaction). The batches of the transactions committed before are collected
        first: their positions hold. Then wait until the positions kept in Kafka are read
        again; False if stopped first."""
        self._collect()
        self._ledger.void()
        if not self._sink.wait_ready(self.stopping):
            return False
        self._epoch = self._sink.epoch
        return True

    def _acknowledged(self, batches: list[InFlight[S]]) -> None:
        """Move the positions the acknowledged batches reach, in send order."""
        raise NotImplementedError

    def _resume_point(self, batch: InFlight[S]) -> str:
        """Where a restart resends from, for the log: 'offset N'."""
        raise NotImplementedError

    def _wait(self, timeout: float | None) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def _reserve(self) -> bool:
        """Reserve the agent-wide budget for the next read (a full chunk of 100-byte
        lines), or be woken when there is room. What was read is counted from its read,
        so the budget holds back reading, never the sending of what was read."""
        size = self._files.read_chunk_bytes
        return self._ledger.reserve(size + self._sink.record_cost * (size // TYPICAL_LINE),
                                    self._wake.set)

    def _track(self, batch: InFlight[S]) -> None:
        skipped = batch.sent.skipped
        if skipped:
            self._too_large.inc(len(skipped))
            log.error("%s: %s larger than kafka.max_request_size skipped", self.target,
                      plural(len(skipped), "line", "lines"))
        self._ledger.track(batch)

    def _kafka_state(self, unavailable: str | None) -> None:
        """While Kafka cannot take records, hold them and retry with backoff (the sink's
        KafkaHealth says so, once for the agent)."""
        if unavailable is None:
            self._outage = None
            return
        if self._outage is None:
            self._outage = Backoff(base=0.5, cap=5.0)
        self.stopping.wait(self._outage.next_delay(0.0))

    def _stalled(self) -> None:
        """Kafka may take records and acknowledge none: the clients would fail them only
        much later (or never, records being held), so the oldest batch's age tells."""
        oldest = self._ledger.oldest_sent_at
        if oldest is not None:
            self._sink.health.stalled(oldest)

    def _collect(self) -> None:
        """Account for the acknowledged batches in send order, then move positions."""
        settled = self._ledger.settle()
        for batch in settled:
            self._account(batch)
        if settled:
            self._acknowledged(settled)

    def _account(self, batch: InFlight[S]) -> None:
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
                            f"{other[0]}; resending from {self._resume_point(batch)}")
        delivered = batch.sent.handed_over - len(failures)
        if failures:
            delivered += self._resend_refused(batch, [index for index, _ in failures])
        self._sent.inc(delivered)
        self._sent_bytes.inc(batch.nbytes)
        self.records_sent += delivered

    def _refused(self, reason: str) -> TopicRefused:
        """Only this entry is held: its supervisor restarts it from the last acknowledged
        position with a growing backoff, so a fix on the broker's side is picked up."""
        keys = ",".join(self._keys(self.target)) or "none"
        brokers = ",".join(self._sink.config.bootstrap_servers)
        return TopicRefused(f"key={keys}: Kafka ({brokers}) refuses topic {self.target.topic}: "
                            f"{reason}; this entry's lines are held, the others ship")

    def _resend_refused(self, batch: InFlight[S], indices: list[int]) -> int:
        """The broker refused records as too large. A client may fail the records
        around the culprit too (kafka-python with idempotence fails every one behind
        it), so all of them are resent alone: only the one really too large is skipped."""
        self._sink.recover(batch.sent.generation)
        job = Job(self.target.topic, self._envelope, batch.lines, batch.offsets, self._wake.set,
                  records=batch.records)
        resent = self._sink.resend_alone(job.part(indices), RESEND_TIMEOUT)
        if resent.too_large:
            self._too_large.inc(resent.too_large)
            log.error("%s: %s refused by the broker as too large; skipped", self.target,
                      plural(resent.too_large, "line", "lines"))
        return resent.delivered

    def _await_acknowledgements(self, deadline: float) -> None:
        """On a requested stop: wait a little for what is in flight, so that positions
        are saved."""
        self._collect()
        while self._ledger and time.monotonic() < deadline:
            self._wait(0.05)
            self._collect()
        if self._ledger:
            log.warning("%s: %s not acknowledged at stop; they will be sent again",
                        self.target, plural(self._ledger.lines, "line", "lines"))
