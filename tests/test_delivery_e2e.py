"""At-least-once delivery, proven by counting numbered lines in Kafka.

Each test prints how many duplicates it saw; only loss fails a test.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest

from conftest import CLIENTS
from harness import (Etcd, has_all, numbered, numbers, report_duplicates, rss_bytes,
                     wait_until)

pytestmark = pytest.mark.e2e


@pytest.fixture(params=CLIENTS)
def client(request):
    """Every delivery guarantee holds on both Kafka clients."""
    return request.param


def entry(path, topic, **extra):
    return {"path": str(path), "topic": topic, **extra}


class Writer(threading.Thread):
    """Appends numbered lines at a given rate, up to `total` or until stopped; `written`
    says how far it got."""

    def __init__(self, path, total: int, rate: float, batch: int = 200, rotate_every: int = 0,
                 after_rename: int = 0) -> None:
        super().__init__(daemon=True)
        self.path, self.total, self.rate, self.batch = path, total, rate, batch
        self.rotate_every, self.after_rename = rotate_every, after_rename
        self.written = 0
        self.rotations = 0
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        self.join(5)

    def run(self) -> None:
        handle = open(self.path, "ab")
        started = time.monotonic()
        while self.written < self.total and not self._stopped.is_set():
            count = min(self.batch, self.total - self.written)
            if self.rotate_every:
                count = min(count, self.rotate_every - self.written % self.rotate_every)
            handle.write(numbered(self.written, count))
            handle.flush()
            self.written += count
            if self.rotate_every and self.written % self.rotate_every == 0 \
                    and self.written < self.total:
                handle = self._rotate(handle)
            pace = started + self.written / self.rate - time.monotonic()
            if pace > 0:
                time.sleep(pace)   # rate control of the load, not a wait for a result
        handle.close()

    def _rotate(self, old):
        """Rename, then keep writing through the old descriptor for a while, like a slow app."""
        self.rotations += 1
        os.rename(self.path, f"{self.path}.{self.rotations}")
        old.write(numbered(self.written, self.after_rename))
        old.flush()
        self.written += self.after_rename
        old.close()
        return open(self.path, "ab")


def test_kill_9_mid_stream_loses_nothing(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "fast.log"
    total = 200_000
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    writer = Writer(log, total, rate=1e9, batch=5000)
    writer.start()
    topic_reader = reader(topic)
    topic_reader.wait_for(lambda r: len(r) >= 40_000, 120, "40000 records before the kill")
    agent.kill()
    killed_at = len(topic_reader.records)
    writer.join()
    agent.start()
    topic_reader.wait_for(has_all(total), 300, f"all {total} numbers")
    print(f"\n[kill -9] killed with {killed_at} records in Kafka")
    report_duplicates("kill -9", topic_reader.records)


def test_sigterm_then_restart_resends_nothing(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "clean.log"
    log.write_bytes(numbered(0, 5000))
    etcd.put(key, [entry(log, topic, read_from="beginning")])
    agent = make_agent(etcd, kafka, [key]).start()
    topic_reader = reader(topic)
    topic_reader.wait_for(has_all(5000), 60, "5000 numbers")
    assert agent.stop() == 0
    agent.start()
    agent.wait_log(rf"path={log} topic=\S+: resuming at offset {log.stat().st_size}")
    with open(log, "ab") as f:
        f.write(numbered(5000, 1))
    topic_reader.wait_for(has_all(5001), 60, "the line written after the restart")
    assert report_duplicates("SIGTERM restart", topic_reader.settle(1.0)) == 0


def test_partial_line_is_held_across_a_restart(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "partial.log"
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    with open(log, "ab") as f:
        f.write(b"first\npart one")
    topic_reader = reader(topic)
    topic_reader.wait_count(1)
    wait_until(lambda: [c["offset"] for c in agent.checkpoints()] == [6], 10, "checkpoint at 6")
    assert agent.stop() == 0
    assert [c["offset"] for c in agent.checkpoints()] == [6]   # never inside a line
    agent.start()
    agent.wait_log(rf"path={log} topic=\S+: resuming at offset 6")
    with open(log, "ab") as f:
        f.write(b", part two\n")
    topic_reader.wait_count(2)
    assert [r.value for r in topic_reader.settle(1.0)] == [b"first", b"part one, part two"]


def test_rotation_every_10000_lines_at_20000_per_second(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "rotating.log"
    total = 100_000
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    writer = Writer(log, total, rate=20_000, batch=200, rotate_every=10_000, after_rename=200)
    writer.start()
    writer.join()
    topic_reader = reader(topic)
    topic_reader.wait_for(has_all(writer.written), 180, f"all {writer.written} numbers")
    print(f"\n[rotation] {writer.rotations} renames, {writer.written} lines")
    report_duplicates("rotation", topic_reader.records)
    agent.wait_log("rotated file finished and closed", count=writer.rotations)


def test_a_new_file_on_a_reused_inode_is_read_from_its_start(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "reuse.log"
    log.write_bytes(numbered(0, 100))
    etcd.put(key, [entry(log, topic, read_from="beginning")])
    agent = make_agent(etcd, kafka, [key]).start()
    topic_reader = reader(topic)
    topic_reader.wait_for(has_all(100), 60, "the first file")
    assert agent.stop() == 0
    old_inode = log.stat().st_ino
    log.unlink()
    log.write_bytes(numbered(100, 300))       # larger than the old offset: only identity tells
    if log.stat().st_ino != old_inode:
        # Another process took the freed inode first: make the saved checkpoint name the
        # new file's inode, which is exactly what the agent would see after a reuse.
        state = agent.workdir / "state" / "checkpoints.json"
        state.write_text(state.read_text().replace(f'"ino": {old_inode}',
                                                   f'"ino": {log.stat().st_ino}'))
        print("\n[inode reuse] simulated: the filesystem gave the new file another inode")
    agent.start()
    topic_reader.wait_for(lambda r: set(numbers(r)) >= set(range(400)), 60, "the new file whole")
    report_duplicates("inode reuse", topic_reader.settle(1.0))


def test_etcd_outage_workers_keep_shipping_and_later_changes_apply(
        kafka, make_agent, reader, key, topic, tmp_path_factory, tmp_path):
    etcd = Etcd(tmp_path_factory.mktemp("etcd-outage") / "data")
    etcd.start()
    try:
        first, second = tmp_path / "first.log", tmp_path / "second.log"
        etcd.put(key, [entry(first, topic)])
        agent = make_agent(["127.0.0.1:1", etcd.address], kafka, [key]).start()  # fails over
        agent.wait_log(f"worker started path={first}")
        first.write_bytes(numbered(0, 10))
        topic_reader = reader(topic)
        topic_reader.wait_for(has_all(10), 60, "lines before the outage")
        etcd.stop()
        agent.wait_log(f"key={key} etcd: .*running workers keep shipping")
        with open(first, "ab") as f:
            f.write(numbered(10, 10))
        topic_reader.wait_for(has_all(20), 60, "lines during the outage")
        # Reconnects back off to a cap of 5 s (twice at the cap: the delay no longer grows).
        agent.wait_log(f"key={key} etcd: .*retrying in 5.0s", count=2, timeout=60)
        etcd.start()
        # At most one capped wait, and etcd's first refusals just after its start.
        agent.wait_log(f"key={key} watching on {etcd.address}", count=2, timeout=20)
        status_key = f"/logship/agents/{socket.gethostname()}"
        wait_until(lambda: etcd.get(status_key), 60, "the status after the outage")
        etcd.put(key, [entry(first, topic), entry(second, topic)])
        agent.wait_log(f"worker started path={second}")
        second.write_bytes(numbered(20, 10))
        topic_reader.wait_for(has_all(30), 60, "lines of the file added after the outage")
        report_duplicates("etcd outage", topic_reader.records)
    finally:
        etcd.stop()


def test_kafka_unreachable_at_start(etcd, own_kafka, make_agent, reader, key, topic, tmp_path):
    own_kafka.stop()                      # the other client's run may have started it
    log = tmp_path / "early.log"
    log.write_bytes(numbered(0, 100))
    etcd.put(key, [entry(log, topic, read_from="beginning")])
    agent = make_agent(etcd, own_kafka, [key]).start()
    agent.wait_log(rf"Kafka unavailable \({own_kafka.address}\): {own_kafka.address}: "
                   r"connection refused; holding lines", timeout=60)
    assert agent.metric("logship_kafka_up") == 0
    assert re.search(r'logship_kafka_errors_total\{reason="\w+"\} [1-9]', agent.scrape())
    own_kafka.start()
    topic_reader = reader(topic, own_kafka)
    topic_reader.wait_for(has_all(100), 120, "lines written before Kafka started")
    agent.wait_log("Kafka available again")
    assert "restarting in" not in agent.log()
    report_duplicates("kafka late", topic_reader.records)


def test_kafka_outage_of_15_seconds(etcd, own_kafka, make_agent, reader, key, topic, tmp_path):
    if own_kafka.proc is None:
        own_kafka.start()
    log = tmp_path / "outage.log"
    rate, total = 1000, 30_000
    etcd.put(key, [entry(log, topic)])
    agent = make_agent(etcd, own_kafka, [key], files={
        "poll_interval": 0.5, "max_in_flight_bytes": 1024 * 1024})
    agent.start().wait_log(f"worker started path={log}")
    writer = Writer(log, total, rate=rate, batch=100)
    writer.start()
    topic_reader = reader(topic, own_kafka)
    topic_reader.wait_for(lambda r: len(r) >= 2000, 60, "records before the outage")
    own_kafka.stop()
    stopped_at = writer.written
    rss_before = rss_bytes(agent.proc.pid)
    agent.wait_log(rf"Kafka unavailable \({own_kafka.address}\): {own_kafka.address}.*; holding lines")
    assert agent.metric("logship_kafka_up") == 0
    wait_until(lambda: writer.written >= stopped_at + 15 * rate, 60, "15 s of writes")
    rss_during = rss_bytes(agent.proc.pid)
    own_kafka.start()
    writer.join()
    topic_reader.wait_for(has_all(total), 240, f"all {total} numbers")
    agent.wait_log(r"Kafka available again after \d+s")
    assert agent.metric("logship_kafka_up") == 1
    assert "restarting in" not in agent.log()
    print(f"\n[kafka outage] agent RSS {rss_before >> 20} MiB before, {rss_during >> 20} MiB "
          f"after 15 s of writes with Kafka down")
    assert rss_during - rss_before < 64 * 1024 * 1024
    report_duplicates("kafka outage", topic_reader.records)
