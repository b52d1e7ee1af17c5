"""Pure logic of the sinks: partitioning, settings under each client's names, how a client's
error is read."""

import logging
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError as ConfluentError
from kafka.errors import KafkaError, for_code
from kafka.partitioner.default import DefaultPartitioner
from kafka.producer.transaction_manager import (ProducerIdAndEpoch, TransactionManager,
                                                TransactionState)
from kafka.structs import TopicPartition

from logship.config import parse_config
from logship.sink import KafkaHealth, PositionsPending, security_settings
from logship import sink_confluent
from logship.sink_confluent import SECURITY as CONFLUENT, _Poller, _serve_last_reports, _settings
from logship.sink_confluent import _unreadable as confluent_unreadable
from logship.sink_kafka_python import (SECURITY as KAFKA_PYTHON, KafkaPythonTransactions,
                                      KeyCachingPartitioner, PartitionsInTransaction)
from logship.sink_kafka_python import _unreadable as kafka_python_unreadable

from harness import wait_until


class Cluster:
    """The part of kafka-python's ClusterMetadata a partitioner reads."""

    def __init__(self, partitions: int) -> None:
        self.partitions = set(range(partitions))

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return self.partitions

    def available_partitions_for_topic(self, topic):
        return self.partitions


def test_the_cached_partition_is_the_default_partitioners_also_after_growth():
    cached, default = KeyCachingPartitioner(), DefaultPartitioner()
    keys = [f"/var/log/app-{i}.log".encode() for i in range(200)]
    for partitions in (3, 7, 12):
        cluster = Cluster(partitions)
        for key in keys:
            for _ in range(2):                          # computed, then from the cache
                assert cached.partition("t", key, key, b"", b"", cluster) == \
                    default.partition("t", key, key, b"", b"", cluster)


def test_security_fields_map_to_each_clients_own_names():
    data = {"etcd": {"endpoints": ["e:1"], "keys": ["k"]},
            "kafka": {"bootstrap_servers": ["b:1"], "security_protocol": "SASL_PLAINTEXT",
                      "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u",
                      "sasl_password": "p"}}
    kafka = parse_config(data, Path("/")).kafka
    assert security_settings(kafka, KAFKA_PYTHON) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "u", "sasl_plain_password": "p"}
    assert security_settings(kafka, CONFLUENT) == {
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-256",
        "sasl.username": "u", "sasl.password": "p"}


def test_librdkafka_asks_again_for_a_transactions_partitions_after_20ms_unless_told_otherwise():
    data = {"etcd": {"endpoints": ["e:1"], "keys": ["k"]},
            "kafka": {"bootstrap_servers": ["b:1"], "client": "confluent-kafka"}}
    kafka = parse_config(data, Path("/")).kafka
    transactional = {"transactional.id": "logship-web-01"}
    assert _settings(kafka, transactional)["retry.backoff.ms"] == 20
    assert "retry.backoff.ms" not in _settings(kafka, {})
    data["kafka"]["producer"] = {"retry.backoff.ms": 50}
    assert _settings(parse_config(data, Path("/")).kafka, transactional)["retry.backoff.ms"] == 50


def test_a_kafka_python_producer_bumping_its_refused_epoch_counts_as_fenced():
    """kafka-python (KIP-360) bumps the epoch by itself when the broker refuses a record's
    producer epoch (another agent took the transactional id); an abort then fails on that
    state, which must still say fenced (a CI run at b3781ba)."""
    manager = TransactionManager(transactional_id="logship-web-01", api_version=(2, 8))
    manager._current_state = TransactionState.BUMPING_PRODUCER_EPOCH
    sink = SimpleNamespace(_producer=SimpleNamespace(_transaction_manager=manager))
    with pytest.raises(KafkaError) as raised:
        manager.begin_abort()
    failure = KafkaPythonTransactions(sink)._failed(raised.value, "aborting")
    assert failure.fenced and "BUMPING_PRODUCER_EPOCH" in str(failure)


def test_kafka_python_is_asked_once_per_partition_and_transaction():
    """A partition's first record of a transaction goes through kafka-python's checks and
    adds the partition; the rest of its records do not ask again. Every transaction
    begins with none added."""
    manager = TransactionManager(transactional_id="logship-web-01", api_version=(2, 8))
    manager.set_producer_id_and_epoch(ProducerIdAndEpoch(7, 0))
    manager._current_state = TransactionState.READY         # as after init_transactions()
    producer = SimpleNamespace(_transaction_manager=manager,
                               begin_transaction=manager.begin_transaction)
    transactions = KafkaPythonTransactions(SimpleNamespace(_producer=producer))
    first, second = TopicPartition("t", 0), TopicPartition("t", 1)
    transactions.begin()
    manager.maybe_add_partition_to_transaction(first)
    assert manager._new_partitions_in_transaction == {first}
    manager._current_state = TransactionState.ABORTABLE_ERROR
    manager.maybe_add_partition_to_transaction(first)       # not asked again
    with pytest.raises(KafkaError):
        manager.maybe_add_partition_to_transaction(second)  # asked, and refused
    manager._current_state = TransactionState.READY         # as after a commit
    transactions.begin()
    assert isinstance(manager.maybe_add_partition_to_transaction, PartitionsInTransaction)
    assert not manager.maybe_add_partition_to_transaction


class Producer:
    """librdkafka's length (records queued, in flight, or reports and errors to serve)
    and poll, counted."""

    def __init__(self) -> None:
        self.queued = self.looked = self.polls = 0

    def __len__(self) -> int:
        self.looked += 1
        return self.queued

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_the_confluent_poller_polls_only_while_the_producer_has_something_to_serve(monkeypatch):
    """confluent-kafka's poll wakes every 200 ms whatever its timeout: an idle agent must
    not call it, yet records produced are served at once."""
    monkeypatch.setattr(sink_confluent, "IDLE_POLL_INTERVAL", 0.01)
    producer = Producer()
    poller = _Poller(SimpleNamespace(producer=producer))
    poller.start()
    try:
        wait_until(lambda: producer.looked >= 5, 10, "the idle poller to look a few times")
        assert producer.polls == 0
        producer.queued = 1
        poller.produced.set()
        wait_until(lambda: producer.polls >= 2, 10, "polls while records are in flight")
    finally:
        poller.stop()
        poller.join(5)
    assert not poller.is_alive()


class FencedProducer:
    """librdkafka after a fatal error: the first poll raises it, the next ones serve."""

    def __init__(self) -> None:
        self.served = 0

    def poll(self, timeout: float) -> int:
        self.served += 1
        if self.served == 1:
            raise sink_confluent.KafkaException(sink_confluent.KafkaError(
                sink_confluent.KafkaError._FENCED, "fenced by a newer instance", fatal=True))
        return 0


def test_a_replaced_producer_serves_its_purged_records_after_its_fatal_error():
    producer = FencedProducer()
    _serve_last_reports(producer)
    assert producer.served == 2


class MetadataOf:
    """What confluent-kafka's list_topics answers about one topic, in turn."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.asked = 0

    def list_topics(self, topic: str, timeout: float):
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(topics={topic: answer})


LACKED = SimpleNamespace(error=sink_confluent.KafkaError(
    sink_confluent.KafkaError.UNKNOWN_TOPIC_OR_PART), partitions={})
THERE = SimpleNamespace(error=None, partitions={0: object()})


def confluent_sink(producer: MetadataOf) -> sink_confluent.ConfluentSink:
    data = {"etcd": {"endpoints": ["e:1"], "keys": ["k"]},
            "kafka": {"bootstrap_servers": ["127.0.0.1:1"], "client": "confluent-kafka"}}
    sink = sink_confluent.ConfluentSink(parse_config(data, Path("/")).kafka, b"h", lambda _: None)
    sink.producer = producer
    return sink


def test_confluent_asks_for_a_topic_before_its_first_record_and_then_never_again(monkeypatch):
    """librdkafka would time a new topic's metadata from its first record: records queued
    while Kafka is down fail as an unknown topic at Kafka's first answer. They are held
    until Kafka shows the topic, asked again while it is being created."""
    monkeypatch.setattr(sink_confluent, "TOPIC_ASK_AGAIN", 0)
    unanswered = sink_confluent.KafkaException(sink_confluent.KafkaError(
        sink_confluent.KafkaError._TRANSPORT))
    sink = confluent_sink(MetadataOf(unanswered, LACKED, THERE))
    assert "no metadata for topic t" in sink.prepare("t").unavailable
    assert sink.prepare("t") is None            # lacked once (being created), then there
    assert sink.producer.asked == 3
    assert sink.prepare("t") is None
    assert sink.producer.asked == 3


def test_confluent_explains_a_topic_kafka_lacks_longer_than_metadata_takes_to_spread(
        monkeypatch):
    monkeypatch.setattr(sink_confluent, "TOPIC_ASK_TIMEOUT", 0)
    sink = confluent_sink(MetadataOf(LACKED))
    sink.explain_topic = lambda topic, error: f"{topic}: {error.args[0].name()} explained"
    assert "not in Kafka's metadata yet" in sink.prepare("t").unavailable
    sink._missing["t"] -= sink_confluent.TOPIC_PROPAGATION
    assert sink.prepare("t").refused == "t: UNKNOWN_TOPIC_OR_PART explained"
    assert "not in Kafka's metadata yet" in sink.prepare("t").unavailable  # its time again


class Listening:
    """A port that accepts connections, as a broker that is back."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.socket.getsockname()[1]}"


def closed_port() -> str:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return f"127.0.0.1:{server.getsockname()[1]}"


def test_one_broker_lost_is_a_warning_and_its_return_is_said(caplog):
    caplog.set_level(logging.INFO, logger="logship.sink")
    up, down = Listening(), closed_port()
    errors: list[str] = []
    health = KafkaHealth((up.address, down), None, errors.append)
    health.broker_failed(down, "transport")
    health.broker_failed(up.address, "transport")        # disconnected, but answers
    assert health.rechecks_due.is_set()
    health.recheck()
    assert health.up and health.unreachable == (down,) and errors == ["transport"]
    assert f"Kafka broker {down} unreachable: connection refused" in caplog.text
    health.broker_failed(down, "transport")
    health.recheck()
    assert errors == ["transport"], "said once while it lasts"
    health.broker_seen(down, up=True)
    assert health.unreachable == () and f"Kafka broker {down} reachable again" in caplog.text
    assert "Kafka unavailable" not in caplog.text
    up.socket.close()


def test_every_broker_known_lost_is_an_outage(caplog):
    first, second = closed_port(), closed_port()
    health = KafkaHealth((first,), None, lambda reason: None)
    health.broker_seen(second, up=True)
    for broker in (first, second):
        health.broker_failed(broker, "transport")
    health.recheck()
    assert not health.up and set(health.unreachable) == {first, second}
    assert f"Kafka unavailable ({first}): {first}: connection refused" in caplog.text


def test_a_positions_topic_not_served_yet_is_waited_for_and_a_missing_right_named_only_if_refused():
    for unreadable, unknown, refused, other in (
            (kafka_python_unreadable, for_code(3)(), for_code(29)(), for_code(35)()),
            (confluent_unreadable, ConfluentError(ConfluentError.UNKNOWN_TOPIC_OR_PART),
             ConfluentError(ConfluentError.TOPIC_AUTHORIZATION_FAILED),
             ConfluentError(ConfluentError.UNSUPPORTED_VERSION))):
        pending = unreadable("logship-offsets", unknown)
        assert isinstance(pending, PositionsPending) and "not yet served" in str(pending)
        assert str(unreadable("logship-offsets", refused)).endswith(
            "the agent's principal needs Read and Write on the topic")
        failed = unreadable("logship-offsets", other)
        assert not isinstance(failed, PositionsPending) and "principal" not in str(failed)
