"""The books of one follower: what it has read and sent and Kafka has not acknowledged yet.

A follower (a file's worker, the journal's) reads, hands batches to the sink and keeps
the books here: the batches in flight in send order, counted against the follower's own
bounds and the agent-wide budget (kafka.buffer_bytes); which of them are acknowledged, so
that a position moves only over an unbroken run of them; what a transaction that has
only to be committed gives back early; and all of it, given back at once, when what was
sent is void (an aborted transaction) or the follower stops. Pure logic: no thread, no
Kafka, no file; the follower's thread is its only caller (Vector's finalizers,
Filebeat's acker keep the same books apart from the loop).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from logship.sink import InFlightBudget, Records, Sent

S = TypeVar("S")


@dataclass
class InFlight(Generic[S]):
    """One sent batch, acknowledged when its delivery is done: `source` is what it was read
    from (a followed file), `end` the position in it after the batch. Its lines stay
    referenced for the rare resend of records the broker refused."""

    source: S
    end: Any
    lines: list[bytes]
    offsets: list[Any]
    sent: Sent
    cost: int                         # memory, against the in-flight bounds
    records: Records | None = None    # keys and headers, where each record has its own
    sent_at: float = field(default_factory=time.monotonic)
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(map(len, self.lines))

    def done(self) -> bool:
        delivery = self.sent.delivery
        return delivery is None or delivery.done()

    def settled_by_broker(self) -> bool:
        delivery = self.sent.delivery
        return delivery is None or delivery.handed_off()


@dataclass(frozen=True)
class Bounds:
    """A follower's own bounds on what it has in flight."""

    lines: int
    bytes: int


class Ledger(Generic[S]):
    """What one follower has in flight, against its bounds and the agent's budget.

    Memory is counted from a read on: a read first reserves an estimate from the budget
    (`reserve`), the lines it queued take their true cost (`queue`), each batch sent
    moves its share from queued to in flight (`track`), and an acknowledged batch gives it
    back (`settle`). The budget holds back reading, never the sending of what was read."""

    def __init__(self, budget: InFlightBudget, record_cost: int, bounds: Bounds) -> None:
        self._budget = budget
        self._record_cost = record_cost
        self._bounds = bounds
        self._pending: deque[InFlight[S]] = deque()
        self._lines = 0             # handed to the client and not acknowledged
        self._bytes = 0             # the cost of the batches in flight
        # The leading batches that only await their commit (exactly-once), and their
        # lines: the client's share of their cost has been given back.
        self._handed_off = 0
        self._handed_off_lines = 0
        self._queued = 0            # the cost of queued lines not sent yet
        self._reserved = 0          # for the next read

    def __bool__(self) -> bool:
        return bool(self._pending)

    @property
    def lines(self) -> int:
        return self._lines

    @property
    def oldest_sent_at(self) -> float | None:
        return self._pending[0].sent_at if self._pending else None

    def cost(self, lines: list[bytes]) -> int:
        """The memory lines cost from their read to their acknowledgement."""
        return sum(map(len, lines)) + self._record_cost * len(lines)

    def reserve(self, estimate: int, wake: Callable[[], None]) -> bool:
        """Budget for the next read, or `wake` once there is room; True while reserved."""
        if not self._reserved and self._budget.reserve(estimate, wake):
            self._reserved = estimate
        return self._reserved > 0

    def unreserve(self) -> None:
        """What a read reserved and did not queue goes back."""
        self._budget.give(self._reserved)
        self._reserved = 0

    def queue(self, lines: list[bytes]) -> None:
        """Lines read and queued to send: their cost replaces the read's reservation."""
        cost = self.cost(lines)
        self._budget.take(cost - self._reserved)
        self._queued += cost
        self._reserved = 0

    def track(self, batch: InFlight[S]) -> None:
        """A batch sent (or, with no lines, one that only moves the position)."""
        self._pending.append(batch)
        self._lines += batch.sent.handed_over
        self._bytes += batch.cost
        self._queued -= batch.cost

    def full(self) -> bool:
        """The follower's own bound: what may be sent. Lines the broker holds and that
        only await their transaction's commit are bounded by the transaction."""
        return (self._lines - self._handed_off_lines >= self._bounds.lines
                or self._bytes >= self._bounds.bytes)

    def held_by_commit(self) -> bool:
        """Exactly-once: only a commit can free what holds the follower back, every batch
        it has in flight being settled by the broker and awaiting its commit. While the
        broker has some to settle, their acknowledgements wake the follower and give back
        most of their cost (the client's share): a commit hurried then stalled every
        follower for little (one busy file on confluent-kafka hurried one every 14,000
        lines, twice per transaction_interval)."""
        return 0 < self._handed_off == len(self._pending)

    def settle(self) -> list[InFlight[S]]:
        """The acknowledged batches at the front, in send order, their cost given back:
        a position never passes a batch that is not acknowledged."""
        settled = []
        while self._pending and self._pending[0].done():
            batch = self._pending.popleft()
            self._lines -= batch.sent.handed_over
            self._bytes -= batch.cost
            if self._handed_off:                # the popped batch led the handed-off ones
                self._handed_off -= 1
                self._handed_off_lines -= batch.sent.handed_over
            self._budget.give(batch.cost)
            settled.append(batch)
        self._give_back_handed_off()
        return settled

    def _give_back_handed_off(self) -> None:
        """Exactly-once: a batch the broker has settled waits for its transaction's commit
        to count as acknowledged, but the client no longer holds it. Its client's share of
        the memory bound goes back now, and its lines leave the follower's bound: a busy
        file would otherwise wait for a commit every few thousand lines. Only the leading
        settled batches are given back, so that they stay a prefix of the deque; at least
        once, a batch is popped the moment it is settled, so there is none."""
        for index in range(self._handed_off, len(self._pending)):
            batch = self._pending[index]
            if not batch.settled_by_broker():
                return
            share = self._record_cost * batch.sent.handed_over
            batch.cost -= share
            self._bytes -= share
            self._budget.give(share)
            self._handed_off += 1
            self._handed_off_lines += batch.sent.handed_over

    def void(self) -> None:
        """What was sent and queued is void (an aborted transaction): all of it goes back,
        and the follower reads again from its committed positions."""
        self._budget.give(self._bytes + self._queued)
        self._pending.clear()
        self._lines = self._bytes = self._queued = 0
        self._handed_off = self._handed_off_lines = 0

    def close(self) -> None:
        """The follower stops: everything it still holds goes back to the budget."""
        self._budget.give(self._bytes + self._queued + self._reserved)
        self._bytes = self._queued = self._reserved = 0
