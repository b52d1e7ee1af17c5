"""The process-wide settings of a thread-per-file agent, on this machine's glibc and kernel."""

import ctypes
import errno
import os
import subprocess
import sys

from logship.process import PR_FUTEX_HASH, YOUNG_OBJECTS, size_futex_hash

PR_FUTEX_HASH_GET_SLOTS = 2

ARENAS_AFTER_EIGHT_THREADS = """
import ctypes, threading
from logship.process import cap_malloc_arenas
if CAP:
    cap_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
held, ready = [], threading.Barrier(8)
def allocate():
    ready.wait()
    held.append(libc.malloc(4096))
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def _arenas(cap: bool, env: dict[str, str] | None = None) -> int:
    """glibc's own report (malloc_stats, on stderr) of the arenas 8 threads left."""
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", f"CAP = {cap}\n" + ARENAS_AFTER_EIGHT_THREADS],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={**environ, **(env or {})})
    return done.stderr.count("Arena ")


def test_threads_share_two_malloc_arenas_unless_the_environment_says_otherwise():
    assert _arenas(cap=False) > 2       # glibc's default (eight per CPU) fails the next line
    assert _arenas(cap=True) <= 2
    assert _arenas(cap=True, env={"MALLOC_ARENA_MAX": "4"}) > 2


def test_the_futex_hash_gets_a_slot_per_thread_where_each_process_has_its_own(caplog):
    """Linux 6.16+ (the kernel CI runs on): 10,000 files and the other threads get 16,384
    slots, not the 16 of two CPUs. An older kernel has no hash per process and refuses
    the call: quietly, since its shared hash is what the agent always had."""
    libc = ctypes.CDLL(None, use_errno=True)
    size_futex_hash(10_000)
    slots = libc.prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0)
    if slots == -1:
        assert ctypes.get_errno() == errno.EINVAL
    else:
        assert slots == 16_384
    size_futex_hash(100)
    assert libc.prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0) in (-1, 2048)
    assert not caplog.records


def test_cycles_are_looked_for_after_50000_new_objects_not_700():
    """In a process of its own: the setting is the interpreter's, for the whole process."""
    script = ("import gc; from logship.process import collect_cycles_less; "
              "print(gc.get_threshold()); collect_cycles_less(); print(gc.get_threshold())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines() == ["(700, 10, 10)", f"({YOUNG_OBJECTS}, 10, 10)"]
