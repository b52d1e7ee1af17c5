"""`logship top`: a live terminal view of the fleet, from the status documents in etcd.

It reads what `logship status` reads (every document under `status.prefix`), every
`--interval` seconds, and turns successive documents into rates: lines/s is the growth
of a file's `records_sent` between two documents over the time between their `updated`
stamps, so it is the agent's own count, not top's guess. Reading etcd happens on a
thread of its own, so a slow or absent etcd never freezes the keys; the screen then says
so on one line and keeps the last documents it read.

Drawn with rich; when stdout is not a terminal, one frame is printed without escape
codes and top exits, as `logship status` does.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from logship import logs
from logship.logs import plural
from logship.config import Config
from logship.errors import EtcdUnavailable, LogshipError
from logship.etcd_source import ETCD_ERRORS, EtcdSession, EtcdSource, describe
from logship.status import Document, human_bytes, parse_documents

MIN_WIDTH = 80
MIN_HEIGHT = 10
KEY_POLL = 0.1          # how often keys and a resized terminal are looked at


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
    name: str
    host: str
    version: str
    state: str
    files_total: int
    lag: int
    updated: float | None
    files: list[FileRow] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        rates = [f.rate for f in self.files if f.rate is not None]
        return sum(rates) if rates else None


class Rates:
    """lines/s per file from successive documents of its agent. A document is rewritten
    only when something changed (at least every status.ttl), so a rate holds until the
    next one; a count that went down (the worker restarted) starts over."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._rates: dict[tuple[str, str, str], float] = {}

    def update(self, key: tuple[str, str, str], updated: float | None,
               records: int) -> float | None:
        if updated is None:
            return None
        before = self._seen.get(key)
        if before is None or records < before[1]:
            self._seen[key] = (updated, records)
            self._rates.pop(key, None)
        elif updated > before[0]:
            self._rates[key] = (records - before[1]) / (updated - before[0])
            self._seen[key] = (updated, records)
        return self._rates.get(key)

    def keep_only(self, keys: set[tuple[str, str, str]]) -> None:
        """Files and agents that have gone are forgotten."""
        for gone in self._seen.keys() - keys:
            del self._seen[gone]
            self._rates.pop(gone, None)


def _timestamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


class Fleet:
    """The rows top shows, from the documents of one read."""

    def __init__(self) -> None:
        self.rates = Rates()

    def rows(self, documents: list[Document]) -> list[AgentRow]:
        rows = [self._agent(doc) for doc in documents]
        self.rates.keep_only({(row.name, f.path, f.topic) for row in rows for f in row.files})
        return rows

    def _agent(self, doc: Document) -> AgentRow:
        name = str(doc.get("name", "?"))
        updated = _timestamp(doc.get("updated"))
        files = [self._file(name, updated, entry) for entry in doc["files"]
                 if isinstance(entry, dict)]
        return AgentRow(name=name, host=str(doc.get("host", "?")),
                        version=str(doc.get("version", "?")), state=_state(doc),
                        files_total=_int(doc.get("files_total", len(files))),
                        lag=sum(f.lag for f in files), updated=updated, files=files)

    def _file(self, agent: str, updated: float | None, entry: dict[str, Any]) -> FileRow:
        path, topic = str(entry.get("path", "?")), str(entry.get("topic", "?"))
        return FileRow(path=path, topic=topic, state=str(entry.get("state", "?")),
                       rate=self.rates.update((agent, path, topic), updated,
                                              _int(entry.get("records_sent"))),
                       lag=_int(entry.get("lag_bytes")),
                       last_error=str(entry.get("last_error") or ""))


def _state(doc: Document) -> str:
    """Shipping, or held and why."""
    if doc.get("kafka") == "ok":
        return "shipping"
    return f"held: {doc.get('kafka_cause') or 'Kafka unavailable'}"


def sorted_rows(rows: list[AgentRow], sort: Sort) -> list[AgentRow]:
    """Agents and, within each, its files."""
    for row in rows:
        row.files.sort(key=_sort_key(sort))
    return sorted(rows, key=_sort_key(sort))


def _sort_key(sort: Sort):
    if sort is Sort.LAG:
        return lambda row: (-row.lag, _name(row))
    if sort is Sort.RATE:
        return lambda row: (-(row.rate or 0.0), _name(row))
    return _name


def _name(row: AgentRow | FileRow) -> str:
    return row.name if isinstance(row, AgentRow) else row.path


@dataclass
class Frame:
    """Everything one screen shows. A document older than `stale_after` (the agent
    rewrites it at least every status.ttl) is of an agent that stopped moving."""

    rows: list[AgentRow]
    sort: Sort
    show_files: bool
    problem: str | None
    live: bool
    now: float
    stale_after: float


def render(frame: Frame, width: int, height: int | None) -> RenderableType:
    """The screen; `height` None: no limit (one frame printed to a pipe)."""
    if frame.live and (width < MIN_WIDTH or (height or MIN_HEIGHT) < MIN_HEIGHT):
        return Text(f"terminal too small: {width}x{height}; logship top needs at least "
                    f"{MIN_WIDTH}x{MIN_HEIGHT}", no_wrap=False)
    lines = [_headline(frame)]
    if frame.problem:
        lines.append(Text(frame.problem, style="bold red", no_wrap=True, overflow="ellipsis"))
    if not frame.rows:
        lines.append(Text("no agent under the status prefix"))
    table = _table(frame, width, None if height is None else height - len(lines) - 1)
    return Group(*lines, table)


def _headline(frame: Frame) -> Text:
    files = sum(row.files_total for row in frame.rows)
    rate = sum(row.rate or 0.0 for row in frame.rows)
    text = (f"logship top: {plural(len(frame.rows), 'agent', 'agents')}, "
            f"{plural(files, 'file', 'files')}, {_rate(rate)} lines/s, sort: {frame.sort.value}")
    if frame.live:
        text += "  [q quit f files s sort]"
    return Text(text, style="bold", no_wrap=True, overflow="ellipsis")


# title, width at 80 columns, share of the columns beyond 80
COLUMNS = (("AGENT / FILE", 16, 3), ("HOST/TOPIC", 11, 1), ("VERSION", 7, 0),
           ("STATE", 12, 2), ("FILES", 5, 0), ("LINES/S", 7, 0), ("LAG", 10, 0),
           ("AGE", 5, 0))


def _table(frame: Frame, width: int, room: int | None) -> Table:
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0))
    extra = max(0, width - MIN_WIDTH)
    shares = sum(share for _, _, share in COLUMNS)
    widths = [least + extra * share // shares for _, least, share in COLUMNS]
    for (title, _, share), column_width in zip(COLUMNS, widths):
        table.add_column(title, no_wrap=True, overflow="ellipsis", width=column_width,
                         justify="left" if share or title == "VERSION" else "right")
    rows = [cells for row in sorted_rows(frame.rows, frame.sort)
            for cells in _cells(row, frame, widths[0])]
    if room is not None and len(rows) > room:
        hidden = len(rows) - room + 1
        rows = rows[:room - 1] + [(Text(f"... {hidden} more rows", style="dim"),
                                   *[""] * (len(COLUMNS) - 1))]
    for cells in rows:
        table.add_row(*cells)
    return table


def _cells(row: AgentRow, frame: Frame,
           path_width: int) -> Iterator[tuple[RenderableType, ...]]:
    age = None if row.updated is None else max(0.0, frame.now - row.updated)
    stale = age is None or age > frame.stale_after
    state = Text("stale", style="yellow") if stale else \
        Text(row.state, style="" if row.state == "shipping" else "red")
    yield (Text(row.name, style="bold"), row.host, row.version, state, str(row.files_total),
           _rate(row.rate), human_bytes(row.lag),
           Text("?" if age is None else f"{age:.0f}s", style="yellow" if stale else ""))
    if frame.show_files:
        for f in row.files:
            state = Text(f.state + (f": {f.last_error}" if f.last_error else ""),
                         style="red" if f.last_error else "")
            yield (Text("  " + _tail(f.path, path_width - 2)), f.topic, "", state, "",
                   _rate(f.rate), human_bytes(f.lag), "")


def _tail(path: str, width: int) -> str:
    """A path cut on the left: its file name is what tells files apart."""
    return path if len(path) <= width else "…" + path[len(path) - width + 1:]


def _rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate / 1000:.1f}k" if rate >= 10_000 else f"{rate:.0f}"


class Poller:
    """Reads the documents every `interval` on its own thread (owned by `top`, stopped
    by its Event): an etcd read may take up to etcd.timeout, keys must not wait on it."""

    def __init__(self, config: Config, interval: float, agents: tuple[str, ...]) -> None:
        self._source = EtcdSource(config.etcd)
        self._prefix = config.status.prefix
        self._interval = interval
        self._agents = agents
        self._session: EtcdSession | None = None
        self._lock = threading.Lock()
        self._result: tuple[list[Document], float] | None = None
        self.problem: str | None = None
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="top-etcd", daemon=True)

    def read(self) -> list[Document]:
        """One read; raises EtcdUnavailable."""
        try:
            if self._session is None:
                self._session = self._source.connect()
            documents = parse_documents(self._session.read_prefix(self._prefix))
        except ETCD_ERRORS as exc:
            cause = self._session.explain(exc) if self._session else describe(exc)
            self._drop_session()
            raise EtcdUnavailable(f"etcd {cause}") from None
        except EtcdUnavailable:
            self._drop_session()
            raise
        if self._agents:
            documents = [d for d in documents if d.get("name") in self._agents]
        return documents

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def start(self, first: list[Document]) -> None:
        self._store(first)
        self._thread.start()

    def latest(self) -> tuple[list[Document], float] | None:
        with self._lock:
            return self._result

    def _store(self, documents: list[Document]) -> None:
        with self._lock:
            self._result = (documents, time.time())
        self.problem = None

    def _run(self) -> None:
        while not self.stopping.wait(self._interval):
            try:
                self._store(self.read())
            except EtcdUnavailable as exc:
                self.problem = (f"{logs.shown(str(exc), 300)}; retrying every "
                                f"{self._interval:g}s, showing the last documents read")

    def stop(self) -> None:
        """A read still waiting on etcd after the join is left to the daemon thread."""
        self.stopping.set()
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
    poller = Poller(config, options.interval, options.agents)
    try:
        documents = poller.read()
        missing = [name for name in options.agents
                   if name not in {d.get("name") for d in documents}]
        if missing:
            raise LogshipError(f"agent {', '.join(missing)}: no status under "
                               f"{config.status.prefix} (not running, or stopped longer ago "
                               f"than status.ttl)")
        screen = Screen(Fleet(), config.status.ttl, options.show_files)
        console = Console()
        if not (console.is_terminal and sys.stdin.isatty()):
            screen.read(documents, time.time())
            console.print(render(screen.frame(None, live=False), console.width, None))
            return 0
        poller.start(documents)
        with suppress(KeyboardInterrupt):
            _live(console, poller, screen)
        return 0
    finally:
        poller.stop()


@dataclass
class Screen:
    """What the keys change, and the rows of the latest read."""

    fleet: Fleet
    stale_after: float
    show_files: bool
    sort: Sort = Sort.LAG
    rows: list[AgentRow] = field(default_factory=list)
    read_at: float | None = None

    def read(self, documents: list[Document], read_at: float) -> None:
        if read_at != self.read_at:
            self.rows, self.read_at = self.fleet.rows(documents), read_at

    def press(self, key: str) -> None:
        if key == "f":
            self.show_files = not self.show_files
        elif key == "s":
            self.sort = self.sort.next()

    def frame(self, problem: str | None, live: bool) -> Frame:
        return Frame(self.rows, self.sort, self.show_files, problem, live, time.time(),
                     self.stale_after)


def _live(console: Console, poller: Poller, screen: Screen) -> None:
    """Redrawn on a key, a read, a resize, and every second (the documents' age)."""
    drawn: tuple[Any, ...] | None = None
    with _keys(), Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            latest = poller.latest()
            if latest is not None:
                screen.read(*latest)
            keys = _keys_pressed(KEY_POLL)
            if "q" in keys:
                return
            for key in keys:
                screen.press(key)
            state = (console.size, screen.read_at, screen.sort, screen.show_files,
                     poller.problem, int(time.time()))
            if state != drawn:
                drawn = state
                size = console.size
                live.update(render(screen.frame(poller.problem, live=True), size.width,
                                   size.height), refresh=True)
