"""What every scenario of the bench uses: a process's CPU and memory, the real agent
with the shipped defaults, a line of progress on stderr."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness import Agent, Etcd, Kafka, stat_fields

AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"
TICK = os.sysconf("SC_CLK_TCK")


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
