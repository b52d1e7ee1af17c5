"""logship: follows log files by name and ships every line to Kafka, at least once.

What to ship is a JSON list of {"path", "topic"} entries stored under the etcd keys that
config.yaml names; an agent per host runs until SIGTERM, and follows edits of etcd and
of config.yaml as they happen. Errors are one clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

from logship import __version__, logs
from logship.logs import plural
from logship.agent import Agent, load
from logship.checkpoint import check_state_dir
from logship.config import Config, EtcdConfig, expand_key
from logship.errors import EtcdUnavailable, LogshipError, SpecError
from logship.etcd_source import (ETCD_ERRORS, EtcdSession, EtcdSource, describe,
                                 wake_grpc_waits_less)
from logship.clients import check_positions, check_transactions, reach_broker
from logship.process import cap_malloc_arenas, collect_cycles_less
from logship.spec import parse_value
from logship.status import Document, Table, parse_document
from logship.top import Options, top

log = logging.getLogger("logship")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    logs.setup()
    try:
        args = parser.parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _reader_gone()
    except LogshipError as exc:
        print(f"logship: error: {logs.shown(str(exc), logs.MESSAGE_LIMIT)}", file=sys.stderr)
        return 1


def _reader_gone() -> int:
    """The reader of our output went away (`logship status | head -4`): end quietly, as
    `git log | head` does. stdout goes to /dev/null, so that the flush at exit cannot
    fail a second time."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"logship {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--config", default="config.yaml", type=Path,
                         help="path of config.yaml (default: ./config.yaml)")
        sub.set_defaults(func=func)
        return sub

    command("run", run, "ship files until SIGTERM or SIGINT")
    check_command = command("check", check, "validate the config")
    check_command.add_argument("--connect", action="store_true",
                               help="also reach every etcd endpoint and Kafka broker")
    check_command.add_argument("--timeout", type=_positive, default=CONNECT_TIMEOUT,
                               metavar="S", help="with --connect: seconds each endpoint is "
                               f"given, all at once (default: {CONNECT_TIMEOUT:g})")
    put = command("put", put_value, "validate a JSON value and write it to etcd")
    put.add_argument("--force", action="store_true",
                     help="write even to a key that no agent of this config watches")
    put.add_argument("key")
    put.add_argument("file", help="a JSON file, or - for standard input")
    get = command("get", get_value, "print the value stored under KEY")
    get.add_argument("key")
    delete = command("delete", delete_key, "remove KEY from etcd: its files stop shipping")
    delete.add_argument("key")
    unit = command("install-unit", install_unit, "install the systemd unit and a sample "
                   "/etc/logship/config.yaml (kept if present)")
    unit.add_argument("--root", type=Path, default=Path("/"),
                      help="install under this directory instead of / (to inspect or package)")
    status = command("status", show_status, "every agent's status document under status.prefix")
    status.add_argument("--json", action="store_true", help="the documents as one JSON array")
    status.add_argument("name", nargs="?", help="only the agent of this name")
    rules_command = commands.add_parser("rules", help="print the Prometheus alert and "
                                        "recording rules, to load as they are")
    rules_command.set_defaults(func=print_rules)
    top_command = command("top", show_top, "a live view of the fleet (q quits, f toggles "
                          "files, s cycles the sort)")
    top_command.add_argument("--agent", nargs="+", default=[], metavar="NAME",
                             help="only these agents")
    top_command.add_argument("--interval", default=str(TOP_INTERVAL), metavar="S",
                             help=f"seconds between screen updates; changes arrive by a watch "
                             f"(default: {TOP_INTERVAL:g})")
    top_command.add_argument("--files", action="store_true",
                             help="start with each agent's files shown")
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


@contextmanager
def _etcd(config: Config) -> Iterator[EtcdSession]:
    """A session for one command; etcd's own errors become one clear line."""
    session = EtcdSource(config.etcd).connect()
    try:
        yield session
    except ETCD_ERRORS as exc:
        raise EtcdUnavailable(f"etcd {session.explain(exc)}") from None
    finally:
        session.close()


def _load(path: Path, strict: bool = False) -> Config:
    config = load(path, strict=strict)
    for warning in config.warnings:
        log.warning("config: %s (%s: ignored, so its default applies; `logship check` "
                    "refuses it)", warning, path)
    return config


def _load_with_key(args: argparse.Namespace) -> Config:
    """put, get and delete expand {name} and {hostname} in KEY as the agent does."""
    config = _load(args.config)
    args.key = expand_key(args.key, config.name)
    return config


def run(args: argparse.Namespace) -> int:
    cap_malloc_arenas()
    collect_cycles_less()
    config = _load(args.config)
    logs.setup(config.log.level, config.log.format)
    wake_grpc_waits_less()
    agent = Agent(args.config, config)
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload("SIGHUP"))
    agent.run()
    return 0


def check(args: argparse.Namespace) -> int:
    """Validates and changes nothing: state_dir is judged, never created."""
    config = load(args.config, strict=True)
    check_state_dir(config.state_dir)
    print(f"{args.config}: ok ({plural(len(config.etcd.keys), 'etcd key', 'etcd keys')}, "
          f"{plural(len(config.logs), 'static entry', 'static entries')})")
    if args.connect and not _connect(config, args.timeout):
        raise LogshipError("not every endpoint answered")
    return 0


CONNECT_TIMEOUT = 5.0
CONNECT_GRACE = 1.0
CAUSE_LIMIT = 1000


@dataclass
class _Probe:
    """One endpoint reached on a thread of its own, so that a server that never answers
    holds up nothing but its own line."""

    what: str
    attempt: Callable[[], str]
    answer: str | None = None
    failure: str | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"check {self.what}", daemon=True)

    def _run(self) -> None:
        try:
            self.answer = self.attempt()
        except (LogshipError, *ETCD_ERRORS) as exc:
            self.failure = str(exc) if isinstance(exc, LogshipError) else describe(exc)

    def line(self, timeout: float) -> str:
        if self.answer is not None:
            return f"{self.what}: ok, {self.answer}"
        cause = self.failure or f"no answer within {timeout:g}s"
        return f"{self.what}: FAILED: {logs.shown(cause, CAUSE_LIMIT)}"


def _connect(config: Config, timeout: float) -> bool:
    """Filebeat's `test output`: one line per etcd endpoint and Kafka broker. All are
    reached at once and the check ends within the bound it states, whatever the servers
    do: a probe still running then is a daemon thread, left behind at exit."""
    probes = [_Probe(f"etcd {host}:{port}", partial(_etcd_version, replace(
        config.etcd, endpoints=((host, port),), timeout=min(config.etcd.timeout, timeout))))
        for host, port in config.etcd.endpoints]
    probes += [_Probe(f"kafka {broker} ({config.kafka.client})",
                      partial(reach_broker, config.kafka, broker, timeout))
               for broker in config.kafka.bootstrap_servers]
    if config.kafka.exactly_once:
        probes += [_Probe("kafka transactions", partial(check_transactions, config.kafka,
                                                        config.name, timeout)),
                   _Probe(f"kafka offsets topic {config.kafka.offsets_topic}",
                          partial(check_positions, config.kafka, config.name, timeout))]
    print(f"reaching {plural(len(probes), 'endpoint', 'endpoints')} at once, each within "
          f"{timeout:g}s ({timeout + CONNECT_GRACE:g}s in all)", flush=True)
    for probe in probes:
        probe.thread.start()
    deadline = time.monotonic() + timeout + CONNECT_GRACE
    for probe in probes:
        probe.thread.join(max(0.0, deadline - time.monotonic()))
        print(probe.line(timeout), flush=True)
    return all(probe.answer is not None for probe in probes)


def _etcd_version(config: EtcdConfig) -> str:
    session = EtcdSource(config).connect()
    try:
        return f"etcd {session.version()}"
    finally:
        session.close()


def put_value(args: argparse.Namespace) -> int:
    config = _load_with_key(args)
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise LogshipError(f"{args.file}: cannot read: {exc.strerror}") from None
    try:
        parsed = parse_value(raw, config.allowed_paths)
    except SpecError as exc:
        raise SpecError(f"key={args.key}: {exc}; nothing written") from None
    if parsed.rejected:
        raise SpecError(f"key={args.key}: value refused, nothing written: "
                        + "; ".join(parsed.rejected))
    _refuse_unwatched(config, args.config, args.key, args.force)
    with _etcd(config) as session:
        session.put(args.key, raw)
    print(f"key={args.key}: wrote {plural(len(parsed.targets), 'entry', 'entries')}")
    return 0


def delete_key(args: argparse.Namespace) -> int:
    config = _load_with_key(args)
    _warn_unwatched(config, args.config, args.key)
    with _etcd(config) as session:
        existed = session.delete(args.key)
    if not existed:
        raise LogshipError(f"key={args.key}: not found, nothing deleted")
    print(f"key={args.key}: deleted")
    return 0


def _unwatched(config: Config, path: Path, key: str) -> str | None:
    """A key no agent with this config watches is almost always a typo."""
    if key in config.etcd.keys:
        return None
    return (f"key={key} is not in etcd.keys of {path} ({', '.join(config.etcd.keys)}): "
            f"agents with this config do not watch it")


def _warn_unwatched(config: Config, path: Path, key: str) -> None:
    problem = _unwatched(config, path, key)
    if problem:
        log.warning("%s", problem)


def _refuse_unwatched(config: Config, path: Path, key: str, force: bool) -> None:
    """put exits non-zero for such a key unless forced, so that a script notices."""
    problem = _unwatched(config, path, key)
    if problem and not force:
        raise LogshipError(f"{problem}; nothing written (--force writes it anyway)")
    if problem:
        log.warning("%s; written as --force asks", problem)


def show_status(args: argparse.Namespace) -> int:
    """Documents are handled as the pages of the prefix arrive: a fleet's documents are
    never held at once, nor read in one message."""
    config = _load(args.config)
    prefix = config.status.prefix
    with _etcd(config) as session:
        if args.name is not None:
            value, _revision = session.read(prefix + args.name)
            doc = None if value is None else parse_document(value)
            if doc is None:
                raise LogshipError(f"agent {args.name}: no status under {prefix} (not "
                                   f"running, or stopped longer ago than status.ttl)")
            documents: Iterable[Document] = [doc]
        else:
            documents = _documents(session, prefix)
        if args.json:
            _print_json(documents)
            return 0
        table = Table(time.time())
        for doc in documents:
            table.add(doc)
    print(table if len(table) else f"no agent under {prefix}")
    return 0


def _documents(session: EtcdSession, prefix: str) -> Iterator[Document]:
    for page in session.pages(prefix):
        for _key, value in page.items:
            doc = parse_document(value)
            if doc is not None:
                yield doc


def _print_json(documents: Iterable[Document]) -> None:
    """As json.dumps(list, indent=2) prints it, one document at a time."""
    opened = False
    for doc in documents:
        sys.stdout.write(",\n" if opened else "[\n")
        sys.stdout.write(textwrap.indent(json.dumps(doc, indent=2), "  "))
        opened = True
    sys.stdout.write("\n]\n" if opened else "[]\n")


def print_rules(args: argparse.Namespace) -> int:
    """The rules file the wheel carries, so a host needs no checkout to get them."""
    sys.stdout.write(RULES.read_text())
    return 0


RULES = resources.files("logship") / "data" / "prometheus" / "logship-rules.yaml"
TOP_INTERVAL = 2.0


def show_top(args: argparse.Namespace) -> int:
    """The interval is judged here, not by argparse, so that a bad one is one line and
    exit 1 like every other error of top."""
    try:
        interval = float(args.interval)
    except ValueError:
        interval = 0.0
    if not interval > 0:
        raise LogshipError(f"--interval: must be a number of seconds above 0, got "
                           f"{args.interval!r}")
    config = _load(args.config)
    return top(config, Options(interval, tuple(args.agent), args.files))


def install_unit(args: argparse.Namespace) -> int:
    """The unit and sample config carried by the package, so a host needs no checkout;
    the unit's paths are those of this installation."""
    data = resources.files("logship") / "data"
    launcher = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "logship" \
        else Path(sys.executable).with_name("logship")
    unit = data.joinpath("logship.service").read_text().replace(DEFAULT_LAUNCHER, str(launcher))
    unit_path = args.root / "etc/systemd/system/logship.service"
    config_path = args.root / "etc/logship/config.yaml"
    _install(unit_path, unit, 0o644)
    if config_path.exists():
        print(f"kept {config_path}")
    else:
        _install(config_path, data.joinpath("config.yaml").read_text(), 0o640)
    print(UNIT_NEXT_STEPS.format(config=config_path))
    return 0


def _install(path: Path, text: str, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    except OSError as exc:
        raise LogshipError(f"{path}: cannot write: {exc.strerror} (run as root, or give "
                           f"--root DIR)") from None
    print(f"wrote {path} ({mode:04o})")


DEFAULT_LAUNCHER = "/opt/logship/bin/logship"
UNIT_NEXT_STEPS = """next, as root:
  useradd --system --home-dir /var/lib/logship --shell /usr/sbin/nologin --groups adm logship
  chgrp logship {config}
  systemctl daemon-reload && systemctl enable --now logship"""


def get_value(args: argparse.Namespace) -> int:
    config = _load_with_key(args)
    with _etcd(config) as session:
        value, _ = session.read(args.key)
    if value is None:
        raise LogshipError(f"key={args.key}: not found")
    sys.stdout.write(value.decode("utf-8", errors="replace").rstrip("\n") + "\n")
    return 0
