"""One-for-one supervision: reconcile a desired set of children, restart crashed ones.

Shaped after OTP's supervisor: a child removed on purpose is stopped and never
restarted; a child that dies is restarted alone, after a backoff deadline that the
owner's loop checks (no sleeping), and the delay grows with consecutive crashes and
resets once the child has run stably. A dying thread reports its own exit, so the
owner's loop looks only at children that ended, never at thousands of idle ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Mapping, TypeVar

from logship.errors import LogshipError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")


class Service(threading.Thread):
    """A thread with one stop protocol: `stop()` sets an Event the loop checks."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.on_exit: Callable[[], None] = lambda: None

    def run(self) -> None:
        try:
            self.serve()
        except BaseException as exc:  # recorded for the supervisor, which logs it
            self.failure = exc
        finally:
            self.on_exit()

    def serve(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()

    def retry(self, attempt: Callable[[], None], errors: tuple[type[BaseException], ...],
              on_error: Callable[[BaseException, float], None], backoff: Backoff) -> None:
        """Run `attempt` until it returns or the service is stopped; after each error,
        report it with the delay and wait that long (a stop cuts the wait short)."""
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                attempt()
                return
            except errors as exc:
                delay = backoff.next_delay(time.monotonic() - started)
                on_error(exc, delay)
                self.stopping.wait(delay)


@dataclass
class Backoff:
    """Exponential restart delay: base doubling to cap, reset after a stable run."""

    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 60.0
    failures: int = 0

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.stable_after:
            self.failures = 0
        delay = min(self.base * 2 ** self.failures, self.cap)
        self.failures += 1
        return delay


@dataclass(eq=False)
class _Child(Generic[K, S]):
    key: K
    spec: S
    service: Service | None = None
    started: float = 0.0
    restart_at: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    last_error: str | None = None


@dataclass(frozen=True)
class ChildState(Generic[S]):
    """A child as a status report shows it: running (service set) or awaiting restart."""

    spec: S
    service: Service | None
    last_error: str | None


class Supervisor(Generic[K, S]):
    """Owns a set of Service children; only its owner's thread calls its methods, but
    for states()."""

    def __init__(self, kind: str, factory: Callable[[S], Service],
                 on_restart: Callable[[S], None], backoff: Callable[[], Backoff] = Backoff,
                 stop_timeout: float = 5.0) -> None:
        self.kind = kind
        self._factory = factory
        self._on_restart = on_restart
        self._backoff = backoff
        self._stop_timeout = stop_timeout
        self._children: dict[K, _Child[K, S]] = {}
        self._waiting: dict[K, _Child[K, S]] = {}
        # Appended by the dying threads themselves (deque appends are thread-safe).
        self._exited: deque[tuple[_Child[K, S], Service]] = deque()
        self.changes = 0        # bumped on every start, crash and stop: for cheap polling

    def __len__(self) -> int:
        return len(self._children)

    def keys(self) -> set[K]:
        return set(self._children)

    def states(self) -> list[ChildState[S]]:
        """Safe from another thread (a status report), like running(): a copy of plain
        attribute reads, never a wait on the owner."""
        return [ChildState(c.spec, c.service, c.last_error)
                for c in list(self._children.values())]

    def service(self, key: K) -> Service | None:
        child = self._children.get(key)
        return child.service if child is not None else None

    def running(self) -> list[Service]:
        return [c.service for c in list(self._children.values()) if c.service is not None]

    def reconcile(self, desired: Mapping[K, S]) -> None:
        """Stop children no longer desired, restart those whose spec changed, start new
        ones; the others are left alone."""
        removed = [key for key, child in self._children.items()
                   if key not in desired or desired[key] != child.spec]
        for key in removed:
            self._waiting.pop(key, None)
        self._stop([self._children.pop(key) for key in removed])
        for key, spec in desired.items():
            if key not in self._children:
                child = _Child(key, spec, backoff=self._backoff())
                self._start(child)
                self._children[key] = child

    def supervise(self, now: float | None = None) -> None:
        """Notice children that ended and restart those whose backoff deadline has passed."""
        now = time.monotonic() if now is None else now
        while self._exited:
            child, service = self._exited.popleft()
            if child.service is service:          # not one stopped on purpose
                self._crashed(child, service.failure, now)
        for child in [c for c in self._waiting.values() if now >= c.restart_at]:
            del self._waiting[child.key]
            self._start(child)

    def stop_all(self) -> None:
        self._stop(list(self._children.values()))
        self._children.clear()
        self._waiting.clear()

    def _start(self, child: _Child[K, S]) -> None:
        """A child that cannot even be built counts as crashed: the supervisor's owner
        must survive any one child's bad spec."""
        self.changes += 1
        child.started = time.monotonic()
        try:
            service = self._factory(child.spec)
        except Exception as exc:
            self._crashed(child, exc, child.started)
            return
        service.on_exit = lambda: self._exited.append((child, service))
        child.service = service
        service.start()

    def _crashed(self, child: _Child[K, S], failure: BaseException | None, now: float) -> None:
        self.changes += 1
        delay = child.backoff.next_delay(now - child.started)
        child.service = None
        child.restart_at = now + delay
        child.last_error = str(failure) if failure is not None else "exited unexpectedly"
        self._waiting[child.key] = child
        if failure is None:
            log.error("%s %s exited unexpectedly; restarting in %.1fs", self.kind, child.spec, delay)
        elif isinstance(failure, LogshipError):
            log.error("%s %s failed: %s; restarting in %.1fs", self.kind, child.spec, failure, delay)
        else:
            log.error("%s %s crashed; restarting in %.1fs", self.kind, child.spec, delay,
                      exc_info=failure)
        self._on_restart(child.spec)

    def _stop(self, children: list[_Child[K, S]]) -> None:
        """Ask all to stop before joining any, so their shutdowns overlap."""
        self.changes += 1
        services = [c.service for c in children if c.service is not None]
        for service in services:
            service.stop()
        deadline = time.monotonic() + self._stop_timeout
        for service in services:
            service.join(max(0.0, deadline - time.monotonic()))
            if service.is_alive():
                log.error("%s thread %s did not stop within %.0fs; leaving it",
                          self.kind, service.name, self._stop_timeout)
        for child in children:
            child.service = None
