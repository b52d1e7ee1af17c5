"""One thread per journal entry: journalctl as a child, its entries sent, the cursor
moved on acknowledgement.

As Vector, Filebeat and the OpenTelemetry Collector do, the journal is read through
`journalctl --output=json --follow` rather than libsystemd (Filebeat left the binding
after it crashed the process with SIGBUS during journal rotation), resumed with
`--after-cursor`. `--merge` always: `--follow` alone implies the current boot on
systemd 250+. The filters are journalctl's matches, so entries filtered out there are
never read and never re-read: journalctl seeks past them by its indexes. An entry the
entry's own filters drop (include_lines, exclude_lines) still moves the cursor.

The child runs under `setpriv --pdeathsig KILL`, so a kill -9 of the agent takes it
along; on a stop it is killed and reaped. When it exits by itself it is started again
from the cursor last read, after a backoff, and the follower keeps what it has in flight.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import select
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

from logship.checkpoint import CheckpointStore, FileCheckpoint
from logship.config import FilesConfig
from logship.errors import LogshipError
from logship.follower import DRAIN_TIMEOUT, Follower
from logship.ledger import InFlight
from logship.logs import plural, shown
from logship.metrics import Metrics
from logship.processors import any_of
from logship.sink import Headers, Job, Records, Sent, Sink, header_value
from logship.spec import Journal, Target
from logship.supervisor import Backoff
from logship.worker import SAVE_WAIT, SEND_BATCH, Progress

log = logging.getLogger(__name__)

KILL_WAIT = 2.0
STDERR_KEPT = 2000      # characters of journalctl's last words kept for the error line
COMPLAINT_WAIT = 1.0    # seconds journalctl goes on after a complaint: a warning then
PIPE_BYTES = 1 << 20


def journal_identity(name: str) -> tuple[int, int]:
    """A journal entry's (dev, ino) in the checkpoints: dev 0 is no file's device."""
    return 0, int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


def matches(journal: Journal) -> list[str]:
    """journalctl's matches for the entry: a unit's own entries and systemd's about it
    (as journalctl -u), or an identifier's, any of them (a '+' between alternatives)."""
    groups = []
    if journal.units:
        groups.append([f"_SYSTEMD_UNIT={unit}" for unit in journal.units])
        groups.append(["_PID=1", *(f"UNIT={unit}" for unit in journal.units)])
    if journal.identifiers:
        groups.append([f"SYSLOG_IDENTIFIER={name}" for name in journal.identifiers])
    args: list[str] = []
    for group in groups:
        args += (["+"] if args else []) + group
    return args


def command(journalctl: str, journal: Journal, cursor: str | None, follow: bool = True
            ) -> list[str]:
    """From just after `cursor`, or from the first entry: --no-tail undoes the ten last
    lines that --follow would start with."""
    argv = [journalctl, "--output=json", "--merge", "--utc", "--no-pager", "--all"]
    if follow:
        argv += ["--follow", "--no-tail"]
    if journal.directory is not None:
        argv.append(f"--directory={journal.directory}")
    if journal.priority is not None:
        argv.append(f"--priority={journal.priority}")
    if cursor:
        argv.append(f"--after-cursor={cursor}")
    return argv + matches(journal)


def field_bytes(value: Any) -> bytes:
    """A field as journalctl's JSON gives it: a string, an array of byte values (not
    UTF-8, or with control characters), an array of those for a field given more than
    once (the first is taken), or null."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list) and value:
        if all(isinstance(b, int) for b in value):
            return bytes(value)
        return field_bytes(value[0])
    return b""


@dataclass
class Entry:
    """One journal entry as a record: its value, key and headers."""

    value: bytes
    key: bytes | None
    headers: Headers


class EntryFormat:
    """How an entry becomes a record, per the entry's options."""

    def __init__(self, target: Target, host: bytes) -> None:
        options = target.options
        self._host = host
        self._key_by_unit, self._key_by_host = options.key == "unit", options.key == "host"
        self._json = options.format == "json"
        self._fields = dict(options.fields)
        self._tail = tuple((name, header_value(value)) for name, value in options.fields)
        self._include = any_of(options.include_lines)
        self._exclude = any_of(options.exclude_lines)

    def record(self, line: bytes) -> tuple[str, Entry | None]:
        """(cursor, record), the record None when the entry's filters drop it; raises
        ValueError for a line that is not a journal entry."""
        entry = json.loads(line)
        cursor = entry.get("__CURSOR") if isinstance(entry, dict) else None
        if not isinstance(cursor, str):
            raise ValueError("no __CURSOR")
        message = field_bytes(entry.get("MESSAGE"))
        if (self._include is not None and not self._include(message)) \
                or (self._exclude is not None and self._exclude(message)):
            return cursor, None
        unit = field_bytes(entry.get("_SYSTEMD_UNIT") or entry.get("SYSLOG_IDENTIFIER"))
        host = field_bytes(entry.get("_HOSTNAME")) or self._host
        key = (unit or None) if self._key_by_unit else host if self._key_by_host else None
        headers = [("host", host), ("unit", unit), ("priority", field_bytes(entry.get("PRIORITY"))),
                   ("cursor", cursor.encode())]
        if self._json:
            value = json.dumps({**entry, **self._fields}).encode() if self._fields else line
        else:
            value = message
            headers += self._tail
        return cursor, Entry(value, key, headers)


@dataclass
class Batch:
    """Entries read together: their records and the position after the last entry."""

    values: list[bytes]
    ordinals: list[int]       # each record's entry's number, counted from the first start
    records: Records
    end: FileCheckpoint


class Child:
    """A running journalctl: its pipes read without blocking, its exit explained."""

    def __init__(self, argv: list[str]) -> None:
        self.shown = shlex.join(argv)
        self.process = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.stdout = self.process.stdout.fileno()
        self.stderr = self.process.stderr.fileno()
        self.pipe_size = _widen(self.stdout)
        os.set_blocking(self.stdout, False)
        os.set_blocking(self.stderr, False)
        self.watched = [self.stdout, self.stderr]
        self.last_words = ""
        self.complaints: list[str] = []     # not said yet: its exit may say them
        self.complained_at = 0.0

    def readable(self, timeout: float) -> list[int]:
        ready, _, _ = select.select(self.watched, [], [], timeout)
        return ready

    def read_stderr(self) -> None:
        """Keep journalctl's complaints: said by the error line if it exits, else by
        `complaints_due` once it has gone on for a while."""
        try:
            data = os.read(self.stderr, 65536)
        except BlockingIOError:
            return
        if not data and self.stderr in self.watched:     # closed: no more to look for
            self.watched.remove(self.stderr)
        lines = [line for line in data.decode(errors="replace").splitlines() if line.strip()]
        if lines:
            self.last_words = lines[-1][-STDERR_KEPT:]
            self.complaints += lines
            self.complained_at = self.complained_at or time.monotonic()

    def complaints_due(self, now: float) -> list[str]:
        """Complaints journalctl went on after for COMPLAINT_WAIT: warnings, not its end."""
        if not self.complaints or now - self.complained_at < COMPLAINT_WAIT:
            return []
        complaints, self.complaints, self.complained_at = self.complaints, [], 0.0
        return complaints

    def exit_status(self) -> str:
        """At the end of its output: its exit status once it has exited (killed when it
        closed its output and lingers), its last complaint read."""
        try:
            status = f"status {self.process.wait(KILL_WAIT)}"
        except subprocess.TimeoutExpired:
            status = f"no status: its output closed, killed after {KILL_WAIT:.0f}s"
        self.read_stderr()
        return status

    def kill(self) -> None:
        """Killed and reaped: no zombie is left."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            log.error("journalctl (pid %d) did not die within %.0fs", self.process.pid, KILL_WAIT)
        self.process.stdout.close()
        self.process.stderr.close()


class JournalFollower(Follower[None]):
    def __init__(self, target: Target, files: FilesConfig, journalctl: str, sink: Sink,
                 store: CheckpointStore, metrics: Metrics,
                 keys: Callable[[Target], list[str]]) -> None:
        super().__init__(target, files, sink, metrics, keys)
        self.journal: Journal = target.journal
        self._journalctl = journalctl
        self._store = store
        self._format = EntryFormat(target, sink.host)
        self._dev, self._ino = journal_identity(target.path)
        self._child: Child | None = None
        self._restart_at = 0.0
        self._started_at = 0.0
        self._backoff = Backoff(base=1.0, cap=30.0)
        self._pending = b""               # a part of an entry, its rest not read yet
        self._skipping = False            # inside an entry too large, until its end
        self._read = self._acked = self._position(None, 0)
        self._queued: Batch | None = None
        self._queued_at = 0
        self._restarts = metrics.worker_restarts.labels(target.topic)
        self._invalid = metrics.invalid_json.labels(target.topic)

    def _position(self, cursor: str | None, ordinal: int) -> FileCheckpoint:
        return FileCheckpoint(self.target.path, self.target.topic, self._dev, self._ino, 0, "",
                              ordinal, cursor or "")

    def serve(self) -> None:
        try:
            if self._start_up(self._restore) is None:
                return
            self._follow()
            self._drain()
        finally:
            self._stop_child()
            self._ledger.close()
            log.info("worker stopped %s", self.target)

    def _restore(self) -> str:
        """Resume after the saved cursor; says where. On a first start from the end, the
        cursor of the last entry there is saved before anything is read, so that a kill -9
        right after cannot turn into another first start that skips what came meanwhile."""
        target = self.target
        saved = self._store.for_target(target.topic, target.path)
        # Asked before the first start is marked: a start that fails here is no start.
        last = self._last_cursor() if not saved and target.read_from == "end" else None
        first = self._store.first_start(target.topic, target.path)
        if saved:
            self._read = self._acked = saved[0]
            where = f"after cursor {saved[0].cursor}" if saved[0].cursor else "at the beginning"
        elif first and target.read_from == "end":
            self._read = self._acked = self._position(last, 0)
            self._publish_start()
            where = "at the end" if self._read.cursor else "at the beginning (empty journal)"
        else:
            self._publish_start()
            where = "at the beginning"
        log.info("worker started %s: %s", target, where)
        return where

    def _last_cursor(self) -> str | None:
        """The newest matching entry's cursor, from a journalctl that does not follow."""
        argv = [*command(self._journalctl, self.journal, None, follow=False), "--lines=1"]
        missing = self._missing()
        if missing is not None:
            raise LogshipError(f"{self.target}: {missing}")
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LogshipError(f"{self.target}: cannot run {shlex.join(argv)}: {exc}") from None
        if done.returncode != 0:
            raise LogshipError(f"{self.target}: {shlex.join(argv)} exited with status "
                               f"{done.returncode}: {_last_line(done.stderr)}")
        lines = done.stdout.splitlines()
        try:
            return self._format.record(lines[-1])[0] if lines else None
        except ValueError:
            return None

    def _publish_start(self) -> None:
        self._store.update(self._acked)
        self._sink.note_positions([self._acked])
        self._store.sync(SAVE_WAIT)

    def _follow(self) -> None:
        while not self.stopping.is_set():
            if self._epoch != self._sink.epoch:
                self._resume_committed()
                continue
            self._collect()
            self._stalled()
            full = self._ledger.full()
            if self._queued is not None and not full:
                self._send_batch()
            elif self._queued is not None or full or not self._reserve():
                if self._ledger.held_by_commit():
                    self._sink.hurry()
                self._wait(self._files.poll_interval)
            elif self._child is None:
                self._start_child()
            else:
                self._read_child()

    def _start_child(self) -> None:
        """journalctl from the last entry read, after its backoff when it exited."""
        self._ledger.unreserve()
        delay = self._restart_at - time.monotonic()
        if delay > 0:
            self.stopping.wait(min(delay, self._files.poll_interval))
            return
        missing = self._missing()
        if missing is not None:
            self._child_failed(missing, 0.0)
            return
        argv = command(self._journalctl, self.journal, self._read.cursor or None)
        self._child = Child(argv)
        self._started_at = time.monotonic()
        log.debug("%s: %s", self.target, self._child.shown)

    def _missing(self) -> str | None:
        if shutil.which(self._journalctl) is None:
            return (f"{self._journalctl} not found (journal.journalctl); install systemd or "
                    f"name journalctl's path")
        return None

    def _child_failed(self, why: str, ran_for: float) -> None:
        delay = self._backoff.next_delay(ran_for)
        self._restart_at = time.monotonic() + delay
        self._restarts.inc()
        log.error("%s: %s; starting it again in %.1fs", self.target, why, delay)

    def _read_child(self) -> None:
        """Read what journalctl wrote; a read reserved the budget, given back if unused.
        While nothing comes, acknowledgements are still collected every 50 ms."""
        child = self._child
        try:
            ready = child.readable(0.05 if self._ledger else self._files.poll_interval)
            if child.stderr in ready:
                child.read_stderr()
            for line in child.complaints_due(time.monotonic()):
                log.warning("%s: journalctl: %s", self.target, shown(line))
            if child.stdout in ready:
                self._read_stdout(child)
        finally:
            self._ledger.unreserve()

    def _read_stdout(self, child: Child) -> None:
        try:
            data = os.read(child.stdout, min(child.pipe_size, self._files.read_chunk_bytes))
        except BlockingIOError:
            return
        if not data:
            self._child_exited(child)
            return
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if self._skipping and lines:
            lines[0], self._skipping = b"", False
        if len(self._pending) > self._files.max_line_bytes:
            self._skip_entry()
        if lines:
            self._enqueue(self._batch(lines))

    def _skip_entry(self) -> None:
        if not self._skipping:
            self._too_large.inc()
            log.error("%s: a journal entry longer than files.max_line_bytes (%d) skipped",
                      self.target, self._files.max_line_bytes)
        self._pending, self._skipping = b"", True

    def _child_exited(self, child: Child) -> None:
        status = child.exit_status()
        self._stop_child()
        self._child_failed(f"journalctl exited with {status}"
                           f"{': ' + shown(child.last_words) if child.last_words else ''} "
                           f"(command: {child.shown})", time.monotonic() - self._started_at)

    def _batch(self, lines: list[bytes]) -> Batch:
        values, ordinals, keys, headers, cursors = [], [], [], [], []
        ordinal, cursor = self._read.offset, self._read.cursor
        invalid = 0
        for line in lines:
            if not line:
                continue
            try:
                cursor, entry = self._format.record(line)
            except ValueError:
                invalid += 1
                continue
            if entry is not None:
                values.append(entry.value)
                ordinals.append(ordinal)
                keys.append(entry.key)
                headers.append(entry.headers)
                cursors.append(cursor)
            ordinal += 1
        self._read_lines.inc(ordinal - self._read.offset)
        self._filtered.inc(ordinal - self._read.offset - len(values))
        if invalid:
            self._invalid.inc(invalid)
            log.error("%s: %s from journalctl not a journal entry in JSON; skipped",
                      self.target, plural(invalid, "line", "lines"))
        self._read = self._position(cursor, ordinal)
        return Batch(values, ordinals, Records(keys, headers, cursors), self._read)

    def _enqueue(self, batch: Batch) -> None:
        """Queue entries to send; entries all filtered out still move the cursor, as an
        empty batch in order behind those in flight."""
        if batch.values:
            self._queued, self._queued_at = batch, 0
            self._ledger.queue(batch.values)
        elif batch.end != self._acked:
            self._track(InFlight(None, batch.end, [], [], Sent(0), 0))

    def _send_batch(self) -> None:
        batch, start = self._queued, self._queued_at
        stop = min(start + SEND_BATCH, len(batch.values))
        records = batch.records
        part = Records(records.keys[start:stop], records.headers[start:stop],
                       records.cursors[start:stop])
        end = batch.end if stop == len(batch.values) else \
            self._position(records.cursors[stop - 1], batch.ordinals[stop - 1] + 1)
        job = Job(self.target.topic, self._envelope, batch.values[start:stop],
                  batch.ordinals[start:stop], self._wake.set, end, self._epoch, part)
        sent = self._sink.send(job)
        if sent.refused:
            raise self._refused(sent.refused)
        if sent.count:
            taken = job if sent.count == len(job.lines) else job.part(range(sent.count))
            self._track(InFlight(None, job.position_after(sent.count), taken.lines,
                                 taken.offsets, sent, self._ledger.cost(taken.lines),
                                 taken.records))
        self._queued_at = start + sent.count
        if self._queued_at == len(batch.values):
            self._queued = None
        self._kafka_state(sent.unavailable)

    def _acknowledged(self, batches: list[InFlight[None]]) -> None:
        self._acked = batches[-1].end
        self._store.update(self._acked)

    def _resume_point(self, batch: InFlight[None]) -> str:
        return f"cursor {self._acked.cursor or '(the beginning)'}"

    def _resume_committed(self) -> None:
        """Exactly-once: what was sent since the last commit is void (an aborted
        transaction); journalctl starts again after the committed cursor."""
        self._queued, self._queued_at = None, 0
        self._stop_child()
        if not self._void_sent():
            return
        saved = self._store.for_target(self.target.topic, self.target.path)
        self._read = self._acked = saved[0] if saved else self._acked
        log.debug("%s: reading again after the committed cursor", self.target)

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
        self._pending, self._skipping = b"", False

    def progress(self) -> Progress:
        """Entries, not bytes: acknowledged and read since the entry's first start."""
        if self._child is None:
            state = "waiting"
        else:
            state = "shipping" if self._sink.health.up else "held"
        return Progress(state, self._acked.offset, self._read.offset, 0, self.records_sent)

    def _drain(self) -> None:
        """On a requested stop: what was read and queued goes out, then its
        acknowledgements are awaited a little."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self._queued is not None and time.monotonic() < deadline \
                and self._epoch == self._sink.epoch:
            self._send_batch()
        self._await_acknowledgements(deadline)


def _widen(fd: int) -> int:
    """A pipe of PIPE_BYTES where the kernel allows it (fs.pipe-max-size): journalctl then
    writes on while the follower sends, and each read takes what a large one holds. A
    read of a larger size than the pipe holds would allocate it all each time."""
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return shown(lines[-1]) if lines else "(nothing on stderr)"
