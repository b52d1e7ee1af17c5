"""The sink interface: what a worker needs from a Kafka client; it imports no client.

Each client lives in a module of its own, the only importer of its library:
`sink_kafka_python` (the default) and `sink_confluent` (librdkafka, the fast path,
installed separately); `clients` chooses between them. Both keep one contract: acks=all
with idempotence, records identical (value = the line, key = the file's path by default,
headers path, host, offset and the entry's constant fields), delivery known per batch of
lines so that an offset never passes an unacknowledged line, and the agent-wide
in-flight budget, since neither client caps memory the way we need.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence

from logship.netprobe import PROBE_TIMEOUT, TlsFiles, endpoint_failure
from logship.supervisor import Service

if TYPE_CHECKING:
    from logship.checkpoint import CheckpointStore, FileCheckpoint
    from logship.config import KafkaConfig
    from logship.metrics import Metrics
    from logship.spec import Target

log = logging.getLogger(__name__)

Wake = Callable[[], None]
Headers = list[tuple[str, bytes]]
OnError = Callable[[str], None]     # an outage reported, by reason; set before any client runs
REPEAT_EVERY = 60.0
STALL_AFTER = 10.0
RECHECK_EVERY = 10.0            # seconds between looks at a broker found unreachable
EXPLAIN_TIMEOUT = 5.0
NOT_CREATED = ("the topic does not exist and Kafka did not create it when written to "
               "(auto.create.topics.enable=false?): create it")
POSITIONS_PARTITIONS = 25       # Kafka Connect's offset.storage.partitions
POSITIONS_CONFIGS = {"cleanup.policy": "compact"}
BROKER_DEFAULT = -1             # replication factor: the cluster's default.replication.factor
NOT_AUTHORIZED = ("Topic authorization failed (TOPIC_AUTHORIZATION_FAILED): grant the agent's "
                  "principal Write on the topic")


class Delivery(Protocol):
    """The acknowledgement state of one batch of lines handed to the client."""

    def done(self) -> bool:
        """Every record of the batch is settled (acknowledged or failed)."""

    def failures(self) -> list[tuple[int, BaseException]]:
        """(index of the line in the batch, error) of each failed record; once done."""

    def handed_off(self) -> bool:
        """The client holds none of the batch's records any more (the broker settled
        them), though the batch may not count as acknowledged yet: at exactly-once it
        waits for its transaction's commit."""


@dataclass
class Sent:
    """What one send() took: the first `count` lines. Those at the indices in `skipped`
    were refused by the client itself as too large; `delivery` tracks all the others."""

    generation: int
    delivery: Delivery | None = None
    skipped: list[int] = field(default_factory=list)
    count: int = 0
    unavailable: str | None = None      # Kafka cannot take records now (all topics)
    refused: str | None = None          # Kafka refuses this topic, and why

    @property
    def handed_over(self) -> int:
        return self.count - len(self.skipped)


@dataclass(frozen=True)
class Records:
    """The keys and headers of each record, for a source whose records differ in them
    (a journal entry has its unit and cursor), with the cursor each leaves the source at;
    a file's records take theirs from its Envelope."""

    keys: Sequence[bytes | None]
    headers: Sequence[Headers]
    cursors: Sequence[str]


@dataclass(frozen=True)
class Job:
    """A batch of one worker's lines for the client. `position` is the file's position
    after the batch's last line and `epoch` the sink's epoch the worker read from, both
    for exactly-once: the position goes into the batch's transaction, and a batch from
    before an abort is refused."""

    topic: str
    envelope: Envelope
    lines: Sequence[bytes]
    offsets: Sequence[int]
    wake: Wake
    position: FileCheckpoint | None = None
    epoch: int = 0
    records: Records | None = None

    def messages(self) -> Iterator[tuple[bytes, bytes | None, Headers]]:
        """(value, key, headers) of each record, in order; made as the client takes them."""
        if self.records is not None:
            return zip(self.lines, self.records.keys, self.records.headers)
        key, head, tail = self.envelope.key, self.envelope.head, self.envelope.tail
        return ((line, key, [*head, ("offset", b"%d" % offset), *tail])
                for line, offset in zip(self.lines, self.offsets))

    def position_after(self, count: int) -> FileCheckpoint:
        """The position after the first `count` lines (at least one), when the client
        took no more of them."""
        if count == len(self.lines):
            return self.position
        if self.records is not None:
            return replace(self.position, offset=self.offsets[count - 1] + 1,
                           cursor=self.records.cursors[count - 1])
        return replace(self.position, offset=self.offsets[count])

    def part(self, indices: Sequence[int]) -> Job:
        """The records at these indices, as a job of their own (a resend)."""
        records = self.records
        if records is not None:
            records = Records([records.keys[i] for i in indices],
                              [records.headers[i] for i in indices],
                              [records.cursors[i] for i in indices])
        return replace(self, lines=[self.lines[i] for i in indices],
                       offsets=[self.offsets[i] for i in indices], records=records)


@dataclass
class Resent:
    delivered: int = 0
    too_large: int = 0


@dataclass(frozen=True)
class Envelope:
    """What every record of one worker carries besides its value: the record key (the
    file's path, the host, or none) and the headers; `offset` goes between the fixed
    headers (path, host) and the entry's constant fields."""

    key: bytes | None
    head: tuple[tuple[str, bytes], ...]
    tail: tuple[tuple[str, bytes], ...] = ()


class InFlightBudget:
    """Agent-wide memory of lines read and not acknowledged; used once per read and per
    batch, never per line. A read reserves its estimated cost first, atomically, so many
    workers starting at once cannot all pass a check before any of them has taken its
    share: at most one reservation goes past the limit. A worker that finds no room is
    woken when room comes back, one per return of budget, instead of polling."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._waiting: deque[Wake] = deque()

    def reserve(self, nbytes: int, wake: Wake) -> bool:
        """Take nbytes if there is room; else `wake` is called once there is."""
        with self._lock:
            if self.used < self.limit:
                self.used += nbytes
                return True
            self._waiting.append(wake)
            return False

    def take(self, nbytes: int) -> None:
        """Correct a reservation by what the read really costs (may be negative)."""
        with self._lock:
            self.used += nbytes

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes
            wake = self._waiting.popleft() if self._waiting and self.used < self.limit \
                else None
        if wake is not None:
            wake()


class KafkaHealth:
    """Whether Kafka takes and acknowledges lines, as one agent-wide state: an outage is
    said once with the brokers and its cause, repeated at most every minute while it
    lasts, and its end is said with how long it took. Lines are held meanwhile; an outage
    is never a worker crash. The clients' own messages name neither the brokers nor the
    cause, so the cause is found by connecting to each broker (TCP, then TLS), and failing
    that is the client's last connection error (a refused SASL login, for one).

    One broker that cannot be reached is not an outage: its partitions move to the other
    brokers, and the lines go on. It is said as a warning naming it, and again when it is
    back. Kafka is unavailable only when lines cannot be delivered: every broker known is
    unreachable, or no batch has been acknowledged for STALL_AFTER while one waits."""

    def __init__(self, brokers: tuple[str, ...], tls: TlsFiles | None, on_error: OnError) -> None:
        self.brokers = brokers
        self.tls = tls
        self.up = True
        self.cause: str | None = None       # of the outage, for the status document
        self.on_error = on_error
        self.connection_error: str | None = None
        self._down_since: float | None = None
        self._said_at = 0.0
        self._acked_at = time.monotonic()
        self._lock = threading.Lock()
        self._known = set(brokers)          # the bootstrap list and the brokers seen since
        self._suspects: dict[str, str] = {}         # broker -> reason, to be connected to
        self._unreachable: dict[str, float] = {}    # broker -> since when
        self.rechecks_due = threading.Event()

    def unavailable(self, reason: str, cause: str | None = None) -> None:
        """Kafka refused or did not acknowledge. Cheap when said recently: every worker
        may report the same outage. Counted (by `reason`) each time it is said."""
        now = time.monotonic()
        with self._lock:
            since = self._down_since
            if since is not None and now - self._said_at < REPEAT_EVERY:
                return
            self._said_at = now
            self._down_since = since or now
            self.up = False
        self.on_error(reason)
        cause = self.cause = cause or self.probe()
        if since is None:
            log.warning("Kafka unavailable (%s): %s; holding lines", ",".join(self.brokers), cause)
        else:
            log.warning("Kafka still unavailable after %.0fs (%s): %s; holding lines",
                        now - since, ",".join(self.brokers), cause)

    def stalled(self, oldest_sent_at: float, reason: str = "no_ack") -> None:
        """A worker's oldest batch (or a topic's metadata) has been waited for since
        `oldest_sent_at`. Kafka has stopped acknowledging when that is long ago and no
        batch of any worker was acknowledged meanwhile."""
        now = time.monotonic()
        if now - oldest_sent_at > STALL_AFTER and now - self._acked_at > STALL_AFTER:
            self.unavailable(reason)

    def available(self) -> None:
        """Called per acknowledged batch: cheap unless Kafka was down."""
        self._acked_at = time.monotonic()
        if self._down_since is None:
            return
        self.connection_error = None
        with self._lock:
            since, self._down_since = self._down_since, None
            self.up = True
            self.cause = None
        if since is not None:
            log.info("Kafka available again after %.0fs (%s)", time.monotonic() - since,
                     ",".join(self.brokers))

    def broker_failed(self, broker: str, reason: str) -> None:
        """The client lost, or could not make, its connection to one broker (host:port).
        A suspect only: the rechecks connect to it at once, and a broker that answers
        them was merely disconnected (idle, or restarting fast)."""
        with self._lock:
            self._known.add(broker)
            if broker not in self._unreachable:
                self._suspects[broker] = reason
        self.rechecks_due.set()

    def broker_seen(self, broker: str, up: bool) -> None:
        """A broker of the cluster, from the client's metadata; `up`: connected."""
        with self._lock:
            self._known.add(broker)
        if up:
            self._back(broker)

    @property
    def unreachable(self) -> tuple[str, ...]:
        """The brokers the client cannot reach now, for the status and the metrics."""
        return tuple(sorted(self._unreachable))

    @property
    def checking(self) -> bool:
        return bool(self._suspects or self._unreachable)

    def probe(self) -> str:
        """Why Kafka cannot be reached, broker by broker."""
        return "; ".join(f"{broker}: {self._broker_failure(broker)}" for broker in self.brokers)

    def _broker_failure(self, broker: str) -> str:
        host, _, port = broker.rpartition(":")
        return endpoint_failure(host, int(port), self.tls) or self.connection_error \
            or "accepts connections but does not acknowledge"

    def recheck(self) -> None:
        """Connect to each suspect and unreachable broker: one that does not answer is
        unreachable (an outage when every broker known is), one that answers is back."""
        with self._lock:
            brokers = sorted({*self._suspects, *self._unreachable})
        for broker in brokers:
            host, _, port = broker.rpartition(":")
            failure = endpoint_failure(host, int(port), self.tls)
            if failure is None:
                self._back(broker)
            else:
                self._lost(broker, failure)

    def _back(self, broker: str) -> None:
        with self._lock:
            self._suspects.pop(broker, None)
            since = self._unreachable.pop(broker, None)
        if since is not None and self.up:       # else "Kafka available again" says it
            log.info("Kafka broker %s reachable again after %.0fs", broker,
                     time.monotonic() - since)

    def _lost(self, broker: str, failure: str) -> None:
        with self._lock:
            reason = self._suspects.pop(broker, None)
            if reason is None:
                return                              # said when it was first found
            self._unreachable[broker] = time.monotonic()
            everyone = self._known <= self._unreachable.keys()
        if everyone:
            self.unavailable(reason)
            return
        self.on_error(reason)
        log.warning("Kafka broker %s unreachable: %s; its partitions move to the other "
                    "brokers, lines go on", broker, failure)


class BrokerRechecks(Service):
    """Connects to a suspect broker at once, and to an unreachable one every
    RECHECK_EVERY: a client that no longer needs a broker (its partitions moved to the
    others) never connects to it again, and would never say that it is back. Asleep
    while every broker answers. Owned by the sink, stopped when it closes."""

    def __init__(self, health: KafkaHealth) -> None:
        super().__init__(name="kafka-brokers")
        self._health = health

    def serve(self) -> None:
        health = self._health
        while not self.stopping.is_set():
            health.rechecks_due.wait(RECHECK_EVERY if health.checking else None)
            health.rechecks_due.clear()
            if not self.stopping.is_set():
                health.recheck()

    def stop(self) -> None:
        super().stop()
        self._health.rechecks_due.set()
        if self.ident is not None:
            self.join(PROBE_TIMEOUT * 3)


class Sink(ABC):
    """One shared producer for the whole agent, called by one worker at a time, for a
    whole batch: a hundred threads calling kafka-python record by record contend for its
    per-partition locks and the GIL (three quarters of a busy agent's time went waiting
    on one of them), while one caller at a time runs the client's per-record loop
    uncontended. A lock per batch, not a publishing thread: handing each batch to a
    thread of its own cost a GIL hand-off (about 1 ms) per batch, a third of librdkafka's
    own time for it."""

    record_cost = 400
    """Bytes of memory a record costs beside its value, from its read to its
    acknowledgement: its Python objects and the client's queued copy with key and
    headers (measured with 100 busy files). Counted against kafka.buffer_bytes and
    files.max_in_flight_bytes, so that many busy files of short lines stay within them."""

    epoch = 0
    """Moves when what was sent since the last commit is void (an aborted transaction,
    positions read again from Kafka): a worker then reads again from its saved offsets.
    Always 0 at least once."""

    def __init__(self, config: KafkaConfig, host: bytes, on_error: OnError) -> None:
        self.config = config
        self.budget = InFlightBudget(config.buffer_bytes)
        tls = TlsFiles(config.ssl_cafile, config.ssl_certfile, config.ssl_keyfile) \
            if config.security_protocol in ("SSL", "SASL_SSL") else None
        self.health = KafkaHealth(config.bootstrap_servers, tls, on_error)
        self.host = host
        self._client_lock = threading.Lock()
        self._no_metadata: dict[str, float] = {}    # topic -> when its metadata was first missed
        self._rechecks = BrokerRechecks(self.health)

    def metadata_missing(self, topic: str, reason: str) -> None:
        """Kafka gave no metadata for the topic (no leader: a broker's partitions moving,
        or Kafka down). An outage only once it lasts as long as an unacknowledged batch
        would, and nothing else was acknowledged meanwhile."""
        self.health.stalled(self._no_metadata.setdefault(topic, time.monotonic()), reason)

    def metadata_found(self, topic: str) -> None:
        self._no_metadata.pop(topic, None)

    def envelope(self, target: Target) -> Envelope:
        """The record key and headers of a target's records, made once per worker."""
        options = target.options
        path = target.path.encode()
        key = {"path": path, "host": self.host}.get(options.key)   # none; a journal's: its own
        tail = tuple((name, header_value(value)) for name, value in options.fields) \
            if options.format == "raw" else ()
        return Envelope(key, (("path", path), ("host", self.host)), tail)

    def send(self, job: Job) -> Sent:
        """On a worker's thread: hand lines over in order, one worker at a time; `wake`
        is called (on any thread) when the batch is settled. Stops early when Kafka cannot
        take records now (`Sent.unavailable`) or refuses the topic (`Sent.refused`)."""
        early = self.prepare(job.topic)
        if early is not None:
            return early
        with self._client_lock:
            return self._produce_job(job)

    def start(self, store: CheckpointStore, metrics: Metrics) -> None:
        """Called once the agent adopts the sink, before any worker uses it."""
        self._rechecks.start()

    def wait_ready(self, stopping: threading.Event) -> bool:
        """Block until workers may read their offsets from the store (exactly-once: once
        the positions kept in Kafka are in it). False if `stopping` was set first."""
        return not stopping.is_set()

    def release_waiters(self) -> None:
        """A worker was told to stop: those in wait_ready() look at their stop again."""

    def hurry(self) -> None:
        """A worker waits for acknowledgements to read on (its in-flight bound, or the
        agent's): at least once they come by themselves."""

    def note_positions(self, positions: Sequence[FileCheckpoint]) -> None:
        """Files opened at these positions, no line of them sent yet."""

    def forget(self, checkpoint: FileCheckpoint) -> None:
        """A file is finished: rotated away and drained, gone, or no longer wanted."""

    @property
    def delivery(self) -> str:
        return self.config.delivery

    def prepare(self, topic: str) -> Sent | None:
        """Before the client's lock is taken: anything that may block for one topic (a
        client waiting for its metadata) is done here, so that no other worker waits for
        one topic. A Sent when the batch cannot go."""
        return None

    @abstractmethod
    def _produce_job(self, job: Job) -> Sent:
        """Under the client's lock: hand the job's lines to the client, in order."""

    @abstractmethod
    def is_too_large(self, error: BaseException) -> bool:
        """The broker refused the record as too large: skipping it is the only way on."""

    @abstractmethod
    def is_topic_error(self, error: BaseException) -> bool:
        """A record failed for its topic (unknown, invalid, not authorized), not for
        Kafka as a whole."""

    @abstractmethod
    def explain_topic(self, topic: str, error: BaseException | None) -> str | None:
        """Why Kafka refuses the topic after `error` (None: no metadata for it): an
        authorization error says so itself; otherwise Kafka's own words from a
        validate-only creation (a name that collides, a topic policy). None when it does
        not refuse the topic or cannot be asked."""

    @abstractmethod
    def recover(self, generation: int) -> None:
        """Called after records were refused as too large by the broker: replace the
        producer if that left it unusable (once per generation)."""

    @abstractmethod
    def resend_alone(self, job: Job, timeout: float) -> Resent:
        """Resend each record in a request of its own and wait, so that only a record
        that is too large by itself fails."""

    @abstractmethod
    def close(self, timeout: float) -> None:
        """Flush what can be flushed within timeout, then release the client."""


class TransactionFailed(Exception):
    """A transactional call failed. `fatal`: the producer can do nothing more; it is
    replaced and the positions are read again. `fenced`: fatal because another producer
    took the transactional id. Otherwise the open transaction is aborted and the loop
    goes on."""

    def __init__(self, cause: str, fatal: bool = False, fenced: bool = False) -> None:
        super().__init__(cause)
        self.fatal = fatal or fenced
        self.fenced = fenced


class Transactions(ABC):
    """What the transaction loop needs of a client (exactly-once): each client maps only
    its own transactional calls and errors (TransactionFailed) onto these. The loop calls
    them under the sink's lock, so no record is produced while a transaction ends."""

    @abstractmethod
    def init(self, timeout: float) -> bool:
        """Take the transactional id: aborts what a previous producer with it left open
        and fences that producer off. False when Kafka did not answer within timeout."""

    @abstractmethod
    def begin(self) -> None:
        """Open a transaction; records produced from now on belong to it."""

    @abstractmethod
    def produce_position(self, topic: str, partition: int, key: bytes,
                         value: bytes | None) -> None:
        """A position record (None: a tombstone) into the open transaction."""

    @abstractmethod
    def commit(self, timeout: float) -> bool:
        """Commit the open transaction; False when it has not ended within timeout (call
        again: it goes on in the background)."""

    @abstractmethod
    def abort(self, timeout: float) -> bool:
        """Abort the open transaction; False when it has not ended within timeout."""

    @abstractmethod
    def renew(self) -> None:
        """Replace the producer after a fenced or fatal error; init() follows."""

    @abstractmethod
    def positions_partitions(self, topic: str, timeout: float) -> int:
        """The partition count of the positions topic, created (compacted) when missing;
        TransactionFailed naming the permission when it can be neither read nor made."""

    @abstractmethod
    def read_positions(self, topic: str, partition: int,
                       timeout: float) -> list[tuple[bytes, bytes | None]]:
        """Every committed (key, value) of one partition, oldest first, read up to its end
        as a read_committed consumer."""


def positions_not_created(topic: str, why: str) -> str:
    return (f"kafka.offsets_topic {topic}: missing, and Kafka did not create it ({why}): grant "
            f"the agent's principal Create on the topic (or the cluster), or create it with "
            f"cleanup.policy=compact")


class PositionsPending(TransactionFailed):
    """The offsets topic exists but Kafka does not serve it yet: just created, its
    metadata not yet on every broker, or its partitions' leaders moving. Waited for."""


def positions_unreadable(topic: str, why: str, refused: bool = False,
                         pending: bool = False) -> TransactionFailed:
    """What keeps the positions from being read, named as Kafka names it: a missing
    right only when Kafka refused one."""
    if pending:
        return PositionsPending(f"kafka.offsets_topic {topic}: not yet served by every broker "
                                f"({why}): Kafka has just created it or is moving its leaders")
    hint = ": the agent's principal needs Read and Write on the topic" if refused else ""
    return TransactionFailed(f"kafka.offsets_topic {topic}: cannot be read ({why}){hint}")


def line_failures(failed: list[tuple[int, BaseException]],
                  skipped: list[int]) -> list[tuple[int, BaseException]]:
    """Failures numbered among the records handed over, renumbered among the batch's
    lines (the lines at `skipped` were never handed over)."""
    if not failed or not skipped:
        return failed
    excluded = set(skipped)
    line_of = [i for i in range(len(skipped) + max(i for i, _ in failed) + 1)
               if i not in excluded]
    return [(line_of[i], error) for i, error in failed]


SECURITY_FIELDS = ("security_protocol", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
                   "sasl_mechanism", "sasl_username", "sasl_password")


def security_settings(config: KafkaConfig, names: dict[str, str]) -> dict[str, str]:
    """kafka.security_protocol and its companions under the client's own names; a
    field left unset is left out, so the client's default applies."""
    return {names[field]: getattr(config, field) for field in SECURITY_FIELDS
            if getattr(config, field) is not None}


def managed_security(names: dict[str, str]) -> dict[str, str]:
    """The client's own names for the security fields, refused in kafka.producer."""
    return {name: f"kafka.{field}" for field, name in names.items()}


def header_value(value: str | int | float | bool) -> bytes:
    """A constant field as a header: its JSON text, but a string is its own bytes."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()
