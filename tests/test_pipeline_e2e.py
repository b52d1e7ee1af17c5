"""End to end through the real `logship run`: etcd value in, Kafka records out."""

from __future__ import annotations

import os
import socket

import pytest

from conftest import CLIENTS
from harness import header, unique, wait_until

pytestmark = pytest.mark.e2e


def entry(path, topic, **extra):
    return {"path": str(path), "topic": topic, **extra}


@pytest.mark.parametrize("client", CLIENTS)
def test_records_carry_line_key_and_headers(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"existing\n")
    etcd.put(key, [entry(log, topic, read_from="beginning")])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    with open(log, "ab") as f:
        f.write(b"plain\nwindows\r\n\nhalf")
    records = reader(topic).wait_count(4)
    assert [r.value for r in records] == [b"existing", b"plain", b"windows", b""]
    assert {r.key for r in records} == {str(log).encode()}
    assert [int(header(r, "offset")) for r in records] == [0, 9, 15, 24]
    assert {header(r, "path") for r in records} == {str(log).encode()}
    assert {header(r, "host") for r in records} == {socket.gethostname().encode()}
    with open(log, "ab") as f:
        f.write(b"-done\n")
    assert reader(topic).wait_count(5)[-1].value == b"half-done"


def test_read_from_end_skips_existing_lines(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"old 1\nold 2\n")
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log("opened at offset 12")
    with open(log, "ab") as f:
        f.write(b"new\n")
    assert [r.value for r in reader(topic).wait_count(1)] == [b"new"]


def test_rotation_truncation_and_late_file(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "late.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    log.write_bytes(b"a1\na2\n")                       # appears after the worker started
    topic_reader = reader(topic)
    topic_reader.wait_count(2)
    os.rename(log, tmp_path / "late.log.1")            # rotation by rename
    log.write_bytes(b"b1\n")
    topic_reader.wait_count(3)
    with open(log, "r+b") as f:                         # truncation, as copytruncate does
        f.truncate(0)
    agent.wait_log(f"path={log} truncated")
    with open(log, "ab") as f:
        f.write(b"c1\n")
    assert [r.value for r in topic_reader.wait_count(4)] == [b"a1", b"a2", b"b1", b"c1"]


def test_path_change_key_delete_and_same_pair_under_two_keys(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    other_key = unique("key")
    etcd.put(key, [entry(first, topic)])
    etcd.put(other_key, [entry(first, topic)])
    agent = make_agent(etcd, kafka, [key, other_key]).start()
    agent.wait_log(f"worker started path={first}")
    first.write_bytes(b"one\n")
    topic_reader = reader(topic)
    topic_reader.wait_count(1)
    etcd.put(key, [entry(second, topic)])               # path changed under the topic
    etcd.delete(other_key)                              # the other owner of first.log goes
    agent.wait_log(f"worker stopped path={first}")
    agent.wait_log(f"worker started path={second}")
    with open(first, "ab") as f:
        f.write(b"not shipped\n")
    second.write_bytes(b"two\n")
    topic_reader.wait_count(2)
    etcd.delete(key)
    agent.wait_log(f"worker stopped path={second}")
    with open(second, "ab") as f:
        f.write(b"after delete\n")
    assert agent.log().count(f"worker started path={first}") == 1   # shipped once for two keys
    assert [r.value for r in topic_reader.settle(1.5)] == [b"one", b"two"]


def test_bad_values_are_refused_with_the_key_named(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    good, outside_link = tmp_path / "good.log", tmp_path / "link.log"
    outside = tmp_path.parent / unique("outside.log")
    outside.write_bytes(b"")
    os.symlink(outside, outside_link)
    etcd.put(key, [entry(good, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={good}")
    etcd.put(key, "{not json")
    agent.wait_log(f"key={key} value refused: value is not valid JSON")
    etcd.put(key, {"path": str(good)})
    agent.wait_log(f"key={key} value refused: value must be a JSON array")
    good.write_bytes(b"still shipping\n")
    topic_reader = reader(topic)
    topic_reader.wait_count(1)
    etcd.put(key, [entry(good, topic), entry("relative.log", topic), entry(good, "bad topic!"),
                   entry(outside_link, topic), entry("/etc/passwd", topic), "text"])
    log = agent.wait_log(f"key={key} entry 5:")
    assert f"key={key} entry 1: path: must be an absolute path" in log
    assert f"key={key} entry 2: topic: not a valid Kafka topic name" in log
    assert f"key={key} entry 3: path: {outside_link} (real path {outside}) is outside allowed_paths" in log
    assert f"key={key} entry 4: path: /etc/passwd" in log
    assert "Traceback" not in log
    with open(good, "ab") as f:
        f.write(b"after\n")
    assert [r.value for r in topic_reader.wait_count(2)] == [b"still shipping", b"after"]
    assert f"worker started path={outside_link}" not in agent.log()


def test_worker_recovers_from_a_directory_in_its_place(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "dir.log"
    log.mkdir()
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"path={log}: not a regular file; restarting in", count=2)
    assert "Traceback" not in agent.log()
    log.rmdir()
    log.write_bytes(b"recovered\n")
    assert [r.value for r in reader(topic).wait_count(1)] == [b"recovered"]
    metrics = agent.scrape()
    assert f'logship_worker_restarts_total{{topic="{topic}"}}' in metrics


def test_a_line_of_the_default_maximum_passes_intact(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "big.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    big = os.urandom(500_000).hex().encode()         # files.max_line_bytes, across reads
    with open(log, "ab") as f:
        f.write(big[:300000])
        f.flush()
        f.write(big[300000:] + b"\nsmall\n")
    values = [r.value for r in reader(topic).wait_count(2)]
    assert values == [big, b"small"]


def test_static_entries_metrics_and_healthz(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "static.log"
    agent = make_agent(etcd, kafka, [key], logs=[entry(log, topic, read_from="beginning")])
    log.write_bytes(b"s1\ns2\n")
    agent.start()
    reader(topic).wait_count(2)
    wait_until(lambda: f'logship_records_sent_total{{topic="{topic}"}} 2.0' in agent.scrape(), 10,
               "the sent counter")
    text = agent.scrape()
    assert f'logship_lines_read_total{{topic="{topic}"}} 2.0' in text
    assert 'logship_workers_running{key="config"} 1.0' in text
    assert f'logship_workers_running{{key="{key}"}} 0.0' in text
    assert f'logship_send_errors_total{{topic="{topic}"}} 0.0' in text
    assert agent.scrape("/healthz") == "ok\n"


@pytest.mark.parametrize("client", CLIENTS)
def test_sigterm_exits_zero_and_saves_offsets(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "term.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    etcd.put(key, [entry(log, topic, read_from="beginning")])
    agent = make_agent(etcd, kafka, [key]).start()
    reader(topic).wait_count(1000)
    assert agent.stop(timeout=10) == 0
    assert [cp["offset"] for cp in agent.checkpoints()] == [log.stat().st_size]
    assert "agent stopped" in agent.log()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_record_too_large_for_kafka_is_skipped_explicitly(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "huge.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key], kafka={"bootstrap_servers": [kafka.address],
                                                  "max_request_size": 4096})
    agent.start().wait_log(f"worker started path={log}")
    log.write_bytes(b"before\n" + b"z" * 8000 + b"\nafter\n")
    assert [r.value for r in reader(topic).wait_count(2)] == [b"before", b"after"]
    agent.wait_log(f"path={log} topic={topic}: 1 line larger than kafka.max_request_size skipped")
    wait_until(lambda: f'logship_lines_skipped_total{{reason="too_large",topic="{topic}"}} 1.0'
               in agent.scrape(), 10, "the skipped counter")
    wait_until(lambda: [c["offset"] for c in agent.checkpoints()] == [log.stat().st_size], 10,
               "the checkpoint past the skipped line")
