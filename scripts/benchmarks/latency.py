"""Append -> Kafka latency: lines appended at LATENCY_RATE lines/s, each carrying its
write time; the broker stamps each record with its append time (LogAppendTime); at
exactly-once a read_committed consumer reading meanwhile stamps its receipt instead."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from benchmarks.common import AT_LEAST_ONCE, EXACTLY_ONCE, bench_agent
from harness import Etcd, Kafka

LATENCY_RATE, LATENCY_SECONDS = 1000, 10


def bench_latency(etcd: Etcd, kafka: Kafka, client: str, tmp: Path,
                  delivery: str = AT_LEAST_ONCE) -> tuple[float, float]:
    """p50 and p99 in ms from a line's write until its record can be read: its append to
    the broker's log (LogAppendTime) at least once; at exactly-once its receipt by a
    read_committed consumer reading as the lines are written, the commit included."""
    topic = f"latency-{client}-{delivery}"
    kafka.create_topic(topic, **{"message.timestamp.type": "LogAppendTime"})
    workdir = tmp / f"latency-{client}-{delivery}"
    workdir.mkdir()
    path = workdir / "app.log"
    path.write_bytes(b"")
    key = f"latency-{client}-{delivery}"
    etcd.put(key, [{"path": str(path), "topic": topic}])
    agent = bench_agent(workdir, etcd, kafka, key, client, delivery).start()
    count = LATENCY_RATE * LATENCY_SECONDS
    try:
        agent.wait_log(f"worker started path={path}", 60)
        if delivery == EXACTLY_ONCE:
            consumer = from_start(kafka, topic, "read_committed")
            with ThreadPoolExecutor(1) as pool:
                received = pool.submit(read_all, consumer, topic, count)
                write_paced(path, count, LATENCY_RATE)
                records = received.result()
        else:
            write_paced(path, count, LATENCY_RATE)
            records = read_all(from_start(kafka, topic), topic, count)
    finally:
        agent.stop()
    delays = sorted(r.timestamp - int(r.value.split(b" ", 1)[0]) / 1e6 for r in records)
    return delays[len(delays) // 2], delays[int(len(delays) * 0.99)]


def write_paced(path: Path, count: int, rate: int) -> None:
    pad = b"y" * 80
    with open(path, "ab", buffering=0) as f:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            f.write(b"%d %s\n" % (time.time_ns(), pad))


def from_start(kafka: Kafka, topic: str, isolation: str = "read_uncommitted") -> KafkaConsumer:
    """A consumer of every partition of the topic from its start, its positions looked up:
    ready before the first line is written. Set up in the reading thread as the lines
    were written, its start was counted in the first lines' latency at exactly-once,
    where the receipt is the measure."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.address, api_version=(2, 8),
                             enable_auto_commit=False, isolation_level=isolation,
                             fetch_max_wait_ms=10)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    for partition in partitions:
        consumer.position(partition)
    return consumer


def read_all(consumer: KafkaConsumer, topic: str, count: int) -> list:
    """Every record of the topic; read_committed also stamps each with its receipt (ms)."""
    receipt = consumer.config["isolation_level"] == "read_committed"
    records: list = []
    try:
        deadline = time.monotonic() + 120
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                now = time.time() * 1000
                records.extend((r._replace(timestamp=now) for r in batch) if receipt
                               else batch)
    finally:
        consumer.close()
    if len(records) < count:
        raise AssertionError(f"{topic}: {len(records)} of {count} records arrived")
    return records
