"""What every part of the bench uses: the services, a shipper's result, a process's CPU
and memory, files of numbered lines, a topic's size at the broker, the real agent with
the shipped defaults, a line of progress on stderr."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from harness import Agent, Etcd, Kafka, stat_fields, wait_until

CLIENTS = ("kafka-python", "confluent-kafka")
AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"
PACKAGES = {"kcat": "kcat", "rsyslogd": "rsyslog-kafka"}
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    shipper: str
    lines: int
    seconds: float
    cpu_seconds: float
    rss_bytes: int

    @property
    def rate(self) -> float:
        return self.lines / self.seconds


@contextmanager
def services():
    """etcd and Kafka on free loopback ports, in a temporary folder also given to the runs."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        etcd, kafka = Etcd(tmp / "etcd"), Kafka(tmp / "kafka")
        etcd.start()
        kafka.start()
        try:
            yield etcd, kafka, tmp
        finally:
            kafka.stop()
            etcd.stop()


def install_missing() -> None:
    missing = [package for tool, package in PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        sudo = [] if os.getuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def make_file(path: Path, lines: int, size: int) -> None:
    body = b"x" * max(0, size - 10)
    with open(path, "wb") as f:
        for start in range(0, lines, 10000):
            f.write(b"".join(b"%09d %s\n" % (i, body) for i in range(start, min(lines, start + 10000))))


class TopicSize:
    """The topic's end offsets summed; read_committed: up to its last committed transaction
    (which counts each transaction's marker too). One consumer for a whole wait: one made
    for each look cost the bench 9 ms of CPU and the broker a connection, 14 times a
    second, taken from the shipper measured beside it on the same two cores (and not from
    kcat, which is timed by its exit)."""

    def __init__(self, kafka: Kafka, topic: str, isolation: str = "read_uncommitted") -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=kafka.address, api_version=(2, 8),
                                       isolation_level=isolation)
        self._topic = topic
        self._partitions: list[TopicPartition] = []

    def __call__(self) -> int:
        if not self._partitions:        # asked again until the shipper has made the topic
            self._partitions = [TopicPartition(self._topic, p)
                                for p in self._consumer.partitions_for_topic(self._topic)]
        return sum(self._consumer.end_offsets(self._partitions).values())

    def wait_for(self, count: int, timeout: float, what: str, step: float) -> None:
        try:
            wait_until(lambda: self() >= count, timeout, what, step=step)
        finally:
            self._consumer.close()




def link_all(source: Path, directory: Path) -> None:
    """Hard links in `directory` to every file of `source`: a shipper's own copy, free."""
    directory.mkdir(parents=True)
    for path in source.iterdir():
        os.link(path, directory / path.name)


def cpu_seconds(pid: int) -> float:
    fields = stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / TICK


def memory(pid: int, field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of a running process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def mode(delivery: str) -> str:
    """A row's delivery, as its label says it."""
    return ", exactly-once" if delivery == EXACTLY_ONCE else ""


def bench_agent(workdir: Path, etcd: Etcd, kafka: Kafka, key: str, client: str,
                delivery: str = AT_LEAST_ONCE, name: str | None = None) -> Agent:
    """The real agent with the shipped defaults (the test harness polls faster)."""
    agent = Agent(workdir, etcd, kafka, [key], client, allowed_paths=[f"{workdir}/**"], files={},
                  agent={"name": name or key})
    for setting in ("timeout", "probe_interval"):
        del agent.config["etcd"][setting]
    agent.config["kafka"]["delivery"] = delivery
    # Not beside its log, as on a host: each log line would be an event on the config's
    # directory, which the agent watches for edits.
    agent.config_path = workdir / "etc" / "config.yaml"
    agent.config_path.parent.mkdir(parents=True, exist_ok=True)
    agent.write_config()
    return agent


def progress(result, *what):
    print(*what, result, file=sys.stderr, flush=True)
    return result
