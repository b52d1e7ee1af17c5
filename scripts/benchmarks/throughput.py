"""Throughput: LINES lines of SIZE bytes pre-written to one file (and BUSY_FILES busy
files at once, and as many journal entries), shipped by every shipper into a topic of
its own until every record is acknowledged; ROUNDS rounds, one after the other over all
shippers, each row's round with the least CPU kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import CLIENTS, EXACTLY_ONCE, Result, progress
from benchmarks.journal import bench_journal
from benchmarks.shippers import (BUSY_FILES, PROCESSED, bench_bare_loop, bench_busy_logship,
                                 bench_kcat, bench_logship, bench_rsyslog)
from harness import Etcd, Kafka

ROUNDS = 3
"""The same row took 28 to 29 µs of CPU a line in some runs and 34 to 41 in others, four
runs of nine (100 busy files on kafka-python, one run after the other, 2026-12-03): with
two rounds both were slow about one time in five, and a ratio's target was missed by the
machine, not by logship."""


@dataclass(frozen=True)
class Inputs:
    """What every round ships: one file, the busy files, a journal."""

    path: Path
    lines: int
    busy: Path
    busy_lines: int
    journal: Path
    journal_entries: int


def throughput(etcd: Etcd, kafka: Kafka, inputs: Inputs, tmp: Path, run: int) -> list[Result]:
    """One round: every shipper once, always in the same order."""
    path, lines, busy, busy_lines = inputs.path, inputs.lines, inputs.busy, inputs.busy_lines
    results = [progress(bench_bare_loop(kafka, path, run)),
               progress(bench_kcat(kafka, path, lines, run)),
               progress(bench_rsyslog(kafka, path, lines, tmp, run)),
               progress(bench_rsyslog(kafka, busy / "*.log", busy_lines, tmp, run,
                                      f"rsyslog imfile wildcard, {BUSY_FILES} busy files"))]
    for client in CLIENTS:
        results += [progress(bench_logship(etcd, kafka, path, lines, client, tmp, run, options))
                    for options in (None, PROCESSED)]
        results.append(progress(bench_busy_logship(etcd, kafka, busy, busy_lines, client, tmp,
                                                   run)))
        results.append(progress(bench_logship(etcd, kafka, path, lines, client, tmp, run,
                                              delivery=EXACTLY_ONCE)))
        results.append(progress(bench_busy_logship(etcd, kafka, busy, busy_lines, client, tmp,
                                                   run, EXACTLY_ONCE)))
        results.append(progress(bench_journal(etcd, kafka, inputs.journal,
                                              inputs.journal_entries, client, tmp, run)))
    return results


def rounds(etcd: Etcd, kafka: Kafka, inputs: Inputs, tmp: Path
           ) -> tuple[list[list[Result]], list[Result]]:
    """Every round, and each row's round with the least CPU."""
    runs = [throughput(etcd, kafka, inputs, tmp, run) for run in range(ROUNDS)]
    return runs, [min(same, key=lambda result: result.cpu_seconds) for same in zip(*runs)]
