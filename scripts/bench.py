"""Throughput benchmark: logship against a bare kafka-python producer loop, same broker.

Starts its own etcd and Kafka on free loopback ports (tests/harness.py), writes LINES
lines of SIZE bytes, and reports lines/s for
  - producer: a bare loop of KafkaProducer.send() with the same key and headers, then flush;
  - logship:  the real `logship run` shipping the file from its beginning, timed from
              start until logship_lines_sent_total reaches LINES, once per Kafka client.
Usage: .venv/bin/python scripts/bench.py [LINES] [SIZE]
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Agent, Etcd, Kafka, wait_until  # noqa: E402
from kafka import KafkaProducer  # noqa: E402


def make_file(path: Path, lines: int, size: int) -> None:
    body = b"x" * max(0, size - 10)
    with open(path, "wb") as f:
        for start in range(0, lines, 10000):
            f.write(b"".join(b"%09d %s\n" % (i, body) for i in range(start, min(lines, start + 10000))))


def bench_producer(kafka: Kafka, path: Path, topic: str) -> float:
    producer = KafkaProducer(bootstrap_servers=kafka.address, api_version=(2, 8), acks="all",
                             linger_ms=5, batch_size=256 * 1024)
    producer.send(topic, b"warm-up").get(30)
    lines = path.read_bytes().split(b"\n")[:-1]
    key = str(path).encode()
    started = time.perf_counter()
    offset = 0
    for line in lines:
        producer.send(topic, value=line, key=key,
                      headers=[("path", key), ("host", b"bench"), ("offset", b"%d" % offset)])
        offset += len(line) + 1
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return len(lines) / elapsed


CLIENTS = ("kafka-python", "confluent-kafka")


def bench_logship(etcd: Etcd, kafka: Kafka, workdir: Path, path: Path, client: str,
                  lines: int) -> float:
    topic = f"bench-{client}"
    etcd.put(topic, [{"path": str(path), "topic": topic, "read_from": "beginning"}])
    agent = Agent(workdir, etcd, kafka, [topic], client, allowed_paths=[f"{path.parent}/**"])
    started = time.perf_counter()
    agent.start()
    try:
        def sent() -> bool:
            try:
                text = agent.scrape()
            except OSError:
                return False
            match = re.search(rf'logship_lines_sent_total{{topic="{topic}"}} (\S+)', text)
            return bool(match) and float(match.group(1)) >= lines
        try:
            wait_until(sent, 300, "logship to ship every line", step=0.1)
        except AssertionError:
            print(agent.log()[-3000:], file=sys.stderr)
            raise
        return lines / (time.perf_counter() - started)
    finally:
        agent.stop()


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        etcd, kafka = Etcd(tmp / "etcd"), Kafka(tmp / "kafka")
        etcd.start()
        kafka.start()
        try:
            path = tmp / "bench.log"
            make_file(path, lines, size)
            producer = bench_producer(kafka, path, "bench-producer")
            shipped = {}
            for client in CLIENTS:
                workdir = tmp / client       # a state_dir of its own: starts from offset 0
                workdir.mkdir()
                shipped[client] = bench_logship(etcd, kafka, workdir, path, client, lines)
        finally:
            kafka.stop()
            etcd.stop()
    print(f"{lines} lines of {size} bytes, one local broker, one run\n")
    print("| shipper | lines/s | ratio to the bare kafka-python loop |")
    print("|---|---|---|")
    print(f"| bare kafka-python producer loop | {producer:.0f} | 1.00 |")
    for client, rate in shipped.items():
        print(f"| logship ({client}) | {rate:.0f} | {rate / producer:.2f} |")


if __name__ == "__main__":
    main()
