"""The agent's status document, and the thread that keeps it in etcd on a lease.

The document says what an operator asks of a fleet: which agent ships which file, how
far behind it is, whether Kafka takes lines. It lives under `status.prefix` + name,
attached to a lease: SIGTERM revokes the lease (the key goes at once), kill -9 lets it
expire after `status.ttl`. The writer has its own etcd session and thread, so a slow
or absent etcd never holds up shipping; after an outage it grants a new lease and
writes again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Hashable, Iterable

from logship import __version__
from logship.config import StatusConfig
from logship.errors import EtcdUnavailable, LogshipError
from logship.etcd_source import (ETCD_ERRORS, EtcdSession, EtcdSource, describe,
                                  reconnect_backoff)
from logship.spec import Target
from logship.supervisor import ChildState, Service

log = logging.getLogger(__name__)

Document = dict[str, Any]
MAX_FILES = 2000


def rfc3339(when: float) -> str:
    """To the millisecond: `logship top` divides by the time between two documents."""
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Identity:
    """What does not change while the agent runs."""

    name: str
    host: str
    started: float
    pid: int = field(default_factory=os.getpid)


def document(identity: Identity, keys: Iterable[str], kafka_down: str | None,
             workers: list[ChildState[Target]], owners: dict[tuple[str, str], list[str]],
             delivery: str) -> Document:
    """The status document; `owners` names the keys (or "config") declaring each target,
    `kafka_down` why Kafka is unavailable (None: it is not)."""
    return {
        "name": identity.name,
        "host": identity.host,
        "pid": identity.pid,
        "version": __version__,
        "started": rfc3339(identity.started),
        "updated": rfc3339(time.time()),
        "keys": list(keys),
        "kafka": "ok" if kafka_down is None else "unavailable",
        **({} if kafka_down is None else {"kafka_cause": kafka_down}),
        "delivery": delivery,
        **capped_files([_file(child, owners.get(child.spec.entry_id, [])) for child in workers]),
    }


def capped_files(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Every file, up to MAX_FILES: an etcd value is capped (1.5 MiB by default) and an
    entry takes about 250 bytes. Beyond that the ones furthest behind are kept."""
    total = len(entries)
    if total > MAX_FILES:
        entries = sorted(entries, key=lambda entry: entry["lag_bytes"], reverse=True)[:MAX_FILES]
    return {"files_total": total, "files": entries}


class Encoder:
    """A document's JSON, its files encoded once per document built: an idle agent
    rewrites an unchanged document every status.ttl for its `updated` stamp alone, and
    2,000 files take 10 ms to encode."""

    def __init__(self) -> None:
        self._files: tuple[list[dict[str, Any]] | None, str] = (None, "")

    def __call__(self, doc: Document) -> bytes:
        files = doc["files"]
        if self._files[0] is not files:
            self._files = (files, json.dumps(files))
        head = json.dumps({name: value for name, value in doc.items() if name != "files"})
        return f'{head[:-1]}, "files": {self._files[1]}}}'.encode()


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
    """For `logship_lag_bytes`: every file, also those a capped document leaves out."""
    lag: dict[str, int] = {}
    for child in workers:
        if child.service is not None:
            topic = child.spec.topic
            lag[topic] = lag.get(topic, 0) + child.service.progress().lag_bytes
    return lag


class StatusWriter(Service):
    """Writes the document when it changed (at most every `interval`), and at least
    once per ttl, calling `written` after each write (an alert watches it); keeps the
    lease alive every `interval`. The document is rebuilt only
    when `fingerprint` (cheap) changed or is None.

    The key belongs to the lease that created it: a write succeeds only while the key is
    absent or still as this writer left it. A second live agent with the same name is
    told so once and publishes nothing, so it never overwrites the first one's document,
    nor deletes it when its own lease goes; it takes the key over once the first one has
    gone. A document left by this host's previous process (kill -9: its lease has not
    expired yet) is taken over at once."""

    def __init__(self, source: EtcdSource, key: str, config: StatusConfig,
                 build: Callable[[], Document], fingerprint: Callable[[], Hashable | None],
                 written: Callable[[], None]) -> None:
        super().__init__(name="status")
        self.key = key
        self._source = source
        self._config = config
        self._build = build
        self._fingerprint = fingerprint
        self._written = written
        self._failing = False
        self._mod_revision = 0          # of our last write; 0: the key is not ours
        self._held_by: tuple[Any, Any] | None = None
        self._encode = Encoder()

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
            self._write_until_stopped(session, lease)
            session.revoke(lease)
        except ETCD_ERRORS as exc:
            raise EtcdUnavailable(session.explain(exc)) from None
        finally:
            session.close()

    def _write_until_stopped(self, session: EtcdSession, lease: Any) -> None:
        written: Document | None = None
        written_at = 0.0
        seen: Hashable | None = None
        while not self.stopping.is_set():
            fingerprint = self._fingerprint()
            now = time.monotonic()
            due = now - written_at >= self._config.ttl - self._config.interval
            doc = self._build() if written is None or fingerprint is None \
                or fingerprint != seen else written
            if doc is not written and _changed(written, doc) or due:
                doc["updated"] = rfc3339(time.time())
                if self._claim(session, doc, lease):
                    if written is None:
                        log.info("status %s written%s", self.key,
                                 " again" if self._failing else "")
                        self._failing = False
                    written, written_at = doc, now
                    self._written()
            seen = fingerprint
            session.refresh(lease)
            self.stopping.wait(self._config.interval)

    def _claim(self, session: EtcdSession, doc: Document, lease: Any) -> bool:
        """Write the document unless another live agent holds the key."""
        value = self._encode(doc)
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


def _changed(before: Document | None, after: Document) -> bool:
    """Ignoring the time it was made."""
    return before is None or {**before, "updated": None} != {**after, "updated": None}


def parse_documents(values: Iterable[bytes]) -> list[Document]:
    """Status documents as read from etcd; a value that is not one is left out (it is
    not ours to judge), so one bad key does not hide the fleet."""
    documents = []
    for value in values:
        try:
            doc = json.loads(value)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("files"), list):
            documents.append(doc)
    return documents


def render(documents: list[Document], now: float) -> str:
    """`logship status`: one row per agent, then each agent's files."""
    rows = [("NAME", "HOST", "UPDATED", "FILES", "LAG", "KAFKA", "DELIVERY")]
    rows += [(d.get("name", "?"), d.get("host", "?"), _ago(d.get("updated"), now),
              str(d.get("files_total", len(d["files"]))),
              human_bytes(sum(f.get("lag_bytes", 0) for f in d["files"])), d.get("kafka", "?"),
              d.get("delivery", "?"))
             for d in documents]
    parts = [_table(rows)]
    for d in documents:
        files = [("PATH", "TOPIC", "STATE", "LAG", "LAST ERROR")]
        files += [(f.get("path", "?"), f.get("topic", "?"), f.get("state", "?"),
                   human_bytes(f.get("lag_bytes", 0)), f.get("last_error") or "")
                  for f in d["files"]]
        omitted = d.get("files_total", len(d["files"])) - len(d["files"])
        parts.append(f"\n{d.get('name', '?')}:\n" + _table(files, indent="  ")
                     + (f"\n  ... and {omitted} more, each less behind" if omitted > 0 else ""))
    return "\n".join(parts)


def _table(rows: list[tuple[str, ...]], indent: str = "") -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def _ago(updated: Any, now: float) -> str:
    try:
        seconds = now - datetime.fromisoformat(str(updated)).timestamp()
    except ValueError:
        return "?"
    return f"{max(0, round(seconds))}s ago"


def human_bytes(count: float) -> str:
    unit = 0
    while count >= 1024 and unit < len(UNITS) - 1:
        count /= 1024
        unit += 1
    return f"{count:.0f} B" if unit == 0 else f"{count:.1f} {UNITS[unit]}"


UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
