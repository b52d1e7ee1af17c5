"""One-for-one supervision: reconcile a desired set of children, restart crashed ones.

Shaped after OTP's supervisor: a child removed on purpose is stopped and never
restarted; a child that dies is restarted alone, after a backoff deadline that the
owner's loop checks (no sleeping), and the delay grows with consecutive crashes and
resets once the child has run stably. A dying thread reports its own exit, so the
owner's loop looks only at children that ended, never at thousands of idle ones.

Children start through a gate, one at a time (see Supervisor._gate_closed): ten
thousand threads created and starting at once spend their time handing the GIL around.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Iterator, Mapping, TypeVar

from logship.errors import LogshipError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")

STARTING_AT_ONCE = 1
"""Children past the start gate at once. One: each start-up is mostly system calls, each
of which hands the GIL over, and every other thread starting at the same time makes those
hand-overs slower (10,000 workers: 33 s at one, 51 s at eight). A start-up that hangs (an
open on a dead NFS mount) holds back the starts behind it, as it would at any number."""
STOPPING_AT_ONCE = 100
GATE_WAIT = 1.0


class Service(threading.Thread):
    """A thread with one stop protocol: `stop()` sets an Event the loop checks."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.on_exit: Callable[[], None] = lambda: None
        # Held by serve() around its start-up (a worker: opening its file where it left
        # off); the supervisor lets STARTING_AT_ONCE children through it at a time.
        self.start_gate: AbstractContextManager = nullcontext()

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
        self._gate = threading.BoundedSemaphore(STARTING_AT_ONCE)
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
        new = [_Child(key, spec, backoff=self._backoff()) for key, spec in desired.items()
               if key not in self._children]
        self._children.update((child.key, child) for child in new)
        self._start_all(new)

    def supervise(self, now: float | None = None) -> None:
        """Notice children that ended and restart those whose backoff deadline has passed."""
        now = time.monotonic() if now is None else now
        while self._exited:
            child, service = self._exited.popleft()
            if child.service is service:          # not one stopped on purpose
                self._crashed(child, service.failure, now)
        due = [c for c in self._waiting.values() if now >= c.restart_at]
        for child in due:
            del self._waiting[child.key]
        self._start_all(due)

    def stop_all(self) -> None:
        self._stop(list(self._children.values()))
        self._children.clear()
        self._waiting.clear()

    def _start_all(self, children: list[_Child[K, S]]) -> None:
        if not children:
            return
        with self._gate_closed():
            refused = [child for child in children if not self._start(child)]
        if refused:
            log.error("%s: %d could not start (%s): this process has %d threads; raise its "
                      "limits (systemd TasksMax=, ulimit -u, sysctl kernel.threads-max and "
                      "vm.max_map_count); they are retried with backoff", self.kind,
                      len(refused), refused[0].last_error, threading.active_count())

    @contextmanager
    def _gate_closed(self) -> Iterator[None]:
        """Creating a thread waits for the new one to take the GIL and give it back: while
        the threads created just before are busy starting up, that wait took a GIL switch
        interval (5 ms) or more per thread, growing with their number, and 10,000 workers
        took minutes to start. So the gate is held closed while a round of children is
        created: each waits at it, blocked on a lock rather than runnable, and once all
        exist they pass STARTING_AT_ONCE at a time, each letting in the next when its
        start-up is done. A start-up that does not end (a hung open) leaves the gate open
        rather than stop the owner's loop: closing it waits GATE_WAIT at most."""
        held = sum(self._gate.acquire(timeout=GATE_WAIT) for _ in range(STARTING_AT_ONCE))
        try:
            yield
        finally:
            if held:
                self._gate.release(held)

    def _start(self, child: _Child[K, S]) -> bool:
        """A child that cannot even be built counts as crashed: the supervisor's owner
        must survive any one child's bad spec. False when no thread could be had for it
        (the process's limit): said once for all of them, by the caller."""
        self.changes += 1
        child.started = time.monotonic()
        try:
            service = self._factory(child.spec)
        except Exception as exc:
            self._crashed(child, exc, child.started)
            return True
        service.on_exit = lambda: self._exited.append((child, service))
        service.start_gate = self._gate
        try:
            service.start()
        except RuntimeError as exc:         # "can't start new thread"
            self._crashed(child, exc, child.started, quiet=True)
            return False
        child.service = service
        return True

    def _crashed(self, child: _Child[K, S], failure: BaseException | None, now: float,
                 quiet: bool = False) -> None:
        self.changes += 1
        delay = child.backoff.next_delay(now - child.started)
        child.service = None
        child.restart_at = now + delay
        child.last_error = str(failure) if failure is not None else "exited unexpectedly"
        self._waiting[child.key] = child
        if not quiet:
            self._say_crashed(child, failure, delay)
        self._on_restart(child.spec)

    def _say_crashed(self, child: _Child[K, S], failure: BaseException | None,
                     delay: float) -> None:
        if failure is None:
            log.error("%s %s exited unexpectedly; restarting in %.1fs", self.kind, child.spec, delay)
        elif isinstance(failure, LogshipError):
            log.error("%s %s failed: %s; restarting in %.1fs", self.kind, child.spec, failure, delay)
        else:
            log.error("%s %s crashed; restarting in %.1fs", self.kind, child.spec, delay,
                      exc_info=failure)

    def _stop(self, children: list[_Child[K, S]]) -> None:
        """Ask a wave of children to stop before joining any of them, so that their
        shutdowns (a worker waits for its last acknowledgements) overlap; waves, so that
        ten thousand threads do not all wake at once to hand the GIL around: asked all
        at once, half of 10,000 workers had not stopped after 5 s."""
        self.changes += 1
        services = [c.service for c in children if c.service is not None]
        for start in range(0, len(services), STOPPING_AT_ONCE):
            self._stop_wave(services[start:start + STOPPING_AT_ONCE])
        for child in children:
            child.service = None

    def _stop_wave(self, services: list[Service]) -> None:
        for service in services:
            service.stop()
        deadline = time.monotonic() + self._stop_timeout
        for service in services:
            service.join(max(0.0, deadline - time.monotonic()))
            if service.is_alive():
                log.error("%s thread %s did not stop within %.0fs; leaving it",
                          self.kind, service.name, self._stop_timeout)
