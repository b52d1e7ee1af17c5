"""Session-wide real etcd and Kafka, and a factory for real `logship run` processes."""

from __future__ import annotations

import pytest

from harness import Agent, Certificates, Etcd, Kafka, TopicReader, unique


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    service = Etcd(tmp_path_factory.mktemp("etcd") / "data")
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    service = Kafka(tmp_path_factory.mktemp("kafka") / "data")
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory):
    """A broker of the module's own, to stop and start (not started here)."""
    service = Kafka(tmp_path_factory.mktemp("kafka-own") / "data")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> Certificates:
    """Throw-away CAs and certificates for the security tests, made once."""
    return Certificates(tmp_path_factory.mktemp("certs")).generate()


CLIENTS = ["kafka-python", "confluent-kafka"]


@pytest.fixture
def client():
    """The Kafka client under test; delivery tests parametrize it with both CLIENTS."""
    return "kafka-python"


@pytest.fixture
def make_agent(tmp_path, client):
    agents: list[Agent] = []

    def make(etcd_service, kafka_service, keys, **sections) -> Agent:
        agent = Agent(tmp_path, etcd_service, kafka_service, keys, client, **sections)
        agents.append(agent)
        return agent
    yield make
    for agent in agents:
        if agent.proc is not None:
            agent.kill()


@pytest.fixture
def reader(kafka):
    readers: list[TopicReader] = []

    def make(topic: str, service: Kafka | None = None, committed: bool = False) -> TopicReader:
        topic_reader = TopicReader(service or kafka, topic, committed)
        readers.append(topic_reader)
        return topic_reader
    yield make
    for topic_reader in readers:
        topic_reader.close()


@pytest.fixture
def key():
    return unique("key")


@pytest.fixture
def topic():
    return unique("topic")
