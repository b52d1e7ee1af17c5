"""Production topology: a three-broker Kafka (replication 3, min.insync.replicas 2) and a
three-member etcd. Brokers are killed, restarted one by one, and the agent killed while
one is down, while lines flow; every line is counted (at exactly-once by a
read_committed consumer, every line once). One cluster of each serves the module: it
takes half a minute to start."""

from __future__ import annotations

import json

import etcd3
import grpc
import pytest

from conftest import CLIENTS
from harness import (Agent, EtcdCluster, KafkaCluster, header, numbers, report_duplicates,
                     unique, wait_until)
from test_delivery_e2e import Writer, entry

AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory):
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def whole_cluster(request):
    """Each test starts with every member up and in sync, whatever the last one left."""
    yield
    if "kafka_cluster" in request.fixturenames:
        cluster = request.getfixturevalue("kafka_cluster")
        for member in cluster.members:
            if member.proc is None:
                member.start()
        wait_until(cluster.in_sync, 120, "every replica in sync", step=0.5)


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


@pytest.fixture(params=[AT_LEAST_ONCE, EXACTLY_ONCE])
def delivery(request):
    return request.param


def per_file(records) -> dict[bytes, list]:
    """The records that arrived, by the file (its path header) they were read from."""
    found: dict[bytes, list] = {}
    for record in records:
        found.setdefault(header(record, "path"), []).append(record)
    return found


class Load:
    """Two files appended to at 500 lines/s each and rotated every 3,000 lines, and a
    reader of their topic (read_committed at exactly-once)."""

    def __init__(self, logs: list, topic_reader) -> None:
        self.writers = [Writer(log, total=10**9, rate=500, batch=25, rotate_every=3000)
                        for log in logs]
        self.reader = topic_reader

    def start(self) -> "Load":
        for writer in self.writers:
            writer.start()
        return self

    def flows(self, what: str, lines: int = 2000) -> None:
        """`lines` more records than now arrived."""
        self.reader.wait_count(len(self.reader.records) + lines, timeout=120)

    def stop(self) -> None:
        for writer in self.writers:
            writer.stop()

    def every_line(self, once: bool) -> None:
        """Every line of each file arrived, and with `once` none twice."""
        total = sum(writer.written for writer in self.writers)

        def complete(records) -> bool:
            by_file = per_file(records)
            return all(set(numbers(by_file.get(str(w.path).encode(), [])))
                       >= set(range(w.written)) for w in self.writers)
        self.reader.wait_for(complete, 180, f"every one of {total} lines")
        by_file = per_file(self.reader.settle(1.5))
        for writer in self.writers:
            records = by_file[str(writer.path).encode()]
            duplicates = report_duplicates(str(writer.path), records)
            if once:
                assert duplicates == 0
                assert sorted(numbers(records)) == list(range(writer.written))


def test_a_broker_that_leaves_is_a_warning_naming_it_and_lines_go_on(
        kafka_cluster, etcd, make_agent, reader, key, topic, client, tmp_path):
    """The leader of the file's partition stops (SIGTERM: its leadership moves at once):
    that broker is named, Kafka is not said unavailable, and its return is said."""
    kafka_cluster.create_topic(topic, replicas=3)
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [entry(log, topic)])
    agent: Agent = make_agent(etcd, kafka_cluster, [key]).start()
    agent.wait_log(f"worker started path={log}")
    writer = Writer(log, total=10**9, rate=500, batch=25)
    writer.start()
    topic_reader = reader(topic, kafka_cluster)
    try:
        topic_reader.wait_count(1000)
        leader = kafka_cluster.broker(kafka_cluster.leader(topic))
        leader.stop()
        agent.wait_log(f"WARNING logship.sink: Kafka broker {leader.address} unreachable: .*; "
                       f"its partitions move to the other brokers, lines go on")
        topic_reader.wait_count(len(topic_reader.records) + 2000)
        assert agent.metric("logship_kafka_brokers_unreachable") == 1
        assert agent.metric("logship_kafka_up") == 1
        status = json.loads(agent.scrape("/api/status"))
        assert status["kafka"] == "ok"
        assert status["kafka_brokers_unreachable"] == [leader.address]
        leader.start()
        agent.wait_log(f"INFO logship.sink: Kafka broker {leader.address} reachable again "
                       f"after [0-9]+s", timeout=60)
        assert agent.metric("logship_kafka_brokers_unreachable") == 0
        topic_reader.wait_count(len(topic_reader.records) + 1000)
    finally:
        writer.stop()
    topic_reader.wait_for(lambda r: set(numbers(r)) >= set(range(writer.written)), 120,
                          "every line")
    assert "Kafka unavailable" not in agent.log()


def test_broker_kill_9_an_agent_killed_meanwhile_and_a_rolling_restart_lose_no_line(
        kafka_cluster, etcd, make_agent, reader, key, topic, client, delivery, tmp_path):
    """The leader of the files' partition killed while lines flow, the agent killed -9
    while it is down and started again, the broker back; then every broker restarted in
    turn (SIGTERM), the next once every replica is in sync again."""
    kafka_cluster.create_topic(topic, replicas=3)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    for log in logs:
        log.write_bytes(b"")
    etcd.put(key, [entry(log, topic) for log in logs])
    agent: Agent = make_agent(etcd, kafka_cluster, [key])
    if delivery == EXACTLY_ONCE:
        agent.config["kafka"].update({"delivery": EXACTLY_ONCE, "transaction_interval": 0.2})
        agent.config["agent"] = {"name": unique("eo")}
        agent.write_config()
    agent.start().wait_log(f"worker started path={logs[1]}", timeout=60)
    load = Load(logs, reader(topic, kafka_cluster, committed=delivery == EXACTLY_ONCE)).start()
    try:
        load.flows("lines before")
        leader = kafka_cluster.broker(kafka_cluster.leader(topic))
        leader.kill()
        load.flows("lines once the leader was killed")
        agent.kill()
        agent.start()
        load.flows("lines after the agent's restart, a broker still down")
        leader.start()
        wait_until(kafka_cluster.in_sync, 120, "the killed broker back in sync", step=0.5)
        for broker in kafka_cluster.members:
            broker.stop()
            load.flows(f"lines while {broker.address} is stopped", 1000)
            broker.start()
            wait_until(kafka_cluster.in_sync, 120, f"{broker.address} back in sync", step=0.5)
        load.flows("lines after the rolling restart", 1000)
    finally:
        load.stop()
    load.every_line(once=delivery == EXACTLY_ONCE)
    log = agent.log()
    assert "cannot resume from the positions in Kafka" not in log
    assert "Traceback" not in log


def put_once_served(member, key: str, value) -> bool:
    """A member refuses writes until the cluster has a leader again."""
    try:
        member.put(key, value)
    except (etcd3.exceptions.Etcd3Exception, grpc.RpcError):
        return False
    return True


def test_the_etcd_member_first_in_the_endpoints_killed_a_change_through_another_applies(
        etcd_cluster, kafka, make_agent, reader, key, topic, tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    for log in (first, second):
        log.write_bytes(b"")
    members = etcd_cluster.members
    members[1].put(key, [entry(first, topic)])
    agent: Agent = make_agent(etcd_cluster.endpoints, kafka, [key]).start()
    agent.wait_log(f"key={key} watching on {members[0].address}")
    agent.wait_log(f"worker started path={first}")
    topic_reader = reader(topic)
    try:
        members[0].kill()
        agent.wait_log(f"key={key} etcd: .*running workers keep shipping")
        wait_until(lambda: put_once_served(members[2], key, [entry(first, topic),
                                                             entry(second, topic)]),
                   30, "the put served, once a new etcd leader is elected")
        agent.wait_log(f"worker started path={second}", timeout=60)
        assert agent.log().count(f"watching on {members[0].address}") == 1
        second.write_bytes(b"after the member was lost\n")
        first.write_bytes(b"the first file too\n")
        topic_reader.wait_count(2)
        assert sorted(topic_reader.values()) == [b"after the member was lost", b"the first file too"]
    finally:
        members[0].start()
