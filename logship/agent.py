"""The root supervisor: owns managers, the static entries, the workers and shared clients.

Everything that starts or stops a thread happens on the agent's own loop (the main
thread): managers only declare their targets, signal handlers and file events only
raise flags. The loop merges the declarations into one target per (path, topic),
reconciles the workers, restarts crashed children after their backoff, and applies
config reloads.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Hashable

from logship import logs
from logship.checkpoint import CheckpointStore, CheckpointWriter, StateLock
from logship.config import Config, load_config
from logship.discovery import Discovery
from logship.errors import ConfigError
from logship.etcd_source import EtcdSource
from logship.follower import Follower
from logship.fswatch import DirWatcher, Subscription
from logship.journal import JournalFollower
from logship.logs import plural
from logship.manager import Manager
from logship.metrics import Metrics, MetricsServer
from logship.clients import check_settings, open_sink
from logship.sink import Sink
from logship.spec import Target
from logship.status import (Condition, Document, Identity, StatusWriter, document,
                            lag_by_topic)
from logship.process import size_futex_hash
from logship.supervisor import Supervisor
from logship.worker import Worker

log = logging.getLogger(__name__)

HOST = socket.gethostname().encode()

STATIC_OWNER = "config"
TICK = 0.2
RELOAD_SETTLE = 0.3
CHECKPOINT_INTERVAL = 1.0
HEALTHY_WITHIN = 10.0
STATUS_STOP_TIMEOUT = 10.0


def load(path: Path, strict: bool = False) -> Config:
    """config.yaml validated whole: its schema, then `kafka.producer` by the chosen client."""
    config = load_config(path, strict=strict)
    try:
        check_settings(config.kafka)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def describe_changes(old: Config, new: Config) -> str:
    """What a reload changes, as an operator names it: sections, and keys added/removed."""
    parts = [name for name in ("name", "etcd", "kafka", "status", "log", "files", "journal",
                               "logs", "allowed_paths", "state_dir", "metrics_listen")
             if getattr(old, name) != getattr(new, name)]
    added = [k for k in new.etcd.keys if k not in old.etcd.keys]
    removed = [k for k in old.etcd.keys if k not in new.etcd.keys]
    parts += [f"key {k} added" for k in added] + [f"key {k} removed" for k in removed]
    return "changed " + ", ".join(parts)


class Agent:
    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.metrics = Metrics()
        self.store = CheckpointStore(config.state_dir, self.metrics.checkpoint_errors.inc)
        self._state_lock = StateLock(config.state_dir)
        self.watcher = DirWatcher()
        self.sink = open_sink(config.kafka, HOST, self._kafka_error, config.name)
        self.source = EtcdSource(config.etcd)
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self.discovery = self._new_discovery(config)
        self._declared: dict[str, tuple[Target, ...]] = {}
        self._declarations_changed = True
        self._declarations = 0
        self._stop_requested = False
        self._reload_requested_at: float | None = None
        self._reload_reason = ""
        self._heartbeat = time.monotonic()
        self._swept = self._heartbeat
        self.managers: Supervisor[str, str] = Supervisor(
            "manager", self._new_manager, lambda key: self.metrics.manager_restarts.labels(key).inc())
        self.workers: Supervisor[tuple[str, str], Target] = Supervisor(
            "worker", self._new_worker,
            lambda target: self.metrics.worker_restarts.labels(target.topic).inc())
        self._writer = CheckpointWriter(self.store, CHECKPOINT_INTERVAL, self._configured_targets)
        self._metrics_server: MetricsServer | None = None
        self._config_subscription: Subscription | None = None
        self.identity = Identity(config.name, HOST.decode(), time.time())
        self._status_writer: StatusWriter | None = None
        self.metrics.collect_lag(lambda: lag_by_topic(self.workers.states()))
        self.metrics.files_unfollowed.set_function(lambda: self.discovery.unfollowed)

    # -- called from other threads or signal handlers: only set flags -------------

    def declare(self, owner: str, targets: tuple[Target, ...]) -> None:
        with self._lock:
            self._declared[owner] = targets
            self._declarations_changed = True
            self._declarations += 1
        self._wakeup.set()

    def request_stop(self) -> None:
        self._stop_requested = True

    def request_reload(self, reason: str = "an edit of the file") -> None:
        self._reload_reason = reason
        self._reload_requested_at = time.monotonic()

    def keys_of(self, target: Target) -> list[str]:
        """The etcd keys (or "config") that declare a target's entry (any thread)."""
        return self._owners().get(target.entry_id, [])

    def _owners(self) -> dict[tuple[str, str], list[str]]:
        with self._lock:
            declared = list(self._declared.items())
        owners: dict[tuple[str, str], list[str]] = {}
        for owner, targets in declared:
            for target in targets:
                owners.setdefault(target.id, []).append(owner)
        return owners

    def status_document(self) -> Document:
        """This agent's status with every file (any thread: /api/status, the status
        writer, a scrape)."""
        owners = self._owners()
        kafka = self.sink.health
        condition = Condition(None if kafka.up else kafka.cause or "unavailable",
                              kafka.unreachable, self.sink.delivery, self.health())
        return document(self.identity, self.config.status, self.config.etcd.keys, condition,
                        self.workers.states(), owners)

    def status_fingerprint(self) -> Hashable | None:
        """Cheap, so that 10,000 idle files cost no status rebuild (a stat and a dict each)
        every status.interval, nor even a look at each worker: the status has not changed
        while this has not. Every file opened or closed and every acknowledged batch moves
        the checkpoints' version, a write to a followed file the watcher's count of events
        (its lag grew), so the status says so within one interval. None while Kafka is
        down: rebuilt every interval."""
        if not self.sink.health.up:
            return None
        return (self._declarations, self.workers.changes, tuple(self.config.etcd.keys),
                self.watcher.changes, self.store.version, self.health(),
                self.sink.health.unreachable)

    def health(self) -> str | None:
        """What is wrong, for /healthz; None when healthy."""
        stalled = time.monotonic() - self._heartbeat
        if stalled >= HEALTHY_WITHIN:
            return f"the agent's loop has not run for {stalled:.0f}s"
        return self.store.save_error

    # -- the agent's loop -----------------------------------------------------------

    def run(self) -> None:
        """Raises ConfigError, before anything starts, when state_dir is unusable or taken."""
        self.store.load()
        self._state_lock.acquire()
        self._start()
        try:
            while not self._stop_requested:
                self._tick(time.monotonic())
                self._wakeup.wait(TICK)
                self._wakeup.clear()
        finally:
            self._shutdown()

    def _start(self) -> None:
        """/metrics and /healthz listen first: what the sink says from its first attempt
        (Kafka unreachable) is in the metrics by the time it is in the log."""
        size_futex_hash(self.config.files.max_files)
        self._start_metrics()
        self._adopt_sink(self.sink)
        self.watcher.start()
        self._config_subscription = self.watcher.subscribe(str(self.config_path),
                                                           self.request_reload)
        self._writer.start()
        self._start_status()
        self.declare(STATIC_OWNER, self.config.logs)
        self.managers.reconcile({key: key for key in self.config.etcd.keys})
        log.info("agent started: %s, %s, state in %s",
                 plural(len(self.config.etcd.keys), "etcd key", "etcd keys"),
                 plural(len(self.config.logs), "static entry", "static entries"),
                 self.config.state_dir)

    def _tick(self, now: float) -> None:
        self._heartbeat = now
        requested = self._reload_requested_at
        if requested is not None and now - requested >= RELOAD_SETTLE:
            self._reload_requested_at = None
            log.info("config reload requested by %s", self._reload_reason)
            self.reload()
        if self._declarations_changed or self.discovery.refresh(self._holds_files):
            self._reconcile_workers()
        self.managers.supervise(now)
        self.workers.supervise(now)
        if self.watcher.overflowed or now - self._swept >= self.config.files.safety_poll_interval:
            self._swept = now
            self.watcher.sweep()
            self.discovery.rescan_all()

    def _reconcile_workers(self) -> None:
        """One worker per (path, topic): the plain entries, then the files the glob
        entries match, up to files.max_files in all."""
        with self._lock:
            self._declarations_changed = False
            declared = dict(self._declared)
        desired: dict[tuple[str, str], Target] = {}
        globs: dict[tuple[str, str], Target] = {}
        for targets in declared.values():
            for target in targets:
                (globs if target.is_glob else desired).setdefault(target.id, target)
        self.discovery.sync(globs.values())
        self.discovery.refresh(self._holds_files)
        matched = self.discovery.targets(self.config.files.max_files, set(desired),
                                         self.workers.keys())
        self.workers.reconcile(desired | matched)
        per_glob = Counter(target.entry_id for target in matched.values())
        self.metrics.set_running({owner: sum(per_glob[t.id] if t.is_glob else 1 for t in targets)
                                  for owner, targets in declared.items()})

    def _holds_files(self, target: Target) -> bool:
        worker = self.workers.service(target.id)
        return isinstance(worker, Worker) and worker.holds_files()

    def _configured_targets(self) -> set[tuple[str, str]] | None:
        """What runs now, once every key has been read; None before (expire nothing)."""
        with self._lock:
            if not set(self.config.etcd.keys) <= set(self._declared):
                return None
            plain = {(t.topic, t.path) for targets in self._declared.values() for t in targets
                     if not t.is_glob}
        return plain | self.discovery.matched

    def _adopt_sink(self, sink: Sink) -> Sink:
        """Once the store is loaded: an exactly-once sink reads the positions kept in
        Kafka into it, and tombstones the files it forgets."""
        self.metrics.in_flight_bytes.set_function(lambda: sink.budget.used)
        self.metrics.kafka_up.set_function(lambda: int(sink.health.up))
        self.metrics.kafka_brokers_unreachable.set_function(lambda: len(sink.health.unreachable))
        self.store.on_forget = sink.forget
        sink.start(self.store, self.metrics)
        return sink

    def _kafka_error(self, reason: str) -> None:
        self.metrics.kafka_errors.labels(reason).inc()

    def _new_manager(self, key: str) -> Manager:
        return Manager(key, self.source, self.config.allowed_paths, self.declare, self.metrics,
                       self.config.etcd.probe_interval)

    def _new_discovery(self, config: Config) -> Discovery:
        return Discovery(self.watcher, self.store, config.allowed_paths, self._wakeup.set)

    def _new_worker(self, target: Target) -> Follower:
        if target.journal is not None:
            return JournalFollower(target, self.config.files, self.config.journal.journalctl,
                                   self.sink, self.store, self.metrics, self.keys_of)
        return Worker(target, self.config.files, self.config.allowed_paths, self.sink, self.store,
                      self.watcher, self.metrics, self.keys_of)

    def _start_status(self) -> None:
        config = self.config
        self._status_writer = StatusWriter(self.source, config.status.prefix + config.name,
                                           config.status, self.status_document,
                                           self.status_fingerprint,
                                           self.metrics.status_written.set_to_current_time,
                                           self.metrics.status_current.set_to_current_time)
        self._status_writer.start()

    def _stop_status(self) -> None:
        """The writer revokes its lease on the way out: the document goes at once."""
        if self._status_writer is not None:
            self._status_writer.stop()
            self._status_writer.join(STATUS_STOP_TIMEOUT)
            if self._status_writer.is_alive():
                log.error("status writer did not stop within %.0fs (etcd not answering); "
                          "leaving it", STATUS_STOP_TIMEOUT)
            self._status_writer = None

    def _start_metrics(self) -> None:
        listen = self.config.metrics_listen
        if listen is None:
            return
        try:
            self._metrics_server = MetricsServer(self.metrics, listen, self.health,
                                                 self.status_document)
        except OSError as exc:
            log.error("metrics.listen %s:%d: cannot listen: %s; metrics disabled",
                      listen[0], listen[1], exc.strerror)
            return
        self._metrics_server.start()

    def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None

    # -- reload -----------------------------------------------------------------------

    def reload(self) -> None:
        """Apply config.yaml again; a config that fails keeps the running one."""
        try:
            # Strict: a misspelt setting would silently reset the real one to its default.
            new = load(self.config_path, strict=True)
            sink = open_sink(new.kafka, HOST, self._kafka_error, new.name) \
                if self._sink_changed(new) else self.sink
        except ConfigError as exc:
            self.metrics.config_reloads.labels("error").inc()
            log.error("config reload refused, keeping the running config: %s", exc)
            return
        if new == self.config:
            self.metrics.config_reloads.labels("unchanged").inc()
            log.info("config reloaded: unchanged")
            return
        changes = describe_changes(self.config, new)
        keys_added = set(new.etcd.keys) - set(self.config.etcd.keys)
        before = self.workers.keys()
        restarted = self._apply(new, sink)
        self._reconcile_workers()
        after = self.workers.keys()
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded from %s: %s; workers: %d started, %d stopped%s%s",
                 self.config_path, changes, len(after - before), len(before - after),
                 f", {len(before & after)} restarted" if restarted else "",
                 " (files of added keys start as their values are read)" if keys_added else "")

    def _sink_changed(self, new: Config) -> bool:
        """Kafka settings, or with exactly-once the name: it is the transactional id."""
        old = self.config
        return new.kafka != old.kafka or (new.kafka.exactly_once and new.name != old.name)

    def _apply(self, new: Config, sink: Sink) -> bool:
        """True when the running workers were restarted (their settings changed)."""
        old = self.config
        self.config = new
        if new.log != old.log:
            logs.setup(new.log.level, new.log.format)
        if new.state_dir != old.state_dir:
            log.warning("state_dir changed to %s: takes effect at the next start", new.state_dir)
        if new.files.max_files != old.files.max_files:
            size_futex_hash(new.files.max_files)
        if new.metrics_listen != old.metrics_listen:
            self._stop_metrics()
            self._start_metrics()
        restart = sink is not self.sink or new.allowed_paths != old.allowed_paths \
            or replace(new.files, max_files=0) != replace(old.files, max_files=0) \
            or new.journal != old.journal
        if restart:
            self.workers.stop_all()
            if sink is not self.sink:
                self.sink.close(timeout=2.0)
                self.sink = self._adopt_sink(sink)
                log.info("kafka settings changed: producer rebuilt")
        if new.allowed_paths != old.allowed_paths:
            self.discovery.close()
            self.discovery = self._new_discovery(new)
        etcd_changed = replace(new.etcd, keys=()) != replace(old.etcd, keys=())
        if etcd_changed or new.allowed_paths != old.allowed_paths:
            self.source = EtcdSource(new.etcd)
            self.managers.stop_all()
        if etcd_changed or new.name != old.name or new.status != old.status:
            self.identity = replace(self.identity, name=new.name)
            self._stop_status()
            self._start_status()
        self.managers.reconcile({key: key for key in new.etcd.keys})
        with self._lock:
            for key in set(self._declared) - set(new.etcd.keys) - {STATIC_OWNER}:
                del self._declared[key]
        self.declare(STATIC_OWNER, new.logs)
        return restart

    # -- shutdown ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop reading, wait for acknowledgements, save offsets, close the clients."""
        log.info("agent stopping")
        self._stop_status()
        self.managers.stop_all()
        self.workers.stop_all()
        self._writer.stop()
        self._writer.join(5)
        self._writer.flush()
        self.sink.close(timeout=2.0)
        self.discovery.close()
        if self._config_subscription is not None:
            self.watcher.unsubscribe(self._config_subscription)
        self.watcher.stop()
        self._stop_metrics()
        self._state_lock.release()
        log.info("agent stopped")
