"""`logship top`: a live terminal view of the fleet, from the status documents in etcd.

It reads the documents under `status.prefix` once, in pages, then follows a watch on the
prefix: each change of a document arrives as it is written, and etcd is read again only
when the watch is lost (etcd restarted, the revision compacted). Only the rows it shows
are kept, never the documents. Lines/s is the agent's own count: the growth of its
records_sent between its last two documents over the time between them, which the agent
writes into the document; AGE says how old that document is. An agent rewrites its
document at least every `status.progress_interval` while its counters move, so a document
that says lines are moving and is older than that (and its lease still alive) is
`stale`; one whose lease expired is gone. Reading etcd happens on a thread of its own, so
a slow or absent etcd never freezes the keys; the screen then says so on one line and
keeps the rows it had.

Drawn with rich; when stdout is not a terminal, one frame is printed without escape
codes and top exits, as `logship status` does.
"""

from __future__ import annotations

import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from typing import Any, Iterable, Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from logship import logs
from logship.logs import plural
from logship.config import Config
from logship.errors import EtcdUnavailable, LogshipError
from logship.etcd_source import ETCD_ERRORS, WAKE, EtcdSession, EtcdSource, KeyChange
from logship.status import (Document, files_total, human_bytes, lag_of, parse_document,
                            timestamp)

MIN_WIDTH = 80
MIN_HEIGHT = 10
KEY_POLL = 0.1          # how often keys and a resized terminal are looked at
FRAME_ROWS = 500        # rows per table when one frame is printed whole


class Sort(Enum):
    """What `s` cycles through; worst first in each."""

    LAG = "lag"
    RATE = "lines/s"
    NAME = "name"

    def next(self) -> "Sort":
        members = list(Sort)
        return members[(members.index(self) + 1) % len(members)]


@dataclass
class FileRow:
    path: str
    topic: str
    state: str
    rate: float | None
    lag: int
    last_error: str


@dataclass
class AgentRow:
    """One agent as top shows it, made from its document, which is then let go."""

    name: str
    host: str
    version: str
    state: str
    files_total: int
    lag: int
    updated: float | None
    rate: float | None          # lines/s between its last two documents (None: unknown)
    due_within: float | None    # a document whose lines move is rewritten within this
    files: list[FileRow] = field(default_factory=list)

    def stale(self, now: float, stale_after: float) -> bool:
        """Its lease alive (the key is there) but its document overdue: lines were moving
        and no newer document came. A document of an agent at rest may be of any age.
        A document without the promise (an older agent) is stale past `stale_after`."""
        if self.updated is None:
            return True
        age = now - self.updated
        if self.due_within is None:
            return age > stale_after
        return bool(self.rate) and age > self.due_within


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def agent_row(doc: Document) -> AgentRow:
    progress, interval = _number(doc.get("progress_interval")), _number(doc.get("interval"))
    return AgentRow(name=str(doc.get("name", "?")), host=str(doc.get("host", "?")),
                    version=str(doc.get("version", "?")), state=_state(doc),
                    files_total=files_total(doc), lag=lag_of(doc),
                    updated=timestamp(doc.get("updated")),
                    rate=_number(doc.get("records_per_second")),
                    due_within=None if progress is None or interval is None
                    else progress + 2 * interval,
                    files=[_file_row(entry) for entry in doc["files"] if isinstance(entry, dict)])


def _file_row(entry: dict[str, Any]) -> FileRow:
    return FileRow(path=str(entry.get("path", "?")), topic=str(entry.get("topic", "?")),
                   state=str(entry.get("state", "?")),
                   rate=_number(entry.get("records_per_second")),
                   lag=_int(entry.get("lag_bytes")),
                   last_error=str(entry.get("last_error") or ""))


def _state(doc: Document) -> str:
    """Shipping (and which brokers it cannot reach meanwhile), or held and why."""
    if doc.get("kafka") == "ok":
        unreachable = doc.get("kafka_brokers_unreachable")
        return f"shipping, {' '.join(map(str, unreachable))} unreachable" \
            if isinstance(unreachable, list) and unreachable else "shipping"
    return f"held: {doc.get('kafka_cause') or 'Kafka unavailable'}"


@dataclass
class Frame:
    """Everything one screen shows. `stale_after` (status.ttl) judges the documents of
    older agents, which rewrote them at least that often."""

    rows: list[AgentRow]
    sort: Sort
    show_files: bool
    problem: str | None
    live: bool
    now: float
    stale_after: float


LEGEND = "lines/s: each agent's own count between its last two documents; AGE: of the last"


def render(frame: Frame, width: int, height: int | None) -> RenderableType:
    """The screen; `height` None: no limit (one frame printed to a pipe)."""
    if frame.live and (width < MIN_WIDTH or (height or MIN_HEIGHT) < MIN_HEIGHT):
        return Text(f"terminal too small: {width}x{height}; logship top needs at least "
                    f"{MIN_WIDTH}x{MIN_HEIGHT}", no_wrap=False)
    lines = [_headline(frame), Text(LEGEND, style="dim", no_wrap=True, overflow="ellipsis")]
    if frame.problem:
        lines.append(Text(frame.problem, style="bold red", no_wrap=True, overflow="ellipsis"))
    if not frame.rows:
        lines.append(Text("no agent under the status prefix"))
    tables = _tables(frame, width, None if height is None else height - len(lines) - 1)
    return Group(*lines, *tables)


def _headline(frame: Frame) -> Text:
    files = sum(row.files_total for row in frame.rows)
    rate = sum(row.rate or 0.0 for row in frame.rows if not row.stale(frame.now, frame.stale_after))
    text = (f"logship top: {plural(len(frame.rows), 'agent', 'agents')}, "
            f"{plural(files, 'file', 'files')}, {_rate(rate)} lines/s, sort: {frame.sort.value}")
    if frame.live:
        text += "  [q quit f files s sort]"
    return Text(text, style="bold", no_wrap=True, overflow="ellipsis")


# title, width at 80 columns, share of the columns beyond 80
COLUMNS = (("AGENT / FILE", 16, 3), ("HOST/TOPIC", 11, 1), ("VERSION", 7, 0),
           ("STATE", 12, 2), ("FILES", 5, 0), ("LINES/S", 7, 0), ("LAG", 10, 0),
           ("AGE", 5, 0))


def _tables(frame: Frame, width: int, room: int | None) -> list[Table]:
    """One table when it must fit `room` rows; several of FRAME_ROWS rows with the same
    columns when the whole fleet is printed (rich lays out a table whole)."""
    extra = max(0, width - MIN_WIDTH)
    shares = sum(share for _, _, share in COLUMNS)
    widths = [least + extra * share // shares for _, least, share in COLUMNS]
    agents = sorted_rows(frame.rows, frame.sort)
    rows = (cells for row in agents for cells in _cells(row, frame, widths[0]))
    if room is None:
        tables = []
        while chunk := list(islice(rows, FRAME_ROWS)):
            tables.append(_table(widths, chunk, header=not tables))
        return tables or [_table(widths, [], header=True)]
    total = sum(1 + (len(row.files) if frame.show_files else 0) for row in agents)
    if total <= room:
        return [_table(widths, list(rows), header=True)]
    shown = list(islice(rows, max(0, room - 1)))
    more = (Text(f"... {total - len(shown)} more rows", style="dim"), *[""] * (len(COLUMNS) - 1))
    return [_table(widths, [*shown, more], header=True)]


def _table(widths: list[int], rows: list[tuple[RenderableType, ...]], header: bool) -> Table:
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), show_header=header)
    for (title, _, share), column_width in zip(COLUMNS, widths):
        table.add_column(title, no_wrap=True, overflow="ellipsis", width=column_width,
                         justify="left" if share or title == "VERSION" else "right")
    for cells in rows:
        table.add_row(*cells)
    return table


def sorted_rows(rows: Iterable[AgentRow], sort: Sort) -> list[AgentRow]:
    return sorted(rows, key=_sort_key(sort))


def _sort_key(sort: Sort):
    """Worst first: by lag, by lines/s, or by name."""
    if sort is Sort.LAG:
        return lambda row: (-row.lag, _name(row))
    if sort is Sort.RATE:
        return lambda row: (-(row.rate or 0.0), _name(row))
    return _name


def _name(row: AgentRow | FileRow) -> str:
    return row.name if isinstance(row, AgentRow) else row.path


def _cells(row: AgentRow, frame: Frame,
           path_width: int) -> Iterator[tuple[RenderableType, ...]]:
    age = None if row.updated is None else max(0.0, frame.now - row.updated)
    stale = row.stale(frame.now, frame.stale_after)
    state = Text("stale", style="yellow") if stale else \
        Text(row.state, style="" if row.state == "shipping" else "red")
    yield (Text(row.name, style="bold"), row.host, row.version, state, str(row.files_total),
           "-" if stale else _rate(row.rate), human_bytes(row.lag),
           Text("?" if age is None else _age(age), style="yellow" if stale else ""))
    if frame.show_files:
        for f in sorted_rows(row.files, frame.sort):
            state = Text(f.state + (f": {f.last_error}" if f.last_error else ""),
                         style="red" if f.last_error else "")
            yield (Text("  " + _tail(f.path, path_width - 2)), f.topic, "", state, "",
                   "-" if stale else _rate(f.rate), human_bytes(f.lag), "")


def _age(seconds: float) -> str:
    """Within the AGE column's five characters: an idle agent's document may be days old."""
    for unit, size, below in (("s", 1, 100), ("m", 60, 100 * 60), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def _tail(path: str, width: int) -> str:
    """A path cut on the left: its file name is what tells files apart."""
    return path if len(path) <= width else "…" + path[len(path) - width + 1:]


def _rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate / 1000:.1f}k" if rate >= 10_000 else f"{rate:.0f}"


class Follower:
    """The rows of the documents under the prefix (or of the `--agent` keys alone), kept
    current by a watch, on a thread of its own (owned by `top`, stopped by its Event):
    an etcd call may take up to etcd.timeout, keys must not wait on it."""

    def __init__(self, config: Config, agents: tuple[str, ...], retry_every: float) -> None:
        self._source = EtcdSource(config.etcd)
        self._prefix = config.status.prefix
        self._keys = tuple(self._prefix + name for name in agents)
        self._probe_interval = config.etcd.probe_interval
        self._retry_every = retry_every
        self._session: EtcdSession | None = None
        self._lock = threading.Lock()
        self._rows: dict[bytes, AgentRow] = {}
        self._version = 0
        self.problem: str | None = None
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="top-etcd", daemon=True)

    def follow(self) -> None:
        """Read every document, then watch from the revision read; raises EtcdUnavailable."""
        session = self._source.connect()
        try:
            rows = self._read_and_watch(session)
        except ETCD_ERRORS as exc:
            session.close()
            raise EtcdUnavailable(f"etcd {session.explain(exc)}") from None
        with self._lock:
            self._rows = rows
            self._version += 1
        self._session = session
        self.problem = None

    def _read_and_watch(self, session: EtcdSession) -> dict[bytes, AgentRow]:
        rows: dict[bytes, AgentRow] = {}
        if self._keys:
            for key in self._keys:
                value, revision = session.read(key)
                self._add(rows, key.encode(), value)
                session.watch(key, revision + 1)
            return rows
        revision = 0
        for page in session.pages(self._prefix):
            for key, value in page.items:
                self._add(rows, key, value)
            revision = page.revision
        session.watch_prefix(self._prefix, revision + 1)
        return rows

    @staticmethod
    def _add(rows: dict[bytes, AgentRow], key: bytes, value: bytes | None) -> None:
        doc = None if value is None else parse_document(value)
        if doc is not None:
            rows[key] = agent_row(doc)

    def names(self) -> set[str]:
        with self._lock:
            return {row.name for row in self._rows.values()}

    def snapshot(self, known: int) -> tuple[list[AgentRow], int] | None:
        """The rows and their version, or None while they are those of version `known`."""
        with self._lock:
            if self._version == known:
                return None
            return list(self._rows.values()), self._version

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self._session is None:
                    self.follow()
                self._consume(self._session)
            except EtcdUnavailable as exc:
                self._drop_session()
                self.problem = (f"{logs.shown(str(exc), 300)}; retrying every "
                                f"{self._retry_every:g}s, showing the last documents read")
                self.stopping.wait(self._retry_every)

    def _consume(self, session: EtcdSession) -> None:
        """Changes as they come; a quiet watch is checked with a probe, for a server that
        hangs without an error."""
        while not self.stopping.is_set():
            try:
                item = session.events.get(timeout=self._probe_interval)
            except queue.Empty:
                item = None
            try:
                if item is None:
                    session.probe()
                elif isinstance(item, BaseException):
                    raise item
            except ETCD_ERRORS as exc:
                raise EtcdUnavailable(f"etcd {session.explain(exc)}") from None
            if isinstance(item, KeyChange):
                self._change(item)

    def _change(self, change: KeyChange) -> None:
        doc = None if change.value is None else parse_document(change.value)
        with self._lock:
            if doc is None:
                self._rows.pop(change.key, None)
            else:
                self._rows[change.key] = agent_row(doc)
            self._version += 1

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def stop(self) -> None:
        """A call still waiting on etcd after the join is left to the daemon thread."""
        self.stopping.set()
        session = self._session
        if session is not None:
            session.events.put(WAKE)
        if self._thread.ident is not None:
            self._thread.join(5)
        if not self._thread.is_alive():
            self._drop_session()


@contextmanager
def _keys() -> Iterator[None]:
    """Single keys, unechoed, for as long as top runs; the terminal is given back."""
    fd = sys.stdin.fileno()
    before = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, before)


def _keys_pressed(timeout: float) -> str:
    """The keys typed since the last look (several may come in one read); end of input
    quits."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return ""
    data = os.read(sys.stdin.fileno(), 32)
    return data.decode(errors="replace") if data else "q"


@dataclass
class Options:
    interval: float
    agents: tuple[str, ...]
    show_files: bool


def top(config: Config, options: Options) -> int:
    """Live when stdout and stdin are a terminal; else one frame, as `logship status`.
    Ctrl-C ends it as `q` does."""
    follower = Follower(config, options.agents, options.interval)
    try:
        follower.follow()
        missing = [name for name in options.agents if name not in follower.names()]
        if missing:
            raise LogshipError(f"agent {', '.join(missing)}: no status under "
                               f"{config.status.prefix} (not running, or stopped longer ago "
                               f"than status.ttl)")
        screen = Screen(config.status.ttl, options.show_files)
        screen.take(follower)
        console = Console()
        if not (console.is_terminal and sys.stdin.isatty()):
            console.print(render(screen.frame(None, live=False), console.width, None))
            return 0
        follower.start()
        with suppress(KeyboardInterrupt):
            _live(console, follower, screen, options.interval)
        return 0
    finally:
        follower.stop()


@dataclass
class Screen:
    """What the keys change, and the rows last taken from the follower."""

    stale_after: float
    show_files: bool
    sort: Sort = Sort.LAG
    rows: list[AgentRow] = field(default_factory=list)
    version: int = -1

    def take(self, follower: Follower) -> None:
        taken = follower.snapshot(self.version)
        if taken is not None:
            self.rows, self.version = taken

    def press(self, key: str) -> None:
        if key == "f":
            self.show_files = not self.show_files
        elif key == "s":
            self.sort = self.sort.next()

    def frame(self, problem: str | None, live: bool) -> Frame:
        return Frame(self.rows, self.sort, self.show_files, problem, live, time.time(),
                     self.stale_after)


def _live(console: Console, follower: Follower, screen: Screen, interval: float) -> None:
    """Changes taken every `interval`; redrawn on a key, a change, a resize, and every
    second (the documents' age)."""
    drawn: tuple[Any, ...] | None = None
    taken_at = time.monotonic()
    with _keys(), Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            if time.monotonic() - taken_at >= interval:
                screen.take(follower)
                taken_at = time.monotonic()
            keys = _keys_pressed(KEY_POLL)
            if "q" in keys:
                return
            for key in keys:
                screen.press(key)
            state = (console.size, screen.version, screen.sort, screen.show_files,
                     follower.problem, int(time.time()))
            if state != drawn:
                drawn = state
                size = console.size
                live.update(render(screen.frame(follower.problem, live=True), size.width,
                                   size.height), refresh=True)
