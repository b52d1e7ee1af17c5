"""The in-flight ledger alone: what may be sent, when a position may move, what goes back
to the agent-wide budget, with fake deliveries (no thread, no Kafka, no file)."""

from __future__ import annotations

from dataclasses import dataclass

from logship.ledger import Bounds, InFlight, Ledger
from logship.sink import InFlightBudget, Sent

RECORD_COST = 10


@dataclass
class Delivery:
    """A batch's fate, as a test decides it."""

    acknowledged: bool = False
    settled: bool = False           # the broker holds none of it (exactly-once: awaits commit)

    def done(self) -> bool:
        return self.acknowledged

    def handed_off(self) -> bool:
        return self.settled or self.acknowledged

    def failures(self) -> list:
        return []


def ledger(budget: int = 10_000, lines: int = 100, nbytes: int = 10_000) -> Ledger[str]:
    return Ledger(InFlightBudget(budget), RECORD_COST, Bounds(lines, nbytes))


def send(books: Ledger[str], end: int, count: int = 2, source: str = "a.log") -> Delivery:
    """Read `count` lines of 5 bytes and send them in one batch ending at `end`."""
    lines = [b"line%d" % (end * 10 + i) for i in range(count)]
    delivery = Delivery()
    books.queue(lines)
    books.track(InFlight(source, end, lines, list(range(count)),
                         Sent(0, delivery=delivery, count=count), books.cost(lines)))
    return delivery


def test_a_position_moves_only_over_an_unbroken_run_of_acknowledged_batches():
    books = ledger()
    first, second, third = send(books, 10), send(books, 20), send(books, 30)
    second.acknowledged = third.acknowledged = True
    assert books.settle() == [], "the first is not acknowledged"
    first.acknowledged = True
    assert [batch.end for batch in books.settle()] == [10, 20, 30]
    assert not books and books.lines == 0


def test_memory_is_counted_from_the_read_and_given_back_on_acknowledgement():
    budget = InFlightBudget(10_000)
    books = Ledger(budget, RECORD_COST, Bounds(100, 10_000))
    assert books.reserve(1000, lambda: None) and budget.used == 1000
    delivery = send(books, 10)
    assert budget.used == books.cost([b"line100", b"line101"]) == 2 * (7 + RECORD_COST)
    delivery.acknowledged = True
    books.settle()
    assert budget.used == 0


def test_a_read_that_queues_nothing_gives_its_reservation_back():
    budget = InFlightBudget(10_000)
    books = Ledger(budget, RECORD_COST, Bounds(100, 10_000))
    books.reserve(1000, lambda: None)
    books.unreserve()
    assert budget.used == 0
    assert books.reserve(500, lambda: None) and budget.used == 500


def test_a_full_budget_holds_back_the_read_and_wakes_the_follower_once_there_is_room():
    budget = InFlightBudget(100)
    other = Ledger(budget, RECORD_COST, Bounds(100, 10_000))
    books = Ledger(budget, RECORD_COST, Bounds(100, 10_000))
    assert other.reserve(150, lambda: None)
    woken = []
    assert not books.reserve(50, lambda: woken.append(True))
    other.unreserve()
    assert woken == [True] and books.reserve(50, lambda: None)


def test_the_followers_own_bounds_in_lines_and_in_bytes():
    by_lines = ledger(lines=4)
    send(by_lines, 10)
    assert not by_lines.full()
    send(by_lines, 20)
    assert by_lines.full()
    by_bytes = ledger(nbytes=2 * (7 + RECORD_COST))
    send(by_bytes, 10)
    assert by_bytes.full()


def test_batches_that_only_await_their_commit_give_the_clients_share_back_early():
    budget = InFlightBudget(10_000)
    books = Ledger(budget, RECORD_COST, Bounds(4, 10_000))
    first, second = send(books, 10), send(books, 20)
    assert books.full() and not books.held_by_commit()
    first.settled = True
    assert books.settle() == []
    assert not books.full(), "its lines left the bound"
    assert budget.used == 2 * 7 + 2 * (7 + RECORD_COST), "the client's share is back"
    assert not books.held_by_commit(), "the broker still holds the second"
    second.settled = True
    books.settle()
    assert books.held_by_commit(), "only a commit frees the follower now"
    first.acknowledged = second.acknowledged = True
    assert [batch.end for batch in books.settle()] == [10, 20] and budget.used == 0


def test_an_aborted_transaction_gives_everything_back_and_a_stop_too():
    budget = InFlightBudget(10_000)
    books = Ledger(budget, RECORD_COST, Bounds(100, 10_000))
    send(books, 10)
    books.queue([b"queued and not sent"])
    books.void()
    assert budget.used == 0 and not books and books.lines == 0
    books.reserve(1000, lambda: None)
    send(books, 20)
    books.close()
    assert budget.used == 0


def test_a_batch_of_no_records_moves_the_position_in_its_turn():
    books = ledger()
    first = send(books, 10)
    books.track(InFlight("a.log", 15, [], [], Sent(0), 0))     # all filtered out
    assert books.settle() == []
    first.acknowledged = True
    assert [batch.end for batch in books.settle()] == [10, 15]
