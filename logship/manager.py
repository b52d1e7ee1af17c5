"""One thread per etcd key: read it, watch it from the read's revision, declare targets.

The manager never touches workers itself; it declares the key's targets to the agent,
which runs one worker per (path, topic) across all keys. While etcd is unreachable the
last declared targets stay in force, so running workers keep shipping.
"""

from __future__ import annotations

import logging
import queue
from typing import Callable

from logship.errors import EtcdUnavailable, LogshipError, SpecError
from logship.etcd_source import (ETCD_ERRORS, WAKE, EtcdSession, EtcdSource, describe,
                                  reconnect_backoff)
from logship.logs import plural
from logship.metrics import Metrics
from logship.spec import Target, parse_value
from logship.supervisor import Service

log = logging.getLogger(__name__)

Declare = Callable[[str, tuple[Target, ...]], None]


class Manager(Service):
    def __init__(self, key: str, source: EtcdSource, allowed_paths: tuple[str, ...],
                 declare: Declare, metrics: Metrics, probe_interval: float) -> None:
        super().__init__(name=f"manager:{key}")
        self.key = key
        self._source = source
        self._allowed = allowed_paths
        self._declare = declare
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._session: EtcdSession | None = None

    def stop(self) -> None:
        super().stop()
        session = self._session
        if session is not None:
            session.events.put(WAKE)

    def serve(self) -> None:
        self.retry(self._follow, (LogshipError, *ETCD_ERRORS), self._failed, reconnect_backoff())

    def _failed(self, exc: BaseException, delay: float) -> None:
        self._metrics.etcd_errors.labels(self.key).inc()
        log.warning("key=%s etcd: %s; running workers keep shipping; retrying in %.1fs",
                    self.key, describe(exc), delay)

    def _follow(self) -> None:
        """Read, then watch from revision + 1 so no change between the two is missed."""
        session = self._source.connect()
        self._session = session
        try:
            value, revision = session.read(self.key)
            session.watch(self.key, revision + 1)
            log.info("key=%s watching on %s from revision %d", self.key, session.endpoint,
                     revision + 1)
            self._apply(value)
            self._consume(session)
        except ETCD_ERRORS as exc:
            raise EtcdUnavailable(session.explain(exc)) from None
        finally:
            self._session = None
            session.close()

    def _consume(self, session: EtcdSession) -> None:
        while not self.stopping.is_set():
            try:
                item = session.events.get(timeout=self._probe_interval)
            except queue.Empty:
                session.probe()
                continue
            if item is WAKE:
                return
            if isinstance(item, BaseException):
                raise item
            self._apply(item.value)

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            log.info("key=%s is absent: none of its files are shipped", self.key)
            self._declare(self.key, ())
            return
        try:
            parsed = parse_value(value, self._allowed)
        except SpecError as exc:
            self._metrics.value_errors.labels(self.key).inc()
            log.error("key=%s value refused: %s; its running workers are left as they were",
                      self.key, exc)
            return
        for reason in parsed.rejected:
            self._metrics.value_errors.labels(self.key).inc()
            log.error("key=%s %s; entry ignored", self.key, reason)
        log.info("key=%s applied %s", self.key, plural(len(parsed.targets), "entry", "entries"))
        self._declare(self.key, parsed.targets)
