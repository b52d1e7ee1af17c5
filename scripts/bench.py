"""Side-by-side benchmark (`make bench`): one invocation, one local broker, loopback only.

Starts its own etcd and Kafka on free loopback ports (tests/harness.py) and runs, each
part in a module of scripts/benchmarks/ named after it:

- throughput: one file, 100 busy files and journal entries (`journal`), shipped by a bare kafka-python producer loop,
  kcat -P -l, rsyslog imfile -> omkafka and the real `logship run` on each Kafka client,
  at least once and exactly-once (the shippers are in `shippers`): lines/s, the ratio to
  kcat, CPU µs per line and peak RSS of the shipper's process, in rounds, with the
  ratios that have targets within each round and their median;
- latency: append -> Kafka at 1,000 lines/s;
- scale: 1,000 to 10,000 one-line files in one etcd value (`bench.py --scale N
  [CLIENT]` runs one such row alone);
- fleet: what agents cost etcd, and `logship status` / `top` over 1,000 and 10,000
  agents' documents (`bench.py --fleet` runs it alone).

`report` prints the tables. kcat and rsyslog-kafka are Debian packages; the bench
installs them when missing.
Usage: .venv/bin/python scripts/bench.py [LINES] [SIZE]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchmarks.common import (AT_LEAST_ONCE, CLIENTS, EXACTLY_ONCE,  # noqa: E402
                               install_missing, make_file, mode, progress, services)
from benchmarks.fleet import report_fleet, run_fleet  # noqa: E402
from benchmarks.journal import bench_journal, make_journal  # noqa: E402
from benchmarks.latency import bench_latency  # noqa: E402
from benchmarks.report import report, report_scale  # noqa: E402
from benchmarks.scale import bench_scale, run_scale  # noqa: E402
from benchmarks.shippers import bare_loop, make_busy_files  # noqa: E402
from benchmarks.throughput import Inputs, rounds  # noqa: E402


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    install_missing()
    with services() as (etcd, kafka, tmp):
        path = tmp / "bench.log"
        make_file(path, lines, size)
        busy, journal = tmp / "busy", tmp / "journal"
        inputs = Inputs(path, lines, busy, make_busy_files(busy, size), journal,
                        make_journal(journal, lines, size))
        runs, results = rounds(etcd, kafka, inputs, tmp)
        latency = {f"{client}{mode(delivery)}": progress(
            bench_latency(etcd, kafka, client, tmp, delivery), client, delivery)
            for client in CLIENTS for delivery in (AT_LEAST_ONCE, EXACTLY_ONCE)}
        scale = run_scale(etcd, kafka, tmp)
        fleet = run_fleet(etcd, kafka, tmp)
    report(lines, size, runs, results, latency, scale)
    report_fleet(*fleet)


def main_scale(files: int, client: str) -> None:
    """`bench.py --scale N [CLIENT]`: the scale row alone, with a restart (for profiling)."""
    with services() as (etcd, kafka, tmp):
        result = bench_scale(etcd, kafka, files, client, tmp, restart=True)
    report_scale([result])


def main_journal(entries: int, client: str) -> None:
    """`bench.py --journal N [CLIENT]`: the journal row alone (for profiling)."""
    with services() as (etcd, kafka, tmp):
        journal = tmp / "journal"
        result = bench_journal(etcd, kafka, journal, make_journal(journal, entries, 100), client,
                               tmp, 0)
    print(f"{result.shipper}: {result.rate:,.0f} entries/s, "
          f"{result.cpu_seconds / result.lines * 1e6:.1f} µs CPU an entry, "
          f"{result.rss_bytes >> 20} MiB")


def main_fleet() -> None:
    """`bench.py --fleet`: what a fleet costs etcd, alone."""
    with services() as (etcd, kafka, tmp):
        fleet = run_fleet(etcd, kafka, tmp)
    report_fleet(*fleet)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-loop"]:
        bare_loop(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--scale"]:
        main_scale(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else CLIENTS[0])
    elif sys.argv[1:2] == ["--journal"]:
        main_journal(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else CLIENTS[0])
    elif sys.argv[1:2] == ["--fleet"]:
        main_fleet()
    else:
        main()
