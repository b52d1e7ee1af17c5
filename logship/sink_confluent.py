"""The only importer of confluent_kafka: the fast path, librdkafka (`pip install confluent-kafka`).

Delivery reports run inside poll(), on the thread that calls it. One poller thread,
owned by the sink, is the only caller of poll(), so each batch's counters have a
single writer. Every record carries its batch's bound method as its delivery callback:
per batch and not per record would be cheaper, but it is not safe. librdkafka can
fail a whole message set (a broker that refuses a message as too large) and then
deliver later ones of the same partition without a fatal error, so a batch's last
record being acknowledged does not prove the ones before it were.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from logship.errors import ConfigError, SinkError
from logship.sink import (BROKER_DEFAULT, EXPLAIN_TIMEOUT, NOT_AUTHORIZED, NOT_CREATED,
                          POSITIONS_CONFIGS, POSITIONS_PARTITIONS, Headers, Job, OnError,
                          Resent, Sent, Sink, TransactionFailed, Transactions, Wake,
                          line_failures, managed_security, positions_not_created,
                          positions_unreadable, security_settings)
from logship.supervisor import Service

if TYPE_CHECKING:
    from logship.checkpoint import CheckpointStore
    from logship.config import KafkaConfig
    from logship.metrics import Metrics

log = logging.getLogger(__name__)

SECURITY = {
    "security_protocol": "security.protocol",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
}
MANAGED = {
    **managed_security(SECURITY),
    "sasl.mechanism": "kafka.sasl_mechanism",
    "bootstrap.servers": "kafka.bootstrap_servers",
    "compression.type": "kafka.compression",
    "compression.codec": "kafka.compression",
    "message.max.bytes": "kafka.max_request_size",
    "queue.buffering.max.kbytes": "kafka.buffer_bytes",
    "acks": "nothing: logship always uses acks=all",
    "request.required.acks": "nothing: logship always uses acks=all",
    "enable.idempotence": "nothing: logship always uses idempotence",
    "message.timeout.ms": "nothing: lines are held until Kafka takes them",
    "delivery.timeout.ms": "nothing: lines are held until Kafka takes them",
    "on_delivery": "nothing: logship tracks deliveries itself",
    "error_cb": "nothing: logship reports errors itself",
    "stats_cb": "nothing: logship reads librdkafka's statistics itself",
    "transactional.id": "kafka.delivery: exactly-once (the id is logship-<agent.name>)",
}
# topic.metadata.propagation.max.ms: records to a topic Kafka does not create fail after
# 5 s (not 30 s), well before an unacknowledged batch counts as a Kafka-wide outage; the
# worker sends them again, so a slow creation costs a retry, never a line. A new topic's
# first lines wait for it in prepare(), as long, counted from Kafka's first answer.
TOPIC_PROPAGATION = 5.0
DEFAULTS = {"linger.ms": 5, "batch.size": 1024 * 1024,
            "topic.metadata.propagation.max.ms": int(TOPIC_PROPAGATION * 1000)}
TOPIC_ASK_TIMEOUT = 1.0         # a worker's wait for a topic's metadata, or for its asker
TOPIC_ASK_AGAIN = 0.05
# A transaction begun just after a commit cannot add its partitions until the coordinator
# has written the last one's markers (CONCURRENT_TRANSACTIONS), and librdkafka asks again
# after retry.backoff.ms: 100 ms by default, half of a transaction_interval, in which the
# records wait and the next commit has them all to flush. 20 ms, as the Java client waits.
TRANSACTION_DEFAULTS = {"retry.backoff.ms": 20}
TOPIC_ERRORS = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.TOPIC_EXCEPTION)
BROKER_FAILURES = {KafkaError._TRANSPORT: "transport", KafkaError._RESOLVE: "resolve",
                   KafkaError._TIMED_OUT: "timeout"}
REFUSED = {KafkaError._AUTHENTICATION: "authentication", KafkaError._SSL: "tls"}
FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
          KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
# produce() on the hot path takes its arguments by position: (topic, value, key, partition,
# on_delivery, its alias, timestamp, headers), confluent-kafka's order since headers came
# (2018). With any keyword, the binding's argument parser looks its parameter names up in
# the keywords one by one, making a string of each: 2.5 µs a record against 1.7 (three
# headers, into librdkafka's queue; 2.4 against 2.0 through the sink's batch loop, reports
# not counted, on librdkafka's mock cluster). The partition left to librdkafka's
# partitioner (by key) is RD_KAFKA_PARTITION_UA; a timestamp of 0 is "now".
ANY_PARTITION = -1
POLL_TIMEOUT = 0.5
IDLE_POLL_INTERVAL = 2.0
BROKER_PREFIX = re.compile(r"^\w+://[^/ ]+/\S+: | \(after \d+ms in state \w+\)$")
BROKER_ERROR = re.compile(r"^(?:\w+://)?(?P<broker>[^/ ]+)/\w+: ")
"""librdkafka's words for one broker's failure: '127.0.0.1:9093/2: Connect to
ipv4#127.0.0.1:9093 failed: Connection refused (after 0ms in state CONNECT)', or
'127.0.0.1:9093/2: Disconnected (after 3015ms in state UP)'."""
BROKER_STATS_EVERY = 10.0
"""Seconds between librdkafka's statistics: the brokers of the cluster, and which are up."""


def _settings(config: KafkaConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        **DEFAULTS, **(TRANSACTION_DEFAULTS if "transactional.id" in overrides else {}),
        **dict(config.producer), **security_settings(config, SECURITY),
        "bootstrap.servers": ",".join(config.bootstrap_servers),
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 0,        # infinite: an outage holds lines, never fails them
        "compression.type": config.compression,
        "message.max.bytes": config.max_request_size,
        # our own budget (kafka.buffer_bytes) bounds what is queued, well before these
        "queue.buffering.max.kbytes": max(1, 2 * config.buffer_bytes // 1024),
        "queue.buffering.max.messages": 10_000_000,
        "logger": log,
        # Errors reach error_cb (and KafkaHealth) once each; librdkafka's log would repeat
        # every failed reconnect a few times a second.
        "log_level": 2,
        **overrides,
    }


def check_producer_settings(config: KafkaConfig) -> None:
    """librdkafka judges its own properties: build a producer (it connects in the
    background, so this needs no broker) and drop it."""
    for name in dict(config.producer):
        if name in MANAGED:
            raise ConfigError(f"kafka.producer.{name}: managed by logship; set {MANAGED[name]}")
    try:
        Producer(_settings(config, {"bootstrap.servers": "", "log_level": 0}))
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"kafka.producer: {_describe(exc)}") from None


def reach_broker(config: KafkaConfig, broker: str, timeout: float) -> str:
    """Fetch the cluster's metadata from this broker alone, with the configured security.
    A refused login or handshake reaches only the error callback (the metadata call says
    "transport failure"), so that is the cause when there is one."""
    refusals: list[str] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in REFUSED:
            refusals.append(BROKER_PREFIX.sub("", error.str()))
    producer = Producer(_settings(config, {"bootstrap.servers": broker, "log_level": 0,
                                           "error_cb": on_error}))
    try:
        metadata = producer.list_topics(timeout=timeout)
    except KafkaException as exc:
        producer.poll(0)            # serves the error callbacks
        raise SinkError(refusals[-1] if refusals else _describe(exc)) from None
    return f"cluster {metadata.cluster_id}, {len(metadata.brokers)} brokers"


def _code(error: BaseException | None) -> int | None:
    return error.args[0].code() if isinstance(error, KafkaException) and error.args else None


def _describe(exc: BaseException) -> str:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return error.str() if error is not None else str(exc)


class BatchDelivery:
    """Counters of one batch, written only by the poller thread.

    A failed message no longer has its headers, so a failure is known by its place in
    the batch: the reports of one partition come in produce order, and every record of
    a batch with a key has the same key, so the same partition. Records without a key
    may go to several partitions: each then reports through `at(its index)`."""

    __slots__ = ("total", "acked", "errors", "skipped", "wake", "on_success")

    def __init__(self, skipped: list[int], wake: Wake, on_success: Wake) -> None:
        self.total = -1
        self.acked = 0
        self.errors: list[tuple[int, BaseException]] = []
        self.skipped = skipped
        self.wake = wake
        self.on_success = on_success

    def __call__(self, error: KafkaError | None, _message: Any) -> None:
        self.report(self.acked, error)

    def at(self, index: int) -> Callable[[KafkaError | None, Any], None]:
        return partial(self.report, index)

    def report(self, index: int, error: KafkaError | None, _message: Any = None) -> None:
        if error is not None:
            self.errors.append((index, KafkaException(error)))
        self.acked += 1
        if self.acked == self.total:
            if not self.errors:
                self.on_success()
            self.wake()

    def done(self) -> bool:
        return self.acked == self.total

    handed_off = done

    def failures(self) -> list[tuple[int, BaseException]]:
        return line_failures(sorted(self.errors, key=lambda failure: failure[0]), self.skipped)


class _Poller(Service):
    """Serves the producer's delivery reports and error callbacks. confluent-kafka's poll
    comes back to Python every 200 ms whatever its timeout (to see signals), a wake-up
    that cost an idle agent a fifth of its CPU: with nothing queued, in flight or to
    report (its length counts error callbacks too), the poller sleeps until records are
    produced, and looks at that length again every IDLE_POLL_INTERVAL."""

    def __init__(self, sink: ConfluentSink) -> None:
        super().__init__(name="kafka-poller")
        self._sink = sink
        self.produced = threading.Event()

    def stop(self) -> None:
        super().stop()
        self.produced.set()

    def serve(self) -> None:
        """Acknowledgements stop with this thread, so a failing callback is a bug to
        log, never a reason to stop polling. `produced` is cleared before the producer
        is looked at, so a record produced after that look sets it again."""
        while not self.stopping.is_set():
            self.produced.clear()
            producer = self._sink.producer
            if not len(producer) and not self.produced.wait(IDLE_POLL_INTERVAL):
                continue
            try:
                producer.poll(POLL_TIMEOUT)
            except KafkaException as exc:
                self._sink.on_fatal(exc.args[0])
            except Exception:
                log.exception("Kafka delivery callback failed")


def _serve_last_reports(producer: Producer) -> None:
    """The purged records' reports, so that their workers send them again. The first poll
    after a fatal error (a fenced transactional producer) raises it, once, when the
    poller thread has not polled since (a CI run at c5baf38): that error is why the
    producer is replaced, and the next poll serves the rest."""
    for _ in range(2):
        try:
            producer.poll(0)
            return
        except KafkaException:
            continue


class ConfluentSink(Sink):
    record_cost = 1500      # librdkafka's message with its own copies of key and headers,
                            # allocated on the workers' threads (measured, 100 busy files)

    def __init__(self, config: KafkaConfig, host: bytes, on_error: OnError,
                 transactional_id: str | None = None) -> None:
        super().__init__(config, host, on_error)
        self._lock = threading.Lock()
        self._isolation: Producer | None = None
        self._fatal: KafkaError | None = None
        self._own: dict[str, Any] = {"error_cb": self._on_error, "stats_cb": self._on_stats,
                                     "statistics.interval.ms": int(BROKER_STATS_EVERY * 1000)}
        if transactional_id:
            # a fenced producer is said once, by the transaction loop: librdkafka's own
            # critical lines would say it twice more
            self._own |= {"transactional.id": transactional_id, "log_level": 1}
        self.producer = self._new_producer(self._own)
        self._poller = _Poller(self)
        self._topics: set[str] = set()              # that Kafka has shown to exist
        self._disconnects: dict[str, int] = {}      # stats entry -> its disconnects then
        self._listed = set(config.bootstrap_servers)    # brokers in the last statistics
        self._missing: dict[str, float] = {}        # topic -> when Kafka first lacked it
        self._asking = threading.Lock()

    def start(self, store: CheckpointStore, metrics: Metrics) -> None:
        """The poller serves librdkafka's reports and errors from here on: an error of
        the first connection is said once the agent's /metrics can count it."""
        super().start(store, metrics)
        self._poller.start()

    def _new_producer(self, overrides: dict[str, Any]) -> Producer:
        try:
            return Producer(_settings(self.config, overrides))
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"kafka: cannot create the producer: {_describe(exc)}") from None

    def _on_error(self, error: KafkaError) -> None:
        """On the poller thread. librdkafka's words for an outage vary with the moment it
        is noticed ("1/1 brokers are down"), so the cause comes from probing the brokers,
        as on the other client; a refused login or handshake is that probe's fallback.
        One broker's failure is that broker's, unless it names none."""
        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            self.health.unavailable("all_brokers_down")
        elif code in BROKER_FAILURES:
            failure = BROKER_ERROR.match(error.str())
            if failure is None:
                self.health.unavailable(BROKER_FAILURES[code])
            else:
                self.health.broker_failed(failure["broker"], BROKER_FAILURES[code])
        elif code in REFUSED:
            self.health.connection_error = BROKER_PREFIX.sub("", error.str())
            self.health.unavailable(REFUSED[code])
        elif error.fatal():
            self.on_fatal(error)
        else:
            log.warning("Kafka: %s", error.str())

    def _on_stats(self, stats: str) -> None:
        """On the poller thread, every BROKER_STATS_EVERY: the cluster's brokers and which
        are up. librdkafka says nothing of a broker that closed its connections (a
        stopped one): a broker whose disconnects grew is a suspect, and so is one that
        left its list since the last statistics (the bootstrap list, the first time). One
        merely idle answers the rechecks."""
        listed = set()
        for entry in json.loads(stats).get("brokers", {}).values():
            broker, disconnects = entry["nodename"], entry.get("disconnects", 0)
            listed.add(broker)
            self.health.broker_seen(broker, up=entry.get("state") == "UP")
            if disconnects > self._disconnects.get(entry["name"], 0):
                self.health.broker_failed(broker, "transport")
            self._disconnects[entry["name"]] = disconnects
        for broker in self._listed - listed:
            self.health.broker_failed(broker, "transport")
        self._listed = listed

    def on_fatal(self, error: KafkaError) -> None:
        """An idempotent producer that hit a fatal error (the broker refused it the right
        to write, say) fails every later record: the next send() replaces it. A
        transactional one is replaced by the transaction loop, which says why."""
        self._fatal = error
        if "transactional.id" in self._own:
            return
        self.health.unavailable("fatal", f"{','.join(self.config.bootstrap_servers)}: "
                                         f"{BROKER_PREFIX.sub('', error.str())}")

    def _replace_fatal_producer(self) -> None:
        """Its records still queued fail (purged), so their workers resend them."""
        with self._lock:
            if self._fatal is None:
                return
            self._renew()
        log.warning("Kafka producer replaced after a fatal error")

    def _renew(self) -> None:
        old, self._fatal = self.producer, None
        self.producer = self._new_producer(self._own)
        old.purge()
        _serve_last_reports(old)

    def renew(self) -> None:
        """A transactional producer that was fenced or failed: the transaction loop
        replaces it (and takes the transactional id again) itself."""
        with self._lock:
            self._renew()

    def is_too_large(self, error: BaseException) -> bool:
        return _code(error) in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD)

    def prepare(self, topic: str) -> Sent | None:
        """librdkafka counts topic.metadata.propagation.max.ms from a topic's first record,
        not from Kafka's first answer: records of a new topic queued while Kafka is down
        longer than that fail as an unknown topic at its first answer, the very one that
        has Kafka create the topic (a run where Kafka started 5.5 s after the agent, and
        the worker restarted on a refused topic). So a topic's metadata is asked for
        before its first record, by one worker at a time: its lines are held, as in an
        outage, until Kafka shows the topic; one Kafka lacks that long is explained."""
        if topic in self._topics:
            return None
        if not self._asking.acquire(timeout=TOPIC_ASK_TIMEOUT):
            return Sent(0, unavailable=f"waiting for the metadata of topic {topic}")
        try:
            return None if topic in self._topics else self._ask_for(topic)
        finally:
            self._asking.release()

    def _ask_for(self, topic: str) -> Sent | None:
        """Asked again for a while: the first answer about a new topic is often the one
        that has Kafka create it."""
        deadline = time.monotonic() + TOPIC_ASK_TIMEOUT
        while True:
            try:
                described = self.producer.list_topics(topic, timeout=TOPIC_ASK_TIMEOUT) \
                    .topics[topic]
            except KafkaException as exc:
                # An outage's cause reaches the error callback; a Kafka that says nothing
                # is said once the topic has gone unanswered as long as a batch would.
                self.metadata_missing(topic, "no_ack")
                return Sent(0, unavailable=f"no metadata for topic {topic}: {_describe(exc)}")
            self.metadata_found(topic)
            error = described.error
            if error is None and described.partitions:
                self._topics.add(topic)
                self._missing.pop(topic, None)
                return None
            if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                return Sent(0, refused=NOT_AUTHORIZED)
            if time.monotonic() >= deadline:
                return self._lacked(topic, error)
            time.sleep(TOPIC_ASK_AGAIN)

    def _lacked(self, topic: str, error: KafkaError | None) -> Sent:
        """Kafka answers without the topic: its lines are held for as long as librdkafka
        would give its metadata to spread, then Kafka is asked why."""
        now = time.monotonic()
        refused = None
        if now - self._missing.setdefault(topic, now) >= TOPIC_PROPAGATION:
            # None: it exists by now, or Kafka did not say why not
            cause = KafkaException(error) if error is not None else None
            refused = self.explain_topic(topic, cause)
        if refused is None:
            return Sent(0, unavailable=f"topic {topic} not in Kafka's metadata yet")
        del self._missing[topic]    # the entry's restart gives the topic its time again
        return Sent(0, refused=refused)

    def _produce_job(self, job: Job) -> Sent:
        if self._fatal is not None and "transactional.id" not in self._own:
            self._replace_fatal_producer()
        sent = Sent(0)
        batch = BatchDelivery(sent.skipped, job.wake, self.health.available)
        produce = self.producer.produce
        topic = job.topic
        try:
            for line, key, headers in job.messages():
                try:
                    produce(topic, line, key, ANY_PARTITION,
                            batch if key is not None else batch.at(sent.count), None, 0,
                            headers)
                except KafkaException as exc:
                    if not self.is_too_large(exc):
                        raise
                    sent.skipped.append(sent.count)
                sent.count += 1
        except BufferError:
            sent.unavailable = "librdkafka's queue is full"
            self.health.unavailable("queue_full", sent.unavailable)
        except KafkaException as exc:
            raise SinkError(f"topic={topic}: send failed: {_describe(exc)}") from None
        if sent.handed_over:
            batch.total = sent.handed_over
            sent.delivery = batch
            self._poller.produced.set()
        return sent

    def is_topic_error(self, error: BaseException) -> bool:
        return _code(error) in TOPIC_ERRORS

    def explain_topic(self, topic: str, error: BaseException | None) -> str | None:
        if _code(error) == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            return NOT_AUTHORIZED
        admin = self.admin()
        future = admin.create_topics([NewTopic(topic)], validate_only=True,
                                     request_timeout=EXPLAIN_TIMEOUT)[topic]
        try:
            future.result(EXPLAIN_TIMEOUT)
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is None or error.code() in (KafkaError.TOPIC_ALREADY_EXISTS,
                                                 KafkaError._TIMED_OUT, KafkaError._TRANSPORT):
                return None
            return error.str()
        except Exception:       # concurrent.futures' TimeoutError: Kafka did not answer
            return None
        return NOT_CREATED

    def recover(self, generation: int) -> None:
        """librdkafka fails the refused message set alone and keeps going."""

    def resend_alone(self, job: Job, timeout: float) -> Resent:
        """One message per message set and one request in flight, without idempotence,
        through a producer that the poller never polls: each report arrives in the flush()
        of the thread that waits for it, and only a record too large by itself fails."""
        with self._lock:
            if self._isolation is None:
                self._isolation = self._new_producer({
                    "enable.idempotence": False, "linger.ms": 0, "batch.num.messages": 1,
                    "max.in.flight.requests.per.connection": 1})
            producer = self._isolation
        resent = Resent()
        for line, key, headers in job.messages():
            error = self._send_alone(producer, job.topic, line, key, headers, timeout)
            if error is None:
                resent.delivered += 1
            elif self.is_too_large(KafkaException(error)):
                resent.too_large += 1
            else:
                raise SinkError(f"topic={job.topic}: resend failed: {error.str()}")
        return resent

    def _send_alone(self, producer: Producer, topic: str, line: bytes, key: bytes | None,
                    headers: Headers, timeout: float) -> KafkaError | None:
        reports: list[KafkaError | None] = []
        try:
            producer.produce(topic, line, key, headers=headers,
                             on_delivery=lambda error, _message: reports.append(error))
        except KafkaException as exc:
            return exc.args[0]
        producer.flush(timeout)
        return reports[0] if reports else KafkaError(KafkaError._TIMED_OUT)

    def close(self, timeout: float) -> None:
        """The poller stops first, so that flush() is then the only caller of poll()."""
        self._rechecks.stop()
        self._poller.stop()
        if self._poller.ident is not None:
            self._poller.join(POLL_TIMEOUT * 2)
        remaining = self.producer.flush(timeout)
        if self._isolation is not None:
            self._isolation.flush(0)
        if remaining:
            log.warning("Kafka did not acknowledge %d record(s) within %.0fs", remaining, timeout)


    def admin(self) -> AdminClient:
        return AdminClient(_settings(self.config, {"log_level": 0}))   # a producer handle

    def consumer(self, settings: dict[str, Any]) -> Consumer:
        config = self.config
        return Consumer({**security_settings(config, SECURITY),
                         "bootstrap.servers": ",".join(config.bootstrap_servers),
                         "enable.auto.commit": False, "logger": log, "log_level": 2,
                         **settings})


class ConfluentTransactions(Transactions):
    """librdkafka's transactional producer: its calls take a timeout, and its errors say
    themselves whether to retry, abort, or give the producer up."""

    def __init__(self, sink: ConfluentSink) -> None:
        self._sink = sink

    def init(self, timeout: float) -> bool:
        return self._call("taking the transactional id", self._sink.producer.init_transactions,
                          timeout)

    def begin(self) -> None:
        try:
            self._sink.producer.begin_transaction()
        except KafkaException as exc:
            raise TransactionFailed(f"beginning a transaction: {_describe(exc)}", fatal=True,
                                    fenced=_code(exc) in FENCED) from None

    def produce_position(self, topic: str, partition: int, key: bytes,
                         value: bytes | None) -> None:
        try:
            self._sink.producer.produce(topic, value, key, partition=partition)
        except (KafkaException, BufferError) as exc:
            raise TransactionFailed(f"writing a position to {topic}: {_describe(exc)}") from None

    def commit(self, timeout: float) -> bool:
        return self._call("committing", self._sink.producer.commit_transaction, timeout)

    def abort(self, timeout: float) -> bool:
        return self._call("aborting", self._sink.producer.abort_transaction, timeout)

    def _call(self, doing: str, call: Callable[[float], None], timeout: float) -> bool:
        """False when the call timed out and may be made again."""
        try:
            call(timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if error.retriable() and not error.txn_requires_abort():
                return False
            raise TransactionFailed(f"{doing}: {error.str()}", fatal=not error.txn_requires_abort(),
                                    fenced=error.code() in FENCED) from None
        return True

    def renew(self) -> None:
        self._sink.renew()

    def positions_partitions(self, topic: str, timeout: float) -> int:
        admin = self._sink.admin()
        try:
            metadata = admin.list_topics(timeout=timeout)
            if topic not in metadata.topics:
                future = admin.create_topics([NewTopic(topic, POSITIONS_PARTITIONS,
                                                       BROKER_DEFAULT, config=POSITIONS_CONFIGS)],
                                             request_timeout=timeout)[topic]
                try:
                    future.result(timeout)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise TransactionFailed(positions_not_created(topic, _describe(exc))) \
                            from None
                metadata = admin.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise _unreadable(topic, exc.args[0]) from None
        described = metadata.topics[topic]
        if described.error is not None:
            raise _unreadable(topic, described.error)
        return len(described.partitions)

    def read_positions(self, topic: str, partition: int,
                       timeout: float) -> list[tuple[bytes, bytes | None]]:
        consumer = self._sink.consumer({"group.id": "logship-positions",
                                        "isolation.level": "read_committed",
                                        "enable.partition.eof": True})
        records: list[tuple[bytes, bytes | None]] = []
        deadline = time.monotonic() + timeout
        try:
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            while True:
                if time.monotonic() > deadline:
                    raise positions_unreadable(topic, f"not read to its end within {timeout:g}s")
                for message in consumer.consume(1000, 0.2):
                    error = message.error()
                    if error is None:
                        records.append((message.key(), message.value()))
                    elif error.code() == KafkaError._PARTITION_EOF:
                        return records
                    elif error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                        continue    # librdkafka looks up the coordinator of the group.id
                                    # it requires; an assign()-only reader never uses it
                    else:
                        raise _unreadable(topic, error)
        finally:
            consumer.close()


NOT_SERVED_YET = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                  KafkaError._UNKNOWN_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.NOT_LEADER_FOR_PARTITION)


def _unreadable(topic: str, error: KafkaError) -> TransactionFailed:
    """A right Kafka refused, or a topic it does not serve yet (just created, a leader
    moving), or another error."""
    code = error.code()
    return positions_unreadable(topic, error.str(),
                                refused=code == KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                pending=code in NOT_SERVED_YET or error.retriable())


def open_sink(config: KafkaConfig, host: bytes, on_error: OnError,
              transactional_id: str | None = None) -> ConfluentSink:
    return ConfluentSink(config, host, on_error, transactional_id)


def transactions(sink: ConfluentSink) -> Transactions:
    return ConfluentTransactions(sink)
