"""The only importer of kafka: the default client, kafka-python.

send() returns a future per record; a batch is settled when its last future is done
(checked first, the scan of all runs once). kafka-python's callbacks run on its sender
thread and swallow exceptions, so the only one we add just wakes the worker.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (AuthorizationError, InvalidProducerEpochError, InvalidTopicError,
                          KafkaConnectionError, KafkaError, KafkaTimeoutError,
                          MessageSizeTooLargeError, ProducerFencedError,
                          RecordListTooLargeError, SaslAuthenticationFailedError,
                          TopicAlreadyExistsError, TopicAuthorizationFailedError,
                          TransactionalIdAuthorizationFailedError,
                          UnknownTopicOrPartitionError, for_code)
from kafka.partitioner.default import DefaultPartitioner
from kafka.producer.future import FutureRecordMetadata
from kafka.producer.transaction_manager import TransactionManager

from logship.errors import ConfigError, SinkError
from logship.sink import (BROKER_DEFAULT, EXPLAIN_TIMEOUT, NOT_AUTHORIZED, NOT_CREATED,
                          POSITIONS_CONFIGS, POSITIONS_PARTITIONS, Job, KafkaHealth,
                          OnError, Resent, Sent, Sink, TransactionFailed, Transactions,
                          line_failures, managed_security, positions_not_created,
                          positions_unreadable, security_settings)

if TYPE_CHECKING:
    from logship.config import KafkaConfig

log = logging.getLogger(__name__)

SECURITY = {
    "security_protocol": "security_protocol",
    "ssl_cafile": "ssl_cafile",
    "ssl_certfile": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
    "sasl_mechanism": "sasl_mechanism",
    "sasl_username": "sasl_plain_username",
    "sasl_password": "sasl_plain_password",
}
MANAGED = {
    **managed_security(SECURITY),
    "bootstrap_servers": "kafka.bootstrap_servers",
    "api_version": "kafka.api_version",
    "max_block_ms": "kafka.max_block_ms",
    "max_request_size": "kafka.max_request_size",
    "compression_type": "kafka.compression",
    "acks": "nothing: logship always uses acks=all",
    "enable_idempotence": "nothing: logship always uses idempotence",
    "delivery_timeout_ms": "nothing: lines are held until Kafka takes them",
    "key_serializer": "nothing: keys are the file paths",
    "partitioner": "nothing: records are partitioned by their key, the file's path",
    "value_serializer": "nothing: values are the lines",
    "transactional_id": "kafka.delivery: exactly-once (the id is logship-<agent.name>)",
}
DEFAULTS = {"linger_ms": 5, "batch_size": 256 * 1024}
DISCARD_WAIT = 5.0
HELD = 2**31 - 1        # delivery_timeout_ms: an outage holds lines, it never fails them
CONNECTIONS_LOG = logging.getLogger("kafka.net")
REFUSALS = (SaslAuthenticationFailedError, AuthorizationError, ssl.SSLError)
TOPIC_ERRORS = (UnknownTopicOrPartitionError, TopicAuthorizationFailedError, InvalidTopicError)
FENCED = (ProducerFencedError, InvalidProducerEpochError, TransactionalIdAuthorizationFailedError)


CONNECTING = "Initializing connection for node_id %s at %s:%s (rack=%s)"
CONNECTED = "%s: Connected"
LOST = "%s: Connection lost: %s"
"""kafka-python 3.0's log records of a broker connection (kafka.net), its only word on
which broker it reaches and which it lost."""


class ConnectionErrors(logging.Handler):
    """kafka-python says why a broker refused a connection (a SASL login, a TLS
    handshake) only in its log, which the agent silences: its "Abort", "Connection lost"
    and "Connection failed" lines carry the error last. A refusal is kept as the cause of
    an outage; a bare disconnect only until a refusal is known, since kafka-python often
    drops the broker's answer to a failed SASL login and reports "socket disconnected".
    With `health`, a connection to a broker lost or made is reported there, by the
    broker's address. Attached while a sink or a `check --connect` needs it."""

    def __init__(self, sasl: bool, on_error: Callable[[str], None] | None = None,
                 health: KafkaHealth | None = None) -> None:
        super().__init__(logging.INFO)
        self.last: str | None = None
        self._refused = False
        self._sasl = sasl
        self._on_error = on_error
        self._health = health
        self._addresses: dict[Any, str] = {}        # node id -> host:port

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if self._health is not None and args:
            self._follow_broker(record.msg, args)
        if record.levelno < logging.WARNING:
            return
        error = args[-1] if args else None
        if isinstance(error, REFUSALS):
            self._refused = True
            self._keep(str(error))
        elif isinstance(error, KafkaConnectionError) and self._sasl and not self._refused:
            self._keep(f"the broker closed the connection while logging in ({error}); "
                       f"kafka-python does not say why: a refused SASL login is the usual "
                       f"cause, check kafka.sasl_username and its password")

    def _follow_broker(self, message: str, args: tuple) -> None:
        if message == CONNECTING:
            self._addresses[args[0]] = f"{args[1]}:{args[2]}"
            return
        address = self._addresses.get(getattr(args[0], "node_id", None))
        if address is None:
            return
        if message == CONNECTED:
            self._health.broker_seen(address, up=True)
        elif message == LOST:
            self._health.broker_failed(address, "transport")

    def _keep(self, cause: str) -> None:
        self.last = cause
        if self._on_error is not None:
            self._on_error(cause)

    def attach(self) -> "ConnectionErrors":
        CONNECTIONS_LOG.setLevel(logging.INFO)
        CONNECTIONS_LOG.propagate = False
        CONNECTIONS_LOG.addHandler(self)
        return self

    def detach(self) -> None:
        CONNECTIONS_LOG.removeHandler(self)

    __enter__ = attach

    def __exit__(self, *_exc: object) -> None:
        self.detach()


class KeyCachingPartitioner(DefaultPartitioner):
    """kafka-python's default partitioning (murmur2 of the key), computed once per file:
    every record of a file has the same key, and a pure-Python murmur2 per record costs
    about a tenth of send(). The partition count is part of the cache key, so a topic
    that grows partitions maps keys exactly as the default partitioner would."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        cache_key = (topic, serialized_key, len(partitions))
        partition = self._cache.get(cache_key)
        if partition is None:
            partition = self._cache[cache_key] = super().partition(
                topic, key, serialized_key, value, serialized_value, cluster)
        return partition


class PartitionsInTransaction(set):
    """kafka-python's send() adds its record's partition to the open transaction, under
    the transaction manager's lock and after a check of the manager's state, for every
    record: a tenth of the agent's GIL time with 100 busy files at exactly-once. A
    partition once added stays in the transaction until it ends, so only the first record
    of each partition asks the manager; one of these is put on the manager at every
    begin_transaction(). A producer that fails meanwhile still fails the commit: its
    sender aborts the records appended after the failure."""

    def __init__(self, manager: TransactionManager) -> None:
        super().__init__()
        self._manager = manager

    def __call__(self, partition: TopicPartition) -> None:
        if partition not in self:
            TransactionManager.maybe_add_partition_to_transaction(self._manager, partition)
            self.add(partition)


def check_producer_settings(config: KafkaConfig) -> None:
    """Refuse settings kafka-python does not know, and those logship manages itself."""
    for name in dict(config.producer):
        where = f"kafka.producer.{name}"
        if name in MANAGED:
            raise ConfigError(f"{where}: managed by logship; set {MANAGED[name]}")
        if name not in KafkaProducer.DEFAULT_CONFIG:
            raise ConfigError(f"{where}: not a kafka-python producer setting")


def _consumer(config: KafkaConfig, brokers: list[str], timeout: float,
              **settings: Any) -> KafkaConsumer:
    """With the configured security, each request bounded by `timeout`."""
    return KafkaConsumer(bootstrap_servers=brokers, api_version=_version(config),
                         request_timeout_ms=int(timeout * 1000), **settings,
                         **security_settings(config, SECURITY))


def reach_broker(config: KafkaConfig, broker: str, timeout: float) -> str:
    """Fetch the cluster's metadata from this broker alone, with the configured security,
    within `timeout`: kafka-python waits for metadata without a bound (a refused SASL
    login retries for ever), so the wait runs on a thread of its own and a refusal
    seen meanwhile is the answer."""
    answer: list[str] = []
    failure: list[str] = []

    def fetch() -> None:
        consumer = None
        try:
            consumer = _consumer(config, [broker], timeout)
            answer.append(f"{len(consumer.topics())} topics")
        except KafkaError as exc:
            failure.append(str(exc))
        finally:
            if consumer is not None:
                consumer.close()

    with ConnectionErrors(_sasl(config)) as errors:
        thread = threading.Thread(target=fetch, name=f"reach {broker}", daemon=True)
        thread.start()
        thread.join(timeout)
    if answer:
        return answer[0]
    raise SinkError(errors.last or (failure[0] if failure else
                                    f"no answer within {timeout:g}s"))


def _sasl(config: KafkaConfig) -> bool:
    return config.security_protocol.startswith("SASL_")


def _version(config: KafkaConfig) -> tuple[int, ...]:
    return tuple(int(part) for part in config.api_version.split("."))


def _discard(producer: KafkaProducer) -> None:
    """Close a producer without waiting for its records, which fail (their workers send
    them again). kafka-python's close(timeout=0) raises instead while records are
    pending, and leaves its I/O thread running: the thread is stopped first."""
    sender = producer._sender
    sender.force_close()
    sender.join(DISCARD_WAIT)
    try:
        producer.close(timeout=0)
    except KafkaError as exc:
        log.warning("closing a Kafka producer given up: %s", exc)


class FutureDelivery:
    """A batch's futures, in send order, beside the lines skipped at send time."""

    def __init__(self, futures: list[FutureRecordMetadata], skipped: list[int]) -> None:
        self.futures = futures
        self.skipped = skipped

    def done(self) -> bool:
        return self.futures[-1].is_done and all(f.is_done for f in self.futures)

    handed_off = done

    def failures(self) -> list[tuple[int, BaseException]]:
        return line_failures([(i, f.exception) for i, f in enumerate(self.futures)
                              if f.exception is not None], self.skipped)


class KafkaPythonSink(Sink):
    def __init__(self, config: KafkaConfig, host: bytes, on_error: OnError,
                 transactional_id: str | None = None) -> None:
        super().__init__(config, host, on_error)
        self._lock = threading.Lock()
        self._transactional = {"transactional_id": transactional_id} if transactional_id else {}
        # before the producer, which connects at once
        self._connection_errors = ConnectionErrors(_sasl(config), self._on_connection_error,
                                                   self.health).attach()
        try:
            self._producer = self._new_producer(**self._transactional)
        except ConfigError:
            self._connection_errors.detach()
            raise
        self._generation = 0
        self._isolation: KafkaProducer | None = None

    def _on_connection_error(self, error: str) -> None:
        self.health.connection_error = error

    def _new_producer(self, **overrides: Any) -> KafkaProducer:
        config = self.config
        compression = None if config.compression == "none" else config.compression
        settings = {**DEFAULTS, "partitioner": KeyCachingPartitioner(), **dict(config.producer),
                    **security_settings(config, SECURITY), **overrides}
        try:
            return KafkaProducer(
                bootstrap_servers=list(config.bootstrap_servers),
                api_version=_version(config),
                acks="all",
                delivery_timeout_ms=HELD,
                max_block_ms=config.max_block_ms,
                max_request_size=config.max_request_size,
                compression_type=compression,
                **settings,
            )
        except (KafkaError, ValueError, TypeError, AssertionError) as exc:
            raise ConfigError(f"kafka: cannot create the producer: {exc}") from None

    def is_too_large(self, error: BaseException) -> bool:
        return isinstance(error, (MessageSizeTooLargeError, RecordListTooLargeError))

    def prepare(self, topic: str) -> Sent | None:
        """send() would wait up to max_block_ms for a topic's metadata: it is awaited
        here instead, at once when known. Without it while Kafka is up, the topic may be
        what Kafka refuses."""
        try:
            self._producer.partitions_for(topic)
            self.metadata_found(topic)
            return None
        except TopicAuthorizationFailedError:
            return Sent(self._generation, refused=NOT_AUTHORIZED)
        except KafkaTimeoutError as exc:
            sent = Sent(self._generation, unavailable=f"Kafka unavailable: {exc}")
        except KafkaError as exc:
            raise SinkError(f"topic={topic}: send failed: {exc}") from None
        sent.refused = self.explain_topic(topic, None) if self.health.up else None
        if sent.refused:
            sent.unavailable = None
        else:
            self.metadata_missing(topic, "metadata")
        return sent

    def _produce_job(self, job: Job) -> Sent:
        sent = Sent(self._generation)
        futures = self._produce(self._producer, sent, job)
        if futures:
            wake = job.wake
            futures[-1].add_callback(lambda _: self.health.available())
            futures[-1].add_both(lambda _: wake())
            sent.delivery = FutureDelivery(futures, sent.skipped)
        if sent.unavailable:
            self.metadata_missing(job.topic, "metadata")
        return sent

    def _produce(self, producer: KafkaProducer, sent: Sent, job: Job
                 ) -> list[FutureRecordMetadata]:
        futures: list[FutureRecordMetadata] = []
        send = producer.send
        topic = job.topic
        try:
            for line, key, headers in job.messages():
                try:
                    futures.append(send(topic, value=line, key=key, headers=headers))
                except MessageSizeTooLargeError:
                    sent.skipped.append(sent.count)
                sent.count += 1
        except KafkaTimeoutError as exc:
            sent.unavailable = f"Kafka unavailable: {exc}"
        except TopicAuthorizationFailedError:
            sent.refused = NOT_AUTHORIZED
        except KafkaError as exc:
            raise SinkError(f"topic={topic}: send failed: {exc}") from None
        return futures

    def is_topic_error(self, error: BaseException) -> bool:
        return isinstance(error, TOPIC_ERRORS)

    def explain_topic(self, topic: str, error: BaseException | None) -> str | None:
        if isinstance(error, TopicAuthorizationFailedError):
            return NOT_AUTHORIZED
        admin = None
        try:
            admin = self.admin(EXPLAIN_TIMEOUT)
            answer = admin.create_topics([topic], validate_only=True, raise_errors=False)
        except KafkaError:
            return None
        finally:
            if admin is not None:
                admin.close()
        [result] = answer["topics"]
        code = result["error_code"]
        if code == 0:
            return NOT_CREATED
        if code == TopicAlreadyExistsError.errno:
            return None
        return result["error_message"] or for_code(code).__name__

    def recover(self, generation: int) -> None:
        """A record the broker refused as too large leaves an idempotent kafka-python
        producer in a fatal state that fails every later record: replace it."""
        with self._lock:
            if generation != self._generation:
                return
            old, self._producer = self._producer, self._new_producer()
            self._generation += 1
        log.warning("Kafka refused a record as too large; producer rebuilt (broker limit "
                    "below kafka.max_request_size?)")
        _discard(old)

    def resend_alone(self, job: Job, timeout: float) -> Resent:
        """Through a producer without idempotence and one request in flight: there
        kafka-python splits a refused batch down to the record that is too large, and
        only that record fails."""
        with self._lock:
            if self._isolation is None:
                self._isolation = self._new_producer(
                    enable_idempotence=False, max_in_flight_requests_per_connection=1,
                    linger_ms=0)
            producer = self._isolation
        sent = Sent(self._generation)
        futures = self._produce(producer, sent, job)
        if sent.unavailable:
            raise SinkError(f"topic={job.topic}: resend failed: {sent.unavailable}")
        producer.flush(timeout=timeout)
        resent = Resent(too_large=len(sent.skipped))
        for future in futures:
            error = future.exception if future.is_done else KafkaTimeoutError("not settled")
            if error is None:
                resent.delivered += 1
            elif self.is_too_large(error):
                resent.too_large += 1
            else:
                raise SinkError(f"topic={job.topic}: resend failed: {error}")
        return resent

    def close(self, timeout: float) -> None:
        self._rechecks.stop()
        self._connection_errors.detach()
        for producer in (self._producer, self._isolation):
            if producer is None:
                continue
            try:
                producer.close(timeout=timeout)
            except KafkaError as exc:
                log.warning("closing the Kafka producer: %s", exc)


    def renew(self) -> None:
        """A transactional producer that was fenced or failed can do nothing more."""
        with self._lock:
            old, self._producer = self._producer, self._new_producer(**self._transactional)
            self._generation += 1
        _discard(old)

    def admin(self, timeout: float) -> KafkaAdminClient:
        config = self.config
        return KafkaAdminClient(bootstrap_servers=list(config.bootstrap_servers),
                                api_version=_version(config),
                                request_timeout_ms=int(timeout * 1000),
                                bootstrap_timeout_ms=int(timeout * 1000),
                                **security_settings(config, SECURITY))

    def consumer(self, timeout: float, **settings: Any) -> KafkaConsumer:
        return _consumer(self.config, list(self.config.bootstrap_servers), timeout,
                         enable_auto_commit=False, **settings)


class KafkaPythonTransactions(Transactions):
    """kafka-python's transactional producer. Its commit_transaction() and
    abort_transaction() wait without a bound (for ever while Kafka is down), so the end
    of a transaction is begun and awaited here as they do it, with a bound: the same
    two calls on its transaction manager (kafka-python is pinned, 3.0.12)."""

    def __init__(self, sink: KafkaPythonSink) -> None:
        self._sink = sink
        self._ending: Any = None

    def init(self, timeout: float) -> bool:
        try:
            self._sink._producer.init_transactions()       # waits max_block_ms at most
        except KafkaTimeoutError:
            return False
        except KafkaError as exc:
            raise self._failed(exc, "taking the transactional id") from None
        return True

    def begin(self) -> None:
        producer = self._sink._producer
        try:
            producer.begin_transaction()
        except KafkaError as exc:
            raise self._failed(exc, "beginning a transaction", fatal=True) from None
        manager = producer._transaction_manager
        manager.maybe_add_partition_to_transaction = PartitionsInTransaction(manager)

    def produce_position(self, topic: str, partition: int, key: bytes,
                         value: bytes | None) -> None:
        try:
            self._sink._producer.send(topic, value=value, key=key, partition=partition)
        except KafkaError as exc:
            raise self._failed(exc, f"writing a position to {topic}") from None

    def commit(self, timeout: float) -> bool:
        return self._end(True, timeout)

    def abort(self, timeout: float) -> bool:
        return self._end(False, timeout)

    def _end(self, commit: bool, timeout: float) -> bool:
        producer = self._sink._producer
        if self._ending is None:
            manager = producer._transaction_manager
            try:
                self._ending = manager.begin_commit() if commit else manager.begin_abort()
            except KafkaError as exc:
                raise self._failed(exc, "committing" if commit else "aborting") from None
            producer._sender.wakeup()
        try:
            done = self._ending.wait(timeout_ms=timeout * 1000)
        except KafkaError as exc:
            self._ending = None
            raise self._failed(exc, "committing" if commit else "aborting") from None
        if done:
            self._ending = None
        return done

    def _failed(self, exc: KafkaError, doing: str, fatal: bool = False) -> TransactionFailed:
        """kafka-python wraps the error that put the producer in its error state (a
        ProducerFencedError) in a generic one: the cause is that error. A record refused
        for its producer epoch (another producer took the transactional id) makes it
        bump the epoch by itself (KIP-360), and a commit or an abort then fails on that
        state alone: fenced too."""
        manager = self._sink._producer._transaction_manager
        error = manager.last_error or exc
        fenced = any(isinstance(e, FENCED) for e in (exc, error, *exc.args)) \
            or manager.is_bumping_epoch()
        return TransactionFailed(f"{doing}: {error!r}", fatal or manager.has_fatal_error(),
                                 fenced)

    def renew(self) -> None:
        self._ending = None
        self._sink.renew()

    def positions_partitions(self, topic: str, timeout: float) -> int:
        admin = None
        try:
            admin = self._sink.admin(timeout)
            if topic not in admin.list_topics():
                answer = admin.create_topics([NewTopic(topic, POSITIONS_PARTITIONS,
                                                       BROKER_DEFAULT,
                                                       topic_configs=POSITIONS_CONFIGS)],
                                             raise_errors=False)
                [result] = answer["topics"]
                code = result["error_code"]
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise TransactionFailed(positions_not_created(
                        topic, result["error_message"] or for_code(code).__name__))
            [described] = admin.describe_topics([topic])
        except KafkaError as exc:
            raise TransactionFailed(f"kafka.offsets_topic {topic}: {exc}") from None
        finally:
            if admin is not None:
                admin.close()
        code = described.get("error_code")
        if code:
            raise _unreadable(topic, for_code(code)())
        return len(described["partitions"])

    def read_positions(self, topic: str, partition: int,
                       timeout: float) -> list[tuple[bytes, bytes | None]]:
        consumer = None
        records: list[tuple[bytes, bytes | None]] = []
        try:
            consumer = self._sink.consumer(timeout, isolation_level="read_committed")
            where = TopicPartition(topic, partition)
            consumer.assign([where])
            consumer.seek_to_beginning(where)
            end = consumer.end_offsets([where])[where]
            deadline = time.monotonic() + timeout
            while consumer.position(where) < end:
                if time.monotonic() > deadline:
                    raise positions_unreadable(
                        topic, f"not read to its end (offset {end}) within {timeout:g}s")
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend((record.key, record.value) for record in batch)
        except KafkaError as exc:
            raise _unreadable(topic, exc) from None
        finally:
            if consumer is not None:
                consumer.close()
        return records


def _unreadable(topic: str, error: KafkaError) -> TransactionFailed:
    """A right Kafka refused, or a topic it does not serve yet (retriable: just created,
    a leader moving), or another error."""
    return positions_unreadable(topic, str(error), refused=isinstance(error, AuthorizationError),
                                pending=error.retriable)


def open_sink(config: KafkaConfig, host: bytes, on_error: OnError,
              transactional_id: str | None = None) -> KafkaPythonSink:
    return KafkaPythonSink(config, host, on_error, transactional_id)


def transactions(sink: KafkaPythonSink) -> Transactions:
    return KafkaPythonTransactions(sink)
