"""Exactly-once delivery, proven by a read_committed consumer counting numbered lines:
every test requires every line exactly once, on both clients."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import CLIENTS
from harness import (Agent, has_all, logship, numbered, numbers, report_duplicates, unique,
                     wait_until)
from test_delivery_e2e import Writer, entry

pytestmark = pytest.mark.e2e


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


def exactly_once(agent: Agent, **kafka) -> Agent:
    """The agent's config with kafka.delivery: exactly-once and a name of its own (its
    transactional id), so that tests never share positions."""
    agent.config["kafka"].update({"delivery": "exactly-once", "transaction_interval": 0.2,
                                  **kafka})
    agent.config.setdefault("agent", {"name": unique("eo")})
    agent.write_config()
    return agent


def every_line_once(name: str, topic_reader, total: int, timeout: float = 180.0) -> None:
    """All `total` numbers arrived, and none twice (also after a quiet second)."""
    topic_reader.wait_for(has_all(total), timeout, f"all {total} numbers")
    records = topic_reader.settle(1.5)
    assert report_duplicates(name, records) == 0
    assert sorted(numbers(records)) == list(range(total))


def shipping(agent: Agent, etcd, key: str, topic: str, reader, total: int, rate: int,
             before: int):
    """The agent following app.log under `key` while `total` numbered lines are appended
    to it at `rate`: returns the writer and a read_committed reader of the topic once
    `before` lines can be read."""
    log = agent.workdir / "app.log"
    etcd.put(key, [entry(log, topic)])
    committed = reader(topic, committed=True)
    agent.start().wait_log(f"worker started path={log}")
    writer = Writer(log, total, rate=rate, batch=200)
    writer.start()
    committed.wait_for(lambda r: len(r) >= before, 120, f"{before} records")
    return writer, committed


def test_kill_9_mid_stream_every_line_once(etcd, kafka, make_agent, reader, key, topic):
    total = 200_000
    agent = exactly_once(make_agent(etcd, kafka, [key]))
    writer, committed = shipping(agent, etcd, key, topic, reader, total, 20_000, 40_000)
    agent.kill()
    assert writer.written < total, "the kill came after the last line was written"
    agent.start()
    writer.join()
    every_line_once("exactly-once kill -9", committed, total)
    assert agent.metric("logship_kafka_transactions_total", result="committed") > 0


def test_lost_state_dir_resumes_from_kafka(etcd, kafka, make_agent, reader, key, topic,
                                           tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 50_000))
    etcd.put(key, [entry(log, topic, read_from="beginning")])
    agent = exactly_once(make_agent(etcd, kafka, [key])).start()
    committed = reader(topic, committed=True)
    committed.wait_for(has_all(50_000), 120, "the first 50000 lines")
    assert agent.stop() == 0
    shutil.rmtree(tmp_path / "state")
    with open(log, "ab") as handle:
        handle.write(numbered(50_000, 10_000))
    agent.start()
    agent.wait_log(r"file positions read from logship-offsets partition \d+, 1 of them ahead "
                   r"of state_dir")
    every_line_once("exactly-once lost state_dir", committed, 60_000)
    assert json.loads(agent.scrape("/api/status"))["delivery"] == "exactly-once"
    assert agent.metric("logship_kafka_transactions_total", result="committed") > 0
    assert agent.metric("logship_kafka_transaction_records_count") > 0


def test_check_connect_proves_transactions_and_the_offsets_topic(etcd, kafka, make_agent):
    agent = exactly_once(make_agent(etcd, kafka, ["unused"]))
    result = logship("check", "--connect", "--config", agent.config_path)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    name = agent.config["agent"]["name"]
    assert f"kafka transactions: ok, transactional id logship-{name}.check taken" in out
    assert re.search(rf"kafka offsets topic logship-offsets: ok, 25 partitions, 0 positions of "
                     rf"{name} read from partition \d+, a write committed", out)


def test_kafka_stopped_for_15_seconds_mid_stream(etcd, own_kafka, make_agent, reader, key,
                                                 topic, tmp_path):
    if own_kafka.proc is None:
        own_kafka.start()
    log = tmp_path / "outage.log"
    rate, total = 1000, 30_000
    etcd.put(key, [entry(log, topic)])
    agent = exactly_once(make_agent(etcd, own_kafka, [key])).start()
    agent.wait_log(f"worker started path={log}")
    writer = Writer(log, total, rate=rate, batch=100)
    writer.start()
    committed = reader(topic, own_kafka, committed=True)
    committed.wait_for(lambda r: len(r) >= 2000, 60, "records before the outage")
    own_kafka.stop()
    stopped_at = writer.written
    agent.wait_log(rf"Kafka unavailable \({own_kafka.address}\)", timeout=60)
    wait_until(lambda: writer.written >= stopped_at + 15 * rate, 60, "15 s of writes")
    own_kafka.start()
    writer.join()
    every_line_once("exactly-once kafka outage", committed, total, timeout=240)
    agent.wait_log(r"Kafka available again after \d+s")


@pytest.mark.parametrize("shape", ["plain", "glob"])
def test_rotation_under_load(etcd, kafka, make_agent, reader, key, topic, tmp_path, shape):
    """Renamed to app.log.N, outside the glob *.log: the rotated file is drained by the
    worker that followed it, and the new app.log is a new match."""
    log = tmp_path / "app.log"
    total = 100_000
    path = str(log) if shape == "plain" else f"{tmp_path}/*.log"
    etcd.put(key, [{"path": path, "topic": topic}])
    agent = exactly_once(make_agent(etcd, kafka, [key])).start()
    agent.wait_log(r"agent started")
    log.write_bytes(b"")
    agent.wait_log(f"worker started path={log}")
    writer = Writer(log, total, rate=20_000, batch=200, rotate_every=10_000, after_rename=200)
    writer.start()
    writer.join()
    committed = reader(topic, committed=True)
    every_line_once(f"exactly-once rotation ({shape})", committed, writer.written)
    agent.wait_log("rotated file finished and closed|no longer matches and holds nothing more",
                   count=writer.rotations)


def test_a_reload_that_changes_compression_mid_stream(etcd, kafka, make_agent, reader, key,
                                                      topic):
    total = 60_000
    agent = exactly_once(make_agent(etcd, kafka, [key]))
    writer, committed = shipping(agent, etcd, key, topic, reader, total, 10_000, 10_000)
    agent.config["kafka"]["compression"] = "gzip"
    agent.write_config()
    agent.wait_log(r"config reloaded from .*: changed kafka")
    assert writer.written < total, "the reload came after the last line was written"
    writer.join()
    every_line_once("exactly-once reload", committed, total)


def test_a_second_agent_with_the_same_name_for_a_few_seconds(etcd, kafka, make_agent, reader,
                                                             key, topic, tmp_path, client):
    """The second one fences the first off, the first takes its id back after its backoff:
    whichever wins a moment, nothing committed is sent twice."""
    total = 60_000
    first = exactly_once(make_agent(etcd, kafka, [key]))
    writer, committed = shipping(first, etcd, key, topic, reader, total, 10_000, 10_000)
    (tmp_path / "second").mkdir()
    second = Agent(tmp_path / "second", etcd, kafka, [key], client,
                   allowed_paths=first.config["allowed_paths"], agent=first.config["agent"],
                   kafka=first.config["kafka"])
    second.start()
    try:
        name = first.config["agent"]["name"]
        first.wait_log(rf"ERROR logship.transaction: exactly-once: transactional id "
                       rf"logship-{name} fenced \(.*\): another producer took it", timeout=60)
        second.wait_log(f"worker started path={writer.path}")
    finally:
        second.stop()
    writer.join()
    every_line_once("exactly-once same name", committed, total)
    print(f"\n--- first agent ---\n{first.log()[-3000:]}\n--- second ---\n{second.log()[-3000:]}")


def test_a_refused_topic_and_a_record_too_large_hold_only_their_entries(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    taken, refused, small = f"{topic}.coll", f"{topic}_coll", f"{topic}-small"
    kafka.create_topic(taken)
    kafka.create_topic(small, **{"max.message.bytes": "2000"})
    good, held, large = tmp_path / "good.log", tmp_path / "held.log", tmp_path / "large.log"
    held.write_bytes(numbered(0, 5))
    large.write_bytes(b"x" * 5000 + b"\n" + numbered(0, 5))
    etcd.put(key, [{"path": str(good), "topic": topic},
                   {"path": str(held), "topic": refused, "read_from": "beginning"},
                   {"path": str(large), "topic": small, "read_from": "beginning"}])
    agent = exactly_once(make_agent(etcd, kafka, [key])).start()
    agent.wait_log(f"worker started path={good}")
    writer = Writer(good, 20_000, rate=5000, batch=100)
    writer.start()
    agent.wait_log(f"worker path={held} topic={refused} failed: key={key}: Kafka \\("
                   f"{kafka.address}\\) refuses topic {refused}: Topic '{refused}' collides with "
                   f"existing topic: {taken}; this entry's lines are held, the others ship")
    agent.wait_log(f"worker path={large} topic={small} failed: key={key}: Kafka \\("
                   f"{kafka.address}\\) refuses topic {small}: a record is larger than the "
                   f"topic takes .*: at exactly-once set kafka.max_request_size at or below the "
                   f"topic's max.message.bytes; this entry's lines are held")
    writer.join()
    every_line_once("exactly-once beside refusals", reader(topic, committed=True), 20_000)
    assert reader(small, committed=True).settle(1.0) == []


def test_a_reload_from_at_least_once_carries_every_position_over(etcd, kafka, make_agent,
                                                                 reader, key, topic):
    total = 40_000
    agent = make_agent(etcd, kafka, [key], agent={"name": unique("eo")})
    writer, committed = shipping(agent, etcd, key, topic, reader, total, 10_000, 5_000)
    exactly_once(agent)
    agent.wait_log(r"exactly-once as transactional id .*, 0 of them ahead of state_dir")
    assert writer.written < total, "the switch came after the last line was written"
    writer.join()
    every_line_once("switch to exactly-once", committed, total)


def test_a_file_bound_does_not_force_a_commit_per_bound(etcd, kafka, make_agent, reader, key,
                                                        topic, tmp_path):
    """Lines the broker has acknowledged leave the file's in-flight bound while they wait
    for their commit: a file bounded at 100 lines ships 20,000 of them in a transaction
    or two (one per transaction_interval of 5 s), not in one per batch sent (1,000 lines:
    20 commits), each forced by the full bound."""
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 20_000))
    etcd.put(key, [entry(log, topic, read_from="beginning")])
    agent = make_agent(etcd, kafka, [key])
    agent.config["files"]["max_in_flight_lines"] = 100
    agent = exactly_once(agent, transaction_interval=5).start()
    committed = reader(topic, committed=True)
    every_line_once("file bound", committed, 20_000)
    assert agent.metric("logship_kafka_transactions_total", result="committed") <= 5
