"""Many files in one etcd value: 1,000, 5,000 and 10,000 one-line files read from the
beginning, the time until every line is in Kafka, then CPU and RSS over IDLE_SECONDS
quiet seconds; for the largest, a restart and the time until every file's new line is in
Kafka (each resumed at its saved offset)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import CLIENTS, TopicSize, bench_agent, cpu_seconds, memory, progress
from harness import Agent, Etcd, Kafka

IDLE_SECONDS = 30
SCALE_FILES, SCALE_DIRS = (1000, 5000, 10_000), 10


@dataclass
class Scale:
    files: int
    client: str
    start_seconds: float        # from the put of the value until every file's line is in Kafka
    idle_share: float           # of a core, over IDLE_SECONDS with nothing written
    rss_bytes: int
    restart_seconds: float | None = None    # from the process start until every file's new line


def make_scale_files(logs: Path, files: int, topic: str) -> list[dict]:
    """FILES files of one line over SCALE_DIRS directories, one entry each."""
    entries = []
    for i in range(files):
        path = logs / f"d{i % SCALE_DIRS}" / f"f{i}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"one line\n")
        entries.append({"path": str(path), "topic": topic, "read_from": "beginning"})
    return entries


def wait_topic(kafka: Kafka, topic: str, count: int, agent: Agent) -> None:
    """Counted at the broker: a scrape of /metrics would itself cost the agent a stat per
    file."""
    try:
        TopicSize(kafka, topic).wait_for(count, 900, f"{count} records in {topic}", step=0.5)
    except AssertionError:
        print(agent.log()[-3000:], file=sys.stderr)
        raise


def bench_scale(etcd: Etcd, kafka: Kafka, files: int, client: str, tmp: Path,
                restart: bool) -> Scale:
    """N files in one etcd value: the time until each has shipped its line; CPU and RSS
    once idle; and, with `restart`, the agent stopped, a line appended to each file, and
    the time from its start until every new line is in Kafka (resumed at saved offsets)."""
    topic = f"scale-{files}-{client}"
    workdir = tmp / topic
    entries = make_scale_files(workdir / "logs", files, topic)
    key = f"{topic}-key"
    etcd.put(key, [])
    agent = bench_agent(workdir, etcd, kafka, key, client).start()
    try:
        agent.wait_log(f"key={key} applied 0 entries", 60)
        started = time.perf_counter()
        etcd.put(key, entries)
        wait_topic(kafka, topic, files, agent)
        result = Scale(files, client, time.perf_counter() - started, 0.0, 0)
        time.sleep(5)                       # let the start-up settle; nothing is written
        cpu, quiet = cpu_seconds(agent.proc.pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        result.idle_share = (cpu_seconds(agent.proc.pid) - cpu) / (time.monotonic() - quiet)
        result.rss_bytes = memory(agent.proc.pid, "VmRSS")
    finally:
        agent.stop(120)
    if restart:
        for entry in entries:
            with open(entry["path"], "ab") as f:
                f.write(b"after the restart\n")
        started = time.perf_counter()
        agent.start()
        try:
            wait_topic(kafka, topic, 2 * files, agent)
            result.restart_seconds = time.perf_counter() - started
        finally:
            agent.stop(120)
    return result


def run_scale(etcd: Etcd, kafka: Kafka, tmp: Path) -> list[Scale]:
    """Every size on the default client, the largest with a restart; the largest on
    confluent-kafka too."""
    largest = SCALE_FILES[-1]
    runs = [(files, CLIENTS[0]) for files in SCALE_FILES] + [(largest, CLIENTS[1])]
    return [progress(bench_scale(etcd, kafka, files, client, tmp, restart=files == largest))
            for files, client in runs]
