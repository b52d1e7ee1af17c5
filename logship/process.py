"""What the C library, the kernel and Python's cycle collector are told about a process
of thousands of threads and of records in flight.

One thread per followed file is the design; glibc and Linux size some of their tables
by the number of CPUs, not of threads, and Python collects cycles by a count of objects
made, not by what it finds; each was measured to cost a busy or an idle agent dearly
with the defaults (docs/performance.md). Each setting here is asked for once, before (or
as) the threads it concerns exist; where the platform has no such setting the call is
refused and nothing changes.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
MALLOC_ARENAS = 2
PR_FUTEX_HASH = 78
PR_FUTEX_HASH_SET_SLOTS = 1
THREADS_BESIDE_CHILDREN = 1024
YOUNG_OBJECTS = 50_000          # Python's default: 700

_libc = ctypes.CDLL(None, use_errno=True)


def cap_malloc_arenas() -> None:
    """Before the first thread. glibc gives threads that allocate at the same time arenas
    of their own, up to eight per CPU, and what is freed in one arena is reused by that
    one only. The agent's Python threads allocate one at a time (the GIL), so more arenas
    buy it little; but a record allocated on a worker's thread and freed on one of the
    Kafka client's left memory behind in each: 100 busy files peaked 10 to 16 MiB higher
    on confluent-kafka, 14 MiB on kafka-python. MALLOC_ARENA_MAX in the environment wins."""
    if "MALLOC_ARENA_MAX" not in os.environ and hasattr(_libc, "mallopt"):
        _libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def collect_cycles_less() -> None:
    """Python looks for reference cycles each time 700 more objects were made than freed,
    and each look walks every object of the generations it collects. kafka-python makes
    a future and its callbacks for every record, alive until Kafka acknowledges it, so
    the looks came every few hundred records, found nothing (the futures' cycles are
    broken when they complete) and walked everything in flight: 14% of the agent's CPU
    with one busy file and 18 to 20% with 100, whose full collections took 150 ms
    against 70. After 50,000 objects it is under 1%. The data path makes no cycles of
    its own (the looks of a whole run found the same 654 objects with one busy file or
    100), so what waits for a later look is little."""
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])


def size_futex_hash(children: int) -> None:
    """Give the kernel's futex hash a slot per thread this process will hold.

    Every wait on a lock, an Event or the GIL queues the thread in a hash bucket, and
    every wake-up walks its bucket. Linux 6.16 and later give each threaded process a
    hash of its own, sized by the CPU count and not by the threads: 16 buckets on two
    CPUs. With 10,000 idle workers a bucket held some 600 waiters, and every wake-up in
    the process (the GIL passed on, gRPC's timers, a worker's batch) cost three times as
    much as with 100 workers. Older kernels share one hash sized for the whole machine
    and refuse this call; that is the cost we had before, and nothing to say."""
    slots = 1 << (children + THREADS_BESIDE_CHILDREN - 1).bit_length()
    if _libc.prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, ctypes.c_ulong(slots),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0:
        return
    failure = ctypes.get_errno()
    if failure != errno.EINVAL:
        log.warning("the kernel's futex hash could not be given %d slots (%s): every "
                    "wake-up costs more while thousands of files are followed", slots,
                    os.strerror(failure))
