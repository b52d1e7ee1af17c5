"""Journal entries: ENTRIES entries of about SIZE bytes in real journal files (written by
systemd-journal-remote), shipped by `logship run` through journalctl from the beginning.
The CPU counted is the agent's and its journalctl's: reading the journal is part of the
cost, as for the peers that run journalctl too."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import AT_LEAST_ONCE, Result, cpu_seconds, link_all, memory
from benchmarks.shippers import ship_with_logship
from harness import Etcd, Journal, Kafka

RUN = 50_000        # entries per journal-remote run


def make_journal(directory: Path, entries: int, size: int) -> int:
    journal = Journal(directory)
    for first in range(0, entries, RUN):
        journal.write([b"%08d " % i + b"x" * max(0, size - 9)
                       for i in range(first, min(first + RUN, entries))])
    return entries


def journalctl_cpu(pid: int) -> float:
    """The CPU seconds of the agent's children (its journalctl), while they run."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += cpu_seconds(int(child))
    return total


def bench_journal(etcd: Etcd, kafka: Kafka, journal: Path, entries: int, client: str,
                  tmp: Path, run: int) -> Result:
    name = f"{client}-journal-{run}"
    topic = f"bench-{name}"
    workdir = tmp / f"logship-{name}"
    link_all(journal, workdir / "journal")
    spec = [{"journal": {"directory": str(workdir / "journal")}, "topic": topic,
             "read_from": "beginning"}]
    agent, seconds, cpu = ship_with_logship(etcd, kafka, workdir, spec, client, entries, topic,
                                            AT_LEAST_ONCE)
    cpu += journalctl_cpu(agent.proc.pid)
    rss = memory(agent.proc.pid, "VmHWM")
    agent.stop()
    return Result(f"logship ({client}, journal entries, with journalctl's CPU)", entries,
                  seconds, cpu, rss)
