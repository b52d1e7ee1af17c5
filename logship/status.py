"""The agent's status: the full report on /api/status, and its bounded summary in etcd.

The summary says what an operator asks of a fleet: is the agent alive, does Kafka take
its lines, how many files in which state, how far behind, and the few worst files. It
lives under `status.prefix` + name, attached to a lease. The lease is presence: kept
alive every ttl/3, which writes no revision; SIGTERM revokes it (the key goes at once),
kill -9 lets it expire after `status.ttl`. The document itself is rewritten only when
something changed: within `status.interval` for what an operator acts on (Kafka's state,
a file's state or error, the number of files, the version, ...), at most every
`status.progress_interval` for its counters. Thousands of agents share one etcd, and each
write stays in etcd's history until it is compacted (Kubernetes' node leases, KEP-589).

The writer has its own etcd session and thread, so a slow or absent etcd never holds up
shipping; after an outage it grants a new lease and writes again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Hashable, Iterable

from logship import __version__
from logship.config import StatusConfig
from logship.errors import EtcdUnavailable, LogshipError
from logship.logs import plural
from logship.etcd_source import (ETCD_ERRORS, EtcdSession, EtcdSource, describe,
                                  reconnect_backoff)
from logship.spec import Target
from logship.supervisor import ChildState, Service

log = logging.getLogger(__name__)

Document = dict[str, Any]
FileId = tuple[str, str]

LISTED_FILES = 10
"""Files a summary names: those with an error first, then the furthest behind."""
MAX_DOCUMENT_BYTES = 16 * 1024
ERROR_SHOWN = 300       # characters of a file's last error in the summary

PROGRESS_FIELDS = ("lag_bytes", "records_sent", "records_per_second")
FILE_PROGRESS_FIELDS = ("offset", "size", "lag_bytes", "records_sent", "records_per_second")
NOT_SIGNIFICANT = {"updated", "rate_window_seconds", "files", *PROGRESS_FIELDS}


def rfc3339(when: float) -> str:
    """To the millisecond: `logship top` shows a document's age."""
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Identity:
    """What does not change while the agent runs."""

    name: str
    host: str
    started: float
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class Condition:
    """What the agent as a whole is in: Kafka's state (None: up, else why not), the
    brokers it cannot reach while others serve, its delivery mode, and its health (None:
    healthy, else what /healthz says)."""

    kafka_down: str | None
    brokers_unreachable: tuple[str, ...]
    delivery: str
    health: str | None


def document(identity: Identity, config: StatusConfig, keys: Iterable[str],
             condition: Condition, workers: list[ChildState[Target]],
             owners: dict[FileId, list[str]]) -> Document:
    """The full report, every file in it (/api/status); `owners` names the keys (or
    "config") declaring each target."""
    files = [_file(child, owners.get(child.spec.entry_id, [])) for child in workers]
    return {
        "name": identity.name,
        "host": identity.host,
        "pid": identity.pid,
        "version": __version__,
        "started": rfc3339(identity.started),
        "updated": rfc3339(time.time()),
        "keys": list(keys),
        "kafka": "ok" if condition.kafka_down is None else "unavailable",
        **({} if condition.kafka_down is None else {"kafka_cause": condition.kafka_down}),
        **({"kafka_brokers_unreachable": list(condition.brokers_unreachable)}
           if condition.brokers_unreachable else {}),
        "delivery": condition.delivery,
        "health": condition.health or "ok",
        "interval": config.interval,
        "progress_interval": config.progress_interval,
        "files_total": len(files),
        "files_by_state": dict(sorted(Counter(f["state"] for f in files).items())),
        "lag_bytes": sum(f["lag_bytes"] for f in files),
        "records_sent": sum(f["records_sent"] for f in files),
        "files": files,
    }


def _file(child: ChildState[Target], owners: list[str]) -> dict[str, Any]:
    target = child.spec
    entry: dict[str, Any] = {"path": target.path, "topic": target.topic, "keys": owners}
    if target.glob is not None:
        entry["glob"] = target.glob
    if child.service is None:
        entry |= {"state": "error", "offset": 0, "size": 0, "lag_bytes": 0, "records_sent": 0}
    else:
        progress = child.service.progress()
        entry |= {"state": progress.state, "offset": progress.offset, "size": progress.size,
                  "lag_bytes": progress.lag_bytes, "records_sent": progress.records_sent}
    entry["last_error"] = child.last_error
    return entry


def lag_by_topic(workers: list[ChildState[Target]]) -> dict[str, int]:
    """For `logship_lag_bytes`: every file, also those a summary leaves out."""
    lag: dict[str, int] = {}
    for child in workers:
        if child.service is not None:
            topic = child.spec.topic
            lag[topic] = lag.get(topic, 0) + child.service.progress().lag_bytes
    return lag


def encode(doc: Document) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _worst_first(entry: dict[str, Any]) -> tuple:
    return (entry["last_error"] is None, -entry["lag_bytes"], entry["path"], entry["topic"])


def _listed(entry: dict[str, Any], rate: float) -> dict[str, Any]:
    error = entry["last_error"]
    return {**entry, "records_per_second": rate,
            "last_error": error if error is None or len(error) <= ERROR_SHOWN
            else error[:ERROR_SHOWN - 1] + "…"}


def _significant(doc: Document) -> tuple:
    """What an operator acts on: written within status.interval when it changes."""
    errors = [(f["path"], f["topic"], f["state"], f["last_error"]) for f in doc["files"]
              if f["last_error"] is not None]
    return {name: value for name, value in doc.items() if name not in NOT_SIGNIFICANT}, errors


def _progress(doc: Document) -> tuple:
    """The counters: written at most every status.progress_interval."""
    files = [tuple(f[name] for name in ("path", "topic", *FILE_PROGRESS_FIELDS))
             for f in doc["files"]]
    return tuple(doc[name] for name in PROGRESS_FIELDS), files


class Schedule:
    """When the summary in etcd is rewritten, and what it says; pure (no etcd, no
    threads): the writer asks `look` every status.interval, `next` for the summary due
    now, and reports `written`.

    Rates are the growth of each file's records_sent since the previous write, over the
    time between the two writes: the agent's own count. A summary whose counters moved
    promises a successor within progress_interval, if only to say that they stopped
    (records_per_second 0); one at rest promises nothing, so an idle agent writes
    nothing at all while its lease is kept alive."""

    def __init__(self, config: StatusConfig) -> None:
        self._config = config
        self._written: Document | None = None
        self._written_at = 0.0
        self._counted_at: float | None = None
        self._counts: dict[FileId, int] = {}
        self._seen: Hashable | None = None
        self._pending = False       # counters moved since the last write

    def forget(self) -> None:
        """A new lease: its key has no document until the next write. Counts are kept,
        so the rates of the next document span the outage."""
        self._written = None

    @property
    def written(self) -> Document | None:
        return self._written

    def look(self, fingerprint: Hashable | None, now: float) -> bool:
        """Whether the report must be rebuilt: something may have changed (a fingerprint
        that moved, or None: unknown), or counters that moved are due."""
        if self._written is None or fingerprint is None or fingerprint != self._seen:
            return True
        return self._progress_due(now) and (self._pending
                                            or self._written["records_per_second"] > 0)

    def next(self, report: Document, fingerprint: Hashable | None, now: float) -> Document | None:
        """The summary of `report` to write now, or None when nothing is due."""
        self._seen = fingerprint
        summary = self._summary(report, now)
        if self._written is None or _significant(summary) != _significant(self._written):
            return summary
        self._pending = _progress(summary) != _progress(self._written)
        return summary if self._pending and self._progress_due(now) else None

    def wrote(self, summary: Document, report: Document, now: float) -> None:
        self._written, self._written_at, self._pending = summary, now, False
        self._counted_at = now
        self._counts = {(f["path"], f["topic"]): f["records_sent"] for f in report["files"]}

    def _progress_due(self, now: float) -> bool:
        return now - self._written_at >= self._config.progress_interval

    def _summary(self, report: Document, now: float) -> Document:
        window = None if self._counted_at is None else now - self._counted_at
        rates = {(f["path"], f["topic"]): self._rate(f, window) for f in report["files"]}
        files = sorted(report["files"], key=_worst_first)[:LISTED_FILES]
        summary = {**report, "records_per_second": round(sum(rates.values()), 1),
                   "rate_window_seconds": None if window is None else round(window, 1),
                   "files": [_listed(f, rates[f["path"], f["topic"]]) for f in files]}
        while summary["files"] and len(encode(summary)) > MAX_DOCUMENT_BYTES:
            summary["files"].pop()
        return summary

    def _rate(self, entry: dict[str, Any], window: float | None) -> float:
        """A worker that restarted counts from 0 again: its count since then."""
        if not window:
            return 0.0
        before = self._counts.get((entry["path"], entry["topic"]), 0)
        count = entry["records_sent"]
        return round((count - before if count >= before else count) / window, 1)


class StatusWriter(Service):
    """Keeps the lease alive every ttl/3 and the summary current, as `Schedule` says;
    calls `written` after each write and `current` whenever the document in etcd is
    known to say what the agent would write now (the alert on staleness watches it).
    The report is rebuilt only when `fingerprint` (cheap) moved or is None.

    The key belongs to the lease that created it: a write succeeds only while the key is
    absent or still as this writer left it. A second live agent with the same name is
    told so once and publishes nothing, so it never overwrites the first one's document,
    nor deletes it when its own lease goes; it takes the key over once the first one has
    gone. A document left by this host's previous process (kill -9: its lease has not
    expired yet) is taken over at once."""

    def __init__(self, source: EtcdSource, key: str, config: StatusConfig,
                 build: Callable[[], Document], fingerprint: Callable[[], Hashable | None],
                 written: Callable[[], None], current: Callable[[], None]) -> None:
        super().__init__(name="status")
        self.key = key
        self._source = source
        self._config = config
        self._build = build
        self._fingerprint = fingerprint
        self._written = written
        self._current = current
        self._schedule = Schedule(config)
        self._failing = False
        self._mod_revision = 0          # of our last write; 0: the key is not ours
        self._held_by: tuple[Any, Any] | None = None

    def serve(self) -> None:
        self.retry(self._publish, (LogshipError, *ETCD_ERRORS), self._failed, reconnect_backoff())

    def _failed(self, exc: BaseException, delay: float) -> None:
        """Said once per outage: shipping does not depend on it."""
        if not self._failing:
            log.warning("status %s: etcd: %s; shipping goes on; retrying in %.1fs",
                        self.key, describe(exc), delay)
        self._failing = True

    def _publish(self) -> None:
        """One session and one lease, revoked when the agent stops."""
        session = self._source.connect()
        try:
            lease = session.lease(self._config.ttl)
            self._schedule.forget()
            self._write_until_stopped(session, lease)
            session.revoke(lease)
        except ETCD_ERRORS as exc:
            raise EtcdUnavailable(session.explain(exc)) from None
        finally:
            session.close()

    def _write_until_stopped(self, session: EtcdSession, lease: Any) -> None:
        keepalive_at = time.monotonic() + self._config.keepalive
        while not self.stopping.is_set():
            now = time.monotonic()
            current = self._update(session, lease, now)
            if now >= keepalive_at:
                session.refresh(lease)
                keepalive_at = now + self._config.keepalive
            if current:
                self._current()
            self.stopping.wait(max(0.0, min(self._config.interval,
                                            keepalive_at - time.monotonic())))

    def _update(self, session: EtcdSession, lease: Any, now: float) -> bool:
        """Write the summary if it is due; False when it was due and another agent
        holds the key."""
        fingerprint = self._fingerprint()
        if not self._schedule.look(fingerprint, now):
            return True
        report = self._build()
        summary = self._schedule.next(report, fingerprint, now)
        if summary is None:
            return True
        first = self._schedule.written is None
        summary["updated"] = rfc3339(time.time())
        if not self._claim(session, summary, lease):
            return False
        self._schedule.wrote(summary, report, now)
        if first:
            log.info("status %s written%s", self.key, " again" if self._failing else "")
            self._failing = False
        self._written()
        return True

    def _claim(self, session: EtcdSession, doc: Document, lease: Any) -> bool:
        """Write the document unless another live agent holds the key."""
        value = encode(doc)
        for _ in range(2):
            claim = session.put_if_unmoved(self.key, value, lease, self._mod_revision)
            if claim.written:
                self._mod_revision = claim.mod_revision
                self._say_held(None)
                return True
            other = _parse(claim.value)
            if claim.value is not None and claim.lease != lease.id \
                    and not _ours_to_take(other, doc):
                self._mod_revision = 0
                self._say_held(other)
                return False
            self._mod_revision = claim.mod_revision     # absent, ours, or a dead process's
        return False

    def _say_held(self, other: Document | None) -> None:
        """Once when another agent is found holding the key, once when it let go."""
        holder = None if other is None else (other.get("host"), other.get("pid"))
        if holder == self._held_by:
            return
        if holder is not None:
            log.error("status %s: another live agent has the same agent.name (host %s, pid "
                      "%s, started %s); this agent ships as configured but publishes no "
                      "status until that one stops: give each agent an agent.name of its "
                      "own", self.key, holder[0], holder[1], other.get("started"))
        elif self._held_by is not None:
            log.info("status %s: the other agent of this name has gone; status written",
                     self.key)
        self._held_by = holder


def _parse(value: bytes | None) -> Document:
    try:
        doc = json.loads(value) if value is not None else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _ours_to_take(other: Document, ours: Document) -> bool:
    """A document of this host's agent that is this process (on a lease of a session
    before an etcd outage) or has died (kill -9, before its lease expired)."""
    pid = other.get("pid")
    if other.get("host") != ours["host"] or not isinstance(pid, int):
        return False
    if pid == ours["pid"]:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def parse_document(value: bytes) -> Document | None:
    """A status document as read from etcd; None for a value that is not one (it is not
    ours to judge), so one bad key does not hide the fleet."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), list) else None


def lag_of(doc: Document) -> int:
    """The agent's total lag; a document of an older agent lists every file instead."""
    lag = doc.get("lag_bytes")
    return lag if isinstance(lag, int) else sum(_int(f.get("lag_bytes")) for f in doc["files"]
                                                 if isinstance(f, dict))


def kafka_state(doc: Document) -> str:
    """`ok`, `unavailable`, or `ok` with the brokers it cannot reach while others serve."""
    unreachable = doc.get("kafka_brokers_unreachable")
    state = str(doc.get("kafka", "?"))
    if state == "ok" and isinstance(unreachable, list) and unreachable:
        return f"ok, {plural(len(unreachable), 'broker', 'brokers')} unreachable"
    return state


def files_total(doc: Document) -> int:
    total = doc.get("files_total")
    return total if isinstance(total, int) else len(doc["files"])


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


Rows = list[tuple[str, ...]]


@dataclass
class Table:
    """`logship status`: one row per agent, then each agent's listed files. Built one
    document at a time, so that a fleet's documents need not all be held at once."""

    now: float
    agents: Rows = field(default_factory=lambda: [
        ("NAME", "HOST", "UPDATED", "FILES", "LAG", "KAFKA", "DELIVERY")])
    sections: list[str] = field(default_factory=list)

    def add(self, doc: Document) -> None:
        name = str(doc.get("name", "?"))
        self.agents.append((name, str(doc.get("host", "?")), _ago(doc.get("updated"), self.now),
                            str(files_total(doc)), human_bytes(lag_of(doc)), kafka_state(doc),
                            str(doc.get("delivery", "?"))))
        files: Rows = [("PATH", "TOPIC", "STATE", "LAG", "LAST ERROR")]
        files += [(str(f.get("path", "?")), str(f.get("topic", "?")), str(f.get("state", "?")),
                   human_bytes(_int(f.get("lag_bytes"))), str(f.get("last_error") or ""))
                  for f in doc["files"] if isinstance(f, dict)]
        omitted = files_total(doc) - (len(files) - 1)
        self.sections.append(f"\n{name}:\n" + _table(files, indent="  ")
                             + (f"\n  ... and {omitted} more, each less behind (all of them: "
                                f"/api/status on the agent)" if omitted > 0 else ""))

    def __len__(self) -> int:
        return len(self.sections)

    def __str__(self) -> str:
        return "\n".join([_table(self.agents), *self.sections])


def _table(rows: Rows, indent: str = "") -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def timestamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _ago(updated: Any, now: float) -> str:
    when = timestamp(updated)
    return "?" if when is None else f"{max(0, round(now - when))}s ago"


def human_bytes(count: float) -> str:
    unit = 0
    while count >= 1024 and unit < len(UNITS) - 1:
        count /= 1024
        unit += 1
    return f"{count:.0f} B" if unit == 0 else f"{count:.1f} {UNITS[unit]}"


UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
