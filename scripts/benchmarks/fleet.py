"""What a fleet costs etcd: one agent's status writes, the keep-alives of its lease, and
`logship status` / `logship top` over a fleet's documents.

- writes: three real agents with the shipped status settings, one idle (one file, nothing
  written), one with BUSY_FILES busy files, one with WIDE_FILES files that all change;
  each one's status key is watched for WINDOW seconds after WARM_UP, and every write
  counted with its bytes (etcd keeps each in its history until compaction);
- keep-alives: LEASES leases refreshed round-robin for KEEPALIVE_SECONDS by the agent's
  own session code (one keep-alive stream per session), and etcd's CPU meanwhile;
- reads: FLEETS documents, copies of the busy agent's own, under one prefix; the time
  and peak RSS of `logship status`, `status --json` and one `top` frame (stdout not a
  terminal) over them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import bench_agent, cpu_seconds, progress
from harness import Agent, Etcd, Kafka, KeyWrites, wait_until
from logship.config import EtcdConfig
from logship.etcd_source import EtcdSource

WARM_UP, WINDOW = 30, 180
BUSY_FILES, BUSY_RATE = 20, 100          # lines/s per busy file
WIDE_FILES, WIDE_RATE = 2000, 200        # lines/s over all the files: each a line every 10 s
LEASES, KEEPALIVE_SECONDS, KEEPALIVE_THREADS = 1000, 20, 4
FLEETS = (1000, 10_000)
FLEET_AGENTS = 10_000
KEEPALIVE_EVERY = 5.0                    # status.ttl / 3 with the shipped ttl of 15 s


@dataclass
class Writes:
    case: str
    count: int
    bytes: int
    window: float
    largest: int

    def per_hour(self, amount: float) -> float:
        return amount * 3600 / self.window


@dataclass
class KeepAlives:
    count: int
    seconds: float
    etcd_cpu: float

    @property
    def cpu_per_keepalive(self) -> float:
        return self.etcd_cpu / self.count


@dataclass
class Read:
    documents: int
    command: str
    seconds: float
    rss_bytes: int
    error: str | None = None        # the command failed: its last line on stderr


class Appender(threading.Thread):
    """Appends a line to each of `paths` in turn, `rate` lines a second in all."""

    def __init__(self, paths: list[Path], rate: float) -> None:
        super().__init__(daemon=True)
        self._paths, self._rate = paths, rate
        self.stopping = threading.Event()

    def run(self) -> None:
        started, written = time.monotonic(), 0
        while not self.stopping.is_set():
            with open(self._paths[written % len(self._paths)], "ab") as f:
                f.write(b"%09d a line of a log file, shipped to Kafka by logship\n" % written)
            written += 1
            pace = started + written / self._rate - time.monotonic()
            if pace > 0:
                self.stopping.wait(pace)


def _agent_with_files(tmp: Path, etcd: Etcd, kafka: Kafka, name: str,
                      files: int) -> tuple[Agent, list[Path]]:
    workdir = tmp / f"fleet-{name}"
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    paths = [logs / f"{name}-{i:04d}.log" for i in range(files)]
    for path in paths:
        path.write_bytes(b"")
    key = f"fleet/hosts/{name}"
    etcd.put(key, [{"path": str(logs / "*.log"), "topic": f"fleet-{name}"}])
    return bench_agent(workdir, etcd, kafka, key, "kafka-python", name=name), paths


def bench_status_writes(etcd: Etcd, kafka: Kafka, tmp: Path) -> tuple[list[Writes], bytes]:
    """The three agents side by side; returns their writes and the busy one's document."""
    cases = {"idle, 1 file": ("idle", 1, 0), f"{BUSY_FILES} busy files": ("busy", BUSY_FILES,
                                                                          BUSY_FILES * BUSY_RATE),
             f"{WIDE_FILES:,} changing files": ("wide", WIDE_FILES, WIDE_RATE)}
    agents, appenders, watches = {}, [], {}
    try:
        for case, (name, files, rate) in cases.items():
            agent, paths = _agent_with_files(tmp, etcd, kafka, name, files)
            agents[case] = agent.start()
            if rate:
                appenders.append(Appender(paths, rate))
        for case, (name, files, _) in cases.items():
            wait_until(lambda: _files_total(etcd, name) == files, 300,
                       f"{name}'s status with its {files} files", step=1)
        for appender in appenders:
            appender.start()
        time.sleep(WARM_UP)                  # the first counters written; steady state after
        watches = {case: KeyWrites(etcd, f"/logship/agents/{name}")
                   for case, (name, _, _) in cases.items()}
        started = time.monotonic()
        time.sleep(WINDOW)
        window = time.monotonic() - started
        for watch in watches.values():
            watch.close()
        document = etcd.get("/logship/agents/busy")
    finally:
        for appender in appenders:
            appender.stopping.set()
        for agent in agents.values():
            agent.stop(120)
    sizes = {case: [len(value) for _, value in w.writes] for case, w in watches.items()}
    return [Writes(case, len(s), sum(s), window, max(s, default=0))
            for case, s in sizes.items()], document


def _files_total(etcd: Etcd, name: str) -> int:
    value = etcd.get(f"/logship/agents/{name}")
    return json.loads(value)["files_total"] if value else -1


def bench_keepalives(etcd: Etcd) -> KeepAlives:
    """LEASES leases kept alive as fast as KEEPALIVE_THREADS sessions can, through the
    agent's own code (one keep-alive stream a session)."""
    source = EtcdSource(EtcdConfig(endpoints=(("127.0.0.1", etcd.port),), keys=("unused",)))
    sessions = [source.connect() for _ in range(KEEPALIVE_THREADS)]
    leases = [sessions[i % KEEPALIVE_THREADS].lease(60) for i in range(LEASES)]
    deadline = time.monotonic() + KEEPALIVE_SECONDS
    counts = [0] * KEEPALIVE_THREADS

    def refresh(thread: int) -> None:
        mine = leases[thread::KEEPALIVE_THREADS]
        while time.monotonic() < deadline:
            sessions[thread].refresh(mine[counts[thread] % len(mine)])
            counts[thread] += 1
    cpu, started = cpu_seconds(etcd.proc.pid), time.monotonic()
    with ThreadPoolExecutor(KEEPALIVE_THREADS) as pool:
        list(pool.map(refresh, range(KEEPALIVE_THREADS)))
    result = KeepAlives(sum(counts), time.monotonic() - started, cpu_seconds(etcd.proc.pid) - cpu)
    for i, lease in enumerate(leases):
        sessions[i % KEEPALIVE_THREADS].revoke(lease)
    for session in sessions:
        session.close()
    return result


def fleet_config(tmp: Path, etcd: Etcd, prefix: str) -> Path:
    path = tmp / "fleet-viewer.yaml"
    path.write_text(json.dumps({"etcd": {"endpoints": [etcd.endpoint], "keys": ["unused"]},
                                "kafka": {"bootstrap_servers": ["127.0.0.1:1"]},
                                "status": {"prefix": prefix}}))
    return path


def put_fleet(etcd: Etcd, prefix: str, document: bytes, count: int) -> None:
    """Copies of one agent's document, each under a name of its own."""
    doc = json.loads(document)
    etcd.put_all({f"{prefix}agent-{i:05d}": json.dumps({**doc, "name": f"agent-{i:05d}"})
                  for i in range(count)})


def timed(command: list[str], output: Path) -> tuple[float, int, str | None]:
    """Wall time and peak RSS of a command run to its end, and its error if it failed."""
    started = time.perf_counter()
    with open(output, "wb") as out, open(output.with_suffix(".err"), "wb+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=output.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        error = err.read().decode(errors="replace").strip().splitlines()[-1:] or ["exit code"]
    seconds = time.perf_counter() - started
    return seconds, usage.ru_maxrss * 1024, None if proc.returncode == 0 else error[0][:160]


def bench_fleet_reads(etcd: Etcd, document: bytes, tmp: Path) -> list[Read]:
    reads = []
    for count in FLEETS:
        prefix = f"/fleet-{count}/agents/"
        put_fleet(etcd, prefix, document, count)
        config = fleet_config(tmp, etcd, prefix)
        logship = [sys.executable, "-m", "logship"]
        for label, args in (("status", ["status"]), ("status --json", ["status", "--json"]),
                            ("top, one frame", ["top"])):
            output = tmp / "fleet-output"
            seconds, rss, error = timed([*logship, *args, "--config", str(config)], output)
            if error is None:
                _check(label, output, count)
            reads.append(progress(Read(count, label, seconds, rss, error)))
    return reads


def _check(label: str, output: Path, count: int) -> None:
    """Every agent in the output, so that a fast wrong answer is not measured: a row of
    the table or of top starts with the name (the status table's sections end in ':')."""
    data = output.read_bytes()
    shown = len(json.loads(data)) if label == "status --json" else \
        sum(line.startswith(b"agent-") and not line.endswith(b":") for line in data.splitlines())
    if shown != count:
        raise AssertionError(f"{label}: {shown} of {count} agents shown")


def run_fleet(etcd: Etcd, kafka: Kafka, tmp: Path) -> tuple[list[Writes], KeepAlives, list[Read]]:
    writes, document = bench_status_writes(etcd, kafka, tmp)
    for result in writes:
        progress(result)
    keepalives = progress(bench_keepalives(etcd))
    return writes, keepalives, bench_fleet_reads(etcd, document, tmp)


def report_fleet(writes: list[Writes], keepalives: KeepAlives, reads: list[Read]) -> None:
    print(f"\nOne agent's status in etcd, shipped settings (ttl 15 s, interval 5 s, "
          f"progress_interval 60 s), writes to its key counted by a watch over {WINDOW} s "
          f"after {WARM_UP} s of warm-up; a day's history is what etcd keeps until it is "
          f"compacted:\n")
    print("| agent | writes/hour | kB/hour | largest document kB | revisions/day | "
          "history MB/day |")
    print("|---|---|---|---|---|---|")
    for w in writes:
        print(f"| {w.case} | {w.per_hour(w.count):.0f} | {w.per_hour(w.bytes) / 1000:.1f} | "
              f"{w.largest / 1000:.1f} | {w.per_hour(w.count) * 24:.0f} | "
              f"{w.per_hour(w.bytes) * 24 / 1e6:.2f} |")
    rate = keepalives.count / keepalives.seconds
    fleet_rate = FLEET_AGENTS / KEEPALIVE_EVERY
    print(f"\nLease keep-alives: {keepalives.count:,} in {keepalives.seconds:.0f} s "
          f"({rate:,.0f}/s, {LEASES} leases, {KEEPALIVE_THREADS} clients); etcd's CPU "
          f"{keepalives.cpu_per_keepalive * 1e6:.0f} µs a keep-alive, so {FLEET_AGENTS:,} "
          f"agents ({fleet_rate:,.0f}/s) take {fleet_rate * keepalives.cpu_per_keepalive:.0%} "
          f"of a core, and write nothing")
    print("\n| documents | command | seconds | peak RSS MiB |")
    print("|---|---|---|---|")
    for r in reads:
        result = f"failed: {r.error}" if r.error else f"{r.seconds:.1f}"
        print(f"| {r.documents:,} | {r.command} | {result} | {r.rss_bytes / 2**20:.0f} |")
