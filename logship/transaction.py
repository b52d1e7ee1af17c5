"""Exactly-once delivery: Kafka transactions that carry each file's position.

Shaped after Kafka Connect's exactly-once source connectors (KIP-618): the records sent
since the last commit and, for every file they came from, one record of the position
after its last line go to Kafka in one transaction. A read_committed consumer sees a
line only once the transaction holding it and the position past it have committed; the
agent resumes from those positions, so no line is in two committed transactions,
whatever happens in between (kill -9, a lost state_dir, a second agent with the same
transactional id).

One transactional producer for the agent and one loop thread that ends transactions:
every kafka.transaction_interval, or sooner when a transaction holds MAX_RECORDS or a
worker waits for its acknowledgements to read on. Workers produce into the open
transaction exactly as they do at least once (one batch at a time, the hot path
unchanged); their batches are acknowledged when the transaction commits. An abort voids
everything sent since the last commit: the epoch moves, and every worker reads again
from its committed offsets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from logship.checkpoint import FileCheckpoint
from logship.errors import SinkError
from logship.sink import (REPEAT_EVERY, Delivery, Job, PositionsPending, Resent,
                          Sent, Sink, TransactionFailed, Transactions, Wake)
from logship.logs import plural
from logship.supervisor import Backoff, Service

if TYPE_CHECKING:
    from logship.checkpoint import CheckpointStore
    from logship.config import KafkaConfig
    from logship.metrics import Metrics

log = logging.getLogger(__name__)

TRANSACTIONAL_PREFIX = "logship-"
MAX_RECORDS = 50_000            # a transaction is committed at this size at the latest
PREPARE_TIMEOUT = 10.0
COMMIT_WAIT = 1.0               # between two looks at a stop while a commit goes on
COMMIT_TIMEOUT = 30.0
"""A commit not ended by then gives its producer up: a new one takes the transactional id,
which aborts the transaction on the broker, and the positions are read again. Within the
brokers' transaction timeout (60 s by default), and the way out of a client that does not
finish a commit after an outage (kafka-python 3.0.12 sometimes does not)."""
SEND_WAIT = 0.5                 # a worker waits this long for a commit, then backs off
REFUSED_FOR = 30.0              # sends to a topic that failed a transaction are refused

PositionKey = bytes


def transactional_id(name: str) -> str:
    return TRANSACTIONAL_PREFIX + name


def position_key(name: str, checkpoint: FileCheckpoint) -> PositionKey:
    """The agent and the file's identity; the fingerprint is in the value, since it
    grows with the file's first bytes and a key must stay the same for compaction."""
    return json.dumps([name, checkpoint.topic, checkpoint.dev, checkpoint.ino]).encode()


def position_value(checkpoint: FileCheckpoint) -> bytes:
    return json.dumps(checkpoint.as_dict()).encode()


def positions_partition(name: str, partitions: int) -> int:
    """All of an agent's positions are in one partition, so that a start reads its own
    and not the whole fleet's."""
    return zlib.crc32(name.encode()) % partitions


def check_transactions(module: ModuleType, config: KafkaConfig, name: str,
                       timeout: float) -> str:
    """`logship check --connect`: the brokers accept transactions, under a transactional
    id of the check's own, so that a running agent is not fenced off."""
    with _probe(module, config, f"{transactional_id(name)}.check", timeout) as client:
        client.begin()
        if not client.abort(timeout):
            raise SinkError(f"a transaction was not aborted within {timeout:g}s")
    return f"transactional id {transactional_id(name)}.check taken, a transaction aborted"


def check_positions(module: ModuleType, config: KafkaConfig, name: str, timeout: float) -> str:
    """`logship check --connect`: the offsets topic can be read (this agent's positions)
    and written (a tombstone under a key of the check's own, which the agent ignores)."""
    topic = config.offsets_topic
    with _probe(module, config, f"{transactional_id(name)}.check-offsets", timeout) as client:
        partitions = client.positions_partitions(topic, timeout)
        partition = positions_partition(name, partitions)
        positions, _, _ = decode_positions(name, client.read_positions(topic, partition, timeout))
        client.begin()
        check = FileCheckpoint("", "", 0, 0, 0, "", 0)
        client.produce_position(topic, partition, position_key(f"{name}.check", check), None)
        if not client.commit(timeout):
            raise SinkError(f"a write was not committed within {timeout:g}s")
    return (f"{partitions} partitions, {plural(len(positions), 'position', 'positions')} of "
            f"{name} read from partition {partition}, a write committed")


@contextmanager
def _probe(module: ModuleType, config: KafkaConfig, transactional: str,
           timeout: float) -> Iterator[Transactions]:
    sink = module.open_sink(config, b"check", lambda reason: None, transactional)
    try:
        client = module.transactions(sink)
        if not client.init(timeout):
            raise SinkError(f"transactional id {transactional}: no answer within {timeout:g}s")
        yield client
    except TransactionFailed as exc:
        raise SinkError(str(exc)) from None
    finally:
        sink.close(0)


def decode_positions(name: str, records: Iterable[tuple[bytes, bytes | None]]
                     ) -> tuple[list[FileCheckpoint], set[tuple[str, int, int]], int]:
    """The latest position of each of this agent's files, the (topic, dev, ino) of the
    files finished (tombstoned), and how many records were not ours to read."""
    latest: dict[tuple[str, int, int], bytes | None] = {}
    unreadable = 0
    for key, value in records:
        try:
            owner, topic, dev, ino = json.loads(key)
        except (ValueError, TypeError):
            unreadable += 1
            continue
        if owner == name:
            latest[(topic, dev, ino)] = value
    positions = []
    for value in latest.values():
        if value is None:
            continue
        try:
            positions.append(FileCheckpoint(**json.loads(value)))
        except (ValueError, TypeError):
            unreadable += 1
    return positions, {key for key, value in latest.items() if value is None}, unreadable


@dataclass(eq=False)
class Transaction:
    positions: dict[PositionKey, FileCheckpoint] = field(default_factory=dict)
    noted: dict[PositionKey, FileCheckpoint] = field(default_factory=dict)
    finished: dict[PositionKey, FileCheckpoint] = field(default_factory=dict)
    deliveries: list[tuple[str, Delivery]] = field(default_factory=list)    # (topic, delivery)
    wakes: list[Wake] = field(default_factory=list)
    records: int = 0
    committed: bool = False


class TransactionDelivery:
    """A batch is acknowledged when its transaction commits, never before; an aborted
    batch is never acknowledged (its worker reads again from its committed offset). Its
    records' own acknowledgements by the broker come before: the worker is woken by
    them too, to give back what the client held of the batch (`handed_off`)."""

    __slots__ = ("transaction", "inner")

    def __init__(self, transaction: Transaction, inner: Delivery | None) -> None:
        self.transaction = transaction
        self.inner = inner

    def done(self) -> bool:
        return self.transaction.committed

    def handed_off(self) -> bool:
        return self.inner is None or self.inner.done()

    def failures(self) -> list[tuple[int, BaseException]]:
        return []       # a commit means every record of it was written


class TransactionalSink(Sink):
    """The at-least-once sink of the chosen client, its records put into transactions:
    the client's producer, budget and health are shared, not copied."""

    def __init__(self, inner: Sink, client: Transactions, name: str) -> None:
        self.config = inner.config
        self.budget = inner.budget
        self.health = inner.health
        self.host = inner.host
        self.record_cost = inner.record_cost
        self.name = name
        self.transactional_id = transactional_id(name)
        self._inner = inner
        self._client = client
        self._lock = threading.Lock()       # a transaction's records and its end
        # Start positions and finished files, noted by workers and the checkpoint writer
        # at any time, also while a commit holds the lock (a worker's start-up must not
        # wait for a commit).
        self._pending_lock = threading.Lock()
        self._ready = threading.Event()     # positions read from Kafka into the store
        # init() once per producer: librdkafka refuses a second one, so a failure after
        # it (the offsets topic unreadable) must not take the id again when retried
        self._id_taken = False
        self._readiness = threading.Condition()
        self._due = threading.Event()
        self._transaction: Transaction | None = None
        self._failure: TransactionFailed | None = None
        self._noted: dict[PositionKey, FileCheckpoint] = {}
        self._finished: dict[PositionKey, FileCheckpoint] = {}
        self._refused: dict[str, tuple[str, float]] = {}     # topic -> (why, until)
        self._partition = 0
        self._give_up_at: float | None = None
        self._said = ("", 0.0)
        self._fenced_at: float | None = None
        self._ready_at = 0.0
        self._fences = Backoff(base=1.0, cap=60.0)
        self._commit_started = 0.0
        self._store: CheckpointStore | None = None
        self._metrics: Metrics | None = None
        self._loop = _TransactionLoop(self)

    # -- the worker's side ----------------------------------------------------------

    def start(self, store: CheckpointStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._inner.start(store, metrics)
        self._loop.start()

    def wait_ready(self, stopping: threading.Event) -> bool:
        """Without polling: ten thousand workers waiting through a Kafka outage at start
        would otherwise wake ten thousand times per poll."""
        with self._readiness:
            self._readiness.wait_for(lambda: self._ready.is_set() or stopping.is_set())
        return not stopping.is_set()

    def release_waiters(self) -> None:
        with self._readiness:
            self._readiness.notify_all()

    def hurry(self) -> None:
        self._due.set()

    def note_positions(self, positions: Sequence[FileCheckpoint]) -> None:
        with self._pending_lock:
            for checkpoint in positions:
                key = position_key(self.name, checkpoint)
                self._noted[key] = checkpoint
                self._finished.pop(key, None)

    def forget(self, checkpoint: FileCheckpoint) -> None:
        """A tombstone, unless the file has a position in the same transaction: then a
        worker follows it under another name (a glob match renamed from this one)."""
        with self._pending_lock:
            self._finished[position_key(self.name, checkpoint)] = checkpoint

    def send(self, job: Job) -> Sent:
        early = self._inner.prepare(job.topic)
        if early is not None:
            return early
        if not self._lock.acquire(timeout=SEND_WAIT):
            return Sent(0, unavailable="a Kafka transaction is being committed")
        try:
            return self._produce_in_transaction(job)
        finally:
            self._lock.release()

    def _produce_in_transaction(self, job: Job) -> Sent:
        if not self._ready.is_set():
            return Sent(0, unavailable="positions not read from Kafka yet")
        if self._failure is not None:
            return Sent(0, unavailable=f"a transaction is being aborted: {self._failure}")
        if job.epoch != self.epoch:
            return Sent(0)          # the worker reads again from its committed offsets
        refused = self._refused.get(job.topic)
        if refused is not None:
            if time.monotonic() < refused[1]:
                return Sent(0, refused=refused[0])
            del self._refused[job.topic]        # try it again
        try:
            transaction = self._transaction or self._begin()
        except TransactionFailed as exc:
            self._failure = exc
            self._due.set()
            return Sent(0, unavailable=str(exc))
        try:
            sent = self._inner._produce_job(job)
        except Exception as exc:
            # Part of the batch may be in the transaction: it must not commit. The loop
            # aborts it, and the worker reads again from its committed offsets.
            self._failure = TransactionFailed(str(exc))
            self._due.set()
            return Sent(0, unavailable=str(exc))
        if sent.count:
            self._include(transaction, job, sent)
        return sent

    def _include(self, transaction: Transaction, job: Job, sent: Sent) -> None:
        if sent.delivery is not None:
            transaction.deliveries.append((job.topic, sent.delivery))
        transaction.wakes.append(job.wake)
        transaction.records += sent.handed_over
        if job.position is not None:
            position = job.position_after(sent.count)
            key = position_key(self.name, position)
            transaction.positions[key] = position
            if self._finished:
                with self._pending_lock:
                    self._finished.pop(key, None)
        sent.delivery = TransactionDelivery(transaction, sent.delivery)
        if transaction.records >= MAX_RECORDS:
            self._due.set()

    def _begin(self) -> Transaction:
        self._client.begin()
        self._transaction = Transaction()
        return self._transaction

    # -- the loop's side ------------------------------------------------------------

    def read_positions(self) -> None:
        """Take the transactional id (fencing a previous holder, aborting what it left
        open), then read this agent's positions up to the end: only then are they all
        committed ones, and workers may resume from them."""
        if not self._id_taken:
            if not self._client.init(PREPARE_TIMEOUT):
                raise TransactionFailed(f"Kafka did not answer within {PREPARE_TIMEOUT:g}s "
                                        f"when taking transactional id {self.transactional_id}")
            self._id_taken = True
        topic = self.config.offsets_topic
        partitions = self._client.positions_partitions(topic, PREPARE_TIMEOUT)
        self._partition = positions_partition(self.name, partitions)
        records = self._client.read_positions(topic, self._partition, PREPARE_TIMEOUT)
        positions, finished, unreadable = decode_positions(self.name, records)
        adopted = self._store.adopt(positions, finished)
        if unreadable:
            log.warning("kafka.offsets_topic %s: %d records are not logship positions; "
                        "ignored", topic, unreadable)
        log.info("exactly-once as transactional id %s: %d file positions read from %s "
                 "partition %d, %d of them ahead of state_dir", self.transactional_id,
                 len(positions), topic, self._partition, adopted)
        self._ready_at = time.monotonic()
        with self._lock:
            self.epoch += 1     # a worker that resumed before these positions does again
            self._ready.set()
        self.release_waiters()

    def _renew(self) -> None:
        """A new producer, whose transactional id is taken at the next read_positions."""
        self._client.renew()
        self._id_taken = False

    def take_back_after(self) -> float:
        """After being fenced off: how long to leave the transactional id to the producer
        that took it before taking it back, growing while the two keep taking it from
        each other (two agents with one name), so that each of them still ships."""
        if self._fenced_at is None:
            return 0.0
        return self._fences.next_delay(self._fenced_at - self._ready_at)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def not_ready(self, error: BaseException, delay: float) -> None:
        """Said once per cause, and again every minute while it lasts; a topic Kafka does
        not serve yet is waited for, not an error."""
        cause, now = str(error), time.monotonic()
        if getattr(error, "fatal", False):
            self._renew()
        if cause == self._said[0] and now - self._said[1] < REPEAT_EVERY:
            return
        self._said = (cause, now)
        if isinstance(error, PositionsPending):
            log.warning("exactly-once: waiting for the positions in Kafka: %s; asking again "
                        "in %.1fs", cause, delay)
        else:
            log.error("exactly-once: cannot resume from the positions in Kafka: %s; "
                      "retrying, the first time in %.1fs", cause, delay)

    def wait_due(self, stopping: threading.Event) -> None:
        """Until the open transaction is due (its size, a worker waiting, or its time)."""
        now = time.monotonic()
        timeout = self.due_at(now) - now
        if timeout > 0 and not stopping.is_set():
            self._due.wait(timeout)
        self._due.clear()

    def due_at(self, now: float) -> float:
        """Commits start every interval, counted from the start of the last one, not from
        its end: a line sent while a commit goes on is readable within an interval and a
        commit's time. That holds also when the loop looks before the next transaction has
        opened, as it does right after a commit whose lock held the workers back: an
        interval from then would make every cycle a commit longer. With none open and the
        time past, an interval from now, for positions and tombstones to write."""
        interval = self.config.transaction_interval
        due = self._commit_started + interval
        if self._transaction is None and due <= now:
            return now + interval
        return due

    def end_transaction(self) -> None:
        """Commit what is open, with the positions of the files it covers; on failure
        abort it and make every worker read again from its committed offsets."""
        with self._lock:
            failure, self._failure = self._failure, None
            transaction = self._transaction
            if failure is not None:
                self._void(transaction, failure)
                return
            if transaction is None and not (self._noted or self._finished):
                return      # read without the pending lock: at worst one interval late
            began = self._commit_started = time.monotonic()
            try:
                transaction = transaction or self._begin()
                self._write_positions(transaction)
                self._commit(began + COMMIT_TIMEOUT)
            except TransactionFailed as exc:
                self._void(transaction, exc)
                return
            except Exception as exc:        # the client's own: its producer is suspect
                self._void(transaction, TransactionFailed(f"{type(exc).__name__}: {exc}",
                                                          fatal=True))
                return
            self._committed(transaction, time.monotonic() - began)

    def _write_positions(self, transaction: Transaction) -> None:
        """Each file's position, and a tombstone for each file finished; a start position
        noted at an open is older than any position a send of the file made."""
        with self._pending_lock:
            transaction.noted, self._noted = self._noted, {}
            finished, self._finished = self._finished, {}
        for key, checkpoint in transaction.noted.items():
            transaction.positions.setdefault(key, checkpoint)
        transaction.finished = {key: checkpoint for key, checkpoint in finished.items()
                                if key not in transaction.positions}
        topic, partition = self.config.offsets_topic, self._partition
        for key, checkpoint in transaction.positions.items():
            self._client.produce_position(topic, partition, key, position_value(checkpoint))
        for key in transaction.finished:
            self._client.produce_position(topic, partition, key, None)

    def _commit(self, deadline: float) -> None:
        while not self._client.commit(COMMIT_WAIT):
            if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                raise TransactionFailed("not committed before the agent stopped")
            if time.monotonic() > deadline:
                raise TransactionFailed(f"not committed within {COMMIT_TIMEOUT:g}s",
                                        fatal=True)

    def _committed(self, transaction: Transaction, took: float) -> None:
        transaction.committed = True
        self._transaction = None
        self._metrics.transactions.labels("committed").inc()
        self._metrics.transaction_seconds.observe(took)
        self._metrics.transaction_records.observe(transaction.records)
        for wake in transaction.wakes:
            wake()

    def _void(self, transaction: Transaction | None, failure: TransactionFailed) -> None:
        """Abort; every worker then reads again from its committed offsets (the epoch).
        A producer that cannot go on is replaced, and the positions are read again from
        Kafka: an agent that fenced it off may have shipped further meanwhile."""
        self._transaction = None
        self.epoch += 1
        unabortable = None if failure.fatal else self._abort(transaction)
        if unabortable is not None and (unabortable.fenced or not failure.fenced):
            failure = unabortable           # the producer's own state says more
        replaced = failure.fatal or unabortable is not None
        if replaced:
            self._ready.clear()
            self._renew()
        if transaction is not None:
            with self._pending_lock:
                self._finished = {**transaction.finished, **self._finished}
                if not replaced:    # else another producer may have shipped past them
                    self._noted = {**transaction.noted, **self._noted}
            self._learn_refusals(transaction)
            for wake in transaction.wakes:
                wake()
        self._metrics.transactions.labels("aborted").inc()
        voided = (f"{plural(transaction.records if transaction else 0, 'record', 'records')} "
                  f"of {plural(len(transaction.positions) if transaction else 0, 'file', 'files')}")
        if replaced:
            self._fenced_at = time.monotonic() if failure.fenced else None
        if failure.fenced:
            log.error("exactly-once: transactional id %s fenced (%s): another producer took it, "
                      "a second agent with agent.name %s or this one after a long pause; "
                      "taking it back, %s are sent again from the positions in Kafka",
                      self.transactional_id, failure, self.name, voided)
        elif replaced:
            log.error("exactly-once: transaction aborted (%s); producer replaced, %s are sent "
                      "again from the positions in Kafka", failure, voided)
        else:
            log.warning("exactly-once: transaction aborted (%s); %s are sent again from their "
                        "committed offsets", failure, voided)

    def _abort(self, transaction: Transaction | None) -> TransactionFailed | None:
        """Why the producer cannot even abort (it is then replaced); None once aborted."""
        if transaction is None:
            return None
        try:
            while not self._client.abort(COMMIT_WAIT):
                if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                    return TransactionFailed("not aborted before the agent stopped", fatal=True)
        except TransactionFailed as exc:
            return exc if exc.fatal else TransactionFailed(str(exc), fatal=True)
        return None

    def _learn_refusals(self, transaction: Transaction) -> None:
        """A topic whose records failed the transaction (Kafka refuses the topic, or a
        record as too large for it) is refused to its workers' next send: their entries
        are held, with their backoff, instead of aborting every transaction of the
        others. At least once, a record too large is skipped alone; here no record may
        leave a transaction without aborting it, and sending it alone would put it
        outside any."""
        for topic, delivery in transaction.deliveries:
            if topic in self._refused or not delivery.done():
                continue
            for _, error in delivery.failures():
                if self._inner.is_topic_error(error):
                    reason = self._inner.explain_topic(topic, error) or str(error)
                elif self._inner.is_too_large(error):
                    reason = (f"a record is larger than the topic takes ({error}): at "
                              f"exactly-once set kafka.max_request_size at or below the topic's "
                              f"max.message.bytes")
                else:
                    continue
                self._refused[topic] = (reason, time.monotonic() + REFUSED_FOR)
                break

    # -- the rest is the client's ---------------------------------------------------

    def _produce_job(self, job: Job) -> Sent:
        return self._inner._produce_job(job)

    def is_too_large(self, error: BaseException) -> bool:
        return self._inner.is_too_large(error)

    def is_topic_error(self, error: BaseException) -> bool:
        return self._inner.is_topic_error(error)

    def explain_topic(self, topic: str, error: BaseException | None) -> str | None:
        return self._inner.explain_topic(topic, error)

    def recover(self, generation: int) -> None:
        self._inner.recover(generation)

    def resend_alone(self, job: Job, timeout: float) -> Resent:
        return self._inner.resend_alone(job, timeout)

    def close(self, timeout: float) -> None:
        """Commit what is open (within timeout), then close the client."""
        self._give_up_at = time.monotonic() + timeout
        self._loop.stop()
        self._due.set()
        if self._loop.ident is not None:
            self._loop.join(timeout + COMMIT_WAIT)
        self._inner.close(timeout)


class _TransactionLoop(Service):
    """Owns the end of every transaction: reads the positions first, then commits."""

    def __init__(self, sink: TransactionalSink) -> None:
        super().__init__(name="kafka-transactions")
        self._sink = sink

    def serve(self) -> None:
        """Exactly-once stops with this thread, so an error of a client's own (one that
        is no TransactionFailed) is reported and retried, never a reason to stop."""
        sink = self._sink
        while not self.stopping.is_set():
            if not sink.ready:
                self.stopping.wait(sink.take_back_after())
                self.retry(sink.read_positions, (Exception,), sink.not_ready,
                           Backoff(base=1.0, cap=30.0))
                continue
            sink.wait_due(self.stopping)
            try:
                sink.end_transaction()
            except Exception:
                log.exception("exactly-once: ending a transaction failed unexpectedly")
                self.stopping.wait(COMMIT_WAIT)
        if sink.ready:
            sink.end_transaction()
