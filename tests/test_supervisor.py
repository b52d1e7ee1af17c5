"""Supervision with real threads: reconcile, restart with backoff, stop."""

import threading

from logship.errors import SourceError
from harness import wait_until
from logship.supervisor import Backoff, Service, Supervisor


def test_backoff_doubles_to_a_cap_and_resets_after_a_stable_run():
    backoff = Backoff(base=0.5, cap=4.0, stable_after=60.0)
    assert [backoff.next_delay(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.next_delay(61.0) == 0.5


class Child(Service):
    def __init__(self, spec: str, crash: dict, started: list) -> None:
        super().__init__(name=f"child:{spec}")
        self.crash = crash.setdefault(spec, threading.Event())
        started.append(spec)

    def serve(self) -> None:
        while not self.stopping.wait(0.01):
            if self.crash.is_set():
                self.crash.clear()
                raise SourceError(f"{self.name} broke")


def test_reconcile_restart_and_stop():
    crash, started, restarts = {}, [], []
    sup = Supervisor("child", lambda spec: Child(spec, crash, started), restarts.append,
                     backoff=lambda: Backoff(base=0.5))
    sup.reconcile({"a": "a", "b": "b"})
    sup.reconcile({"a": "a", "b": "b"})                      # running children left alone
    assert sorted(started) == ["a", "b"]
    child = sup._children["a"]
    crash["a"].set()
    wait_until(lambda: not child.service.is_alive(), 5, "child a to crash")
    now = child.started + 1.0
    sup.supervise(now)
    assert restarts == ["a"] and child.service is None
    sup.supervise(now + 0.4)                                  # backoff not over yet
    assert child.service is None
    sup.supervise(now + 0.5)
    assert child.service.is_alive() and started == ["a", "b", "a"]
    sup.reconcile({"b": "b"})                                 # removed on purpose: not restarted
    assert sup.keys() == {"b"} and child.service is None
    survivor = sup._children["b"].service
    sup.stop_all()
    assert not survivor.is_alive() and len(sup) == 0
