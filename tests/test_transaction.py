"""The transaction loop's own logic, with a fake client: what a commit writes, what an
abort voids, how positions read from Kafka meet those of state_dir. The same loop on real
brokers and both clients is in test_exactly_once_e2e."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from logship.checkpoint import CheckpointStore, FileCheckpoint
from logship.clients import check_settings
from logship.config import parse_config
from logship.errors import ConfigError
from logship.metrics import Metrics
from logship.sink import Envelope, Job, Sent, Sink, TransactionFailed, Transactions
from logship.transaction import (TransactionalSink, decode_positions, position_key,
                                 position_value)

BASE = {"etcd": {"endpoints": ["127.0.0.1:2379"], "keys": ["k"]},
        "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]}}


def cp(offset: int, ino: int = 1, path: str = "/var/log/a.log") -> FileCheckpoint:
    return FileCheckpoint(path, "t", 2049, ino, 0, "", offset)


class FakeClient(Transactions):
    """Records what the loop asks of a client; `fail_commit` makes the next commit fail,
    `unreadable` the next look at the offsets topic."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.positions: list[tuple[bytes, bytes | None]] = []
        self.fail_commit: TransactionFailed | None = None
        self.unreadable: TransactionFailed | None = None

    def init(self, timeout):
        self.calls.append("init")
        return True

    def begin(self):
        self.calls.append("begin")

    def produce_position(self, topic, partition, key, value):
        self.positions.append((key, value))

    def commit(self, timeout):
        self.calls.append("commit")
        failure, self.fail_commit = self.fail_commit, None
        if failure is not None:
            raise failure
        return True

    def abort(self, timeout):
        self.calls.append("abort")
        return True

    def renew(self):
        self.calls.append("renew")

    def positions_partitions(self, topic, timeout):
        failure, self.unreadable = self.unreadable, None
        if failure is not None:
            raise failure
        return 25

    def read_positions(self, topic, partition, timeout):
        return list(self.positions)


class FakeSink(Sink):
    """The client's records: every line handed over, acknowledged at once."""

    def _produce_job(self, job):
        return Sent(0, count=len(job.lines))

    def is_too_large(self, error):
        return False

    def is_topic_error(self, error):
        return False

    def explain_topic(self, topic, error):
        return None

    def recover(self, generation):
        pass

    def resend_alone(self, *args):
        raise AssertionError("not at exactly-once")

    def close(self, timeout):
        pass


@pytest.fixture
def sink(tmp_path):
    config = parse_config({**BASE, "kafka": {**BASE["kafka"], "delivery": "exactly-once"}},
                          tmp_path).kafka
    sink = TransactionalSink(FakeSink(config, b"h", lambda reason: None), FakeClient(), "web-01")
    sink._store = CheckpointStore(tmp_path)
    sink._metrics = Metrics()
    sink.read_positions()
    return sink


def job(sink, offset: int, lines: int = 2, woken: list | None = None) -> Job:
    wake = (lambda: woken.append(offset)) if woken is not None else (lambda: None)
    return Job("t", Envelope(None, ()), [b"x"] * lines, list(range(lines)), wake, cp(offset),
               sink.epoch)


def written(sink) -> dict[bytes, int | None]:
    return {key: json.loads(value)["offset"] if value else None
            for key, value in sink._client.positions}


def test_a_commit_writes_the_last_position_of_each_file_and_wakes_its_workers(sink):
    woken: list[int] = []
    first = sink.send(job(sink, 10, woken=woken))
    sink.send(job(sink, 20, woken=woken))
    assert not first.delivery.done(), "acknowledged only by the commit"
    sink.end_transaction()
    assert first.delivery.done() and woken == [10, 20]
    assert written(sink) == {position_key("web-01", cp(20)): 20}
    assert sink._client.calls == ["init", "begin", "commit"]


def test_commits_start_an_interval_after_the_last_began_also_when_none_is_open_yet(sink):
    """Right after a commit its workers, held back by it, have not opened the next
    transaction yet: the next commit is still due an interval after the last began."""
    sink.send(job(sink, 10))
    sink.end_transaction()
    began, interval = sink._commit_started, sink.config.transaction_interval
    assert sink.due_at(began + 0.03) == began + interval
    sink.send(job(sink, 20))
    assert sink.due_at(began + 0.05) == began + interval
    assert sink.due_at(began + interval + 0.1) == began + interval, "overdue: at once"


def test_with_nothing_open_after_the_interval_the_loop_looks_again_an_interval_later(sink):
    sink.send(job(sink, 10))
    sink.end_transaction()
    later = sink._commit_started + 5.0
    assert sink.due_at(later) == later + sink.config.transaction_interval


def test_an_abort_voids_the_batches_and_moves_the_epoch(sink):
    stale, epoch = job(sink, 10), sink.epoch
    sent = sink.send(stale)
    sink._client.fail_commit = TransactionFailed("broker said no")
    sink.end_transaction()
    assert sink.epoch == epoch + 1 and not sent.delivery.done()
    assert sink._client.calls[-2:] == ["commit", "abort"]
    assert sink.send(stale).count == 0, "a batch read before the abort is refused"
    assert sink.send(job(sink, 10)).count == 2


def test_a_fenced_producer_is_replaced_and_positions_are_read_again(sink):
    sink.send(job(sink, 10))
    sink._client.fail_commit = TransactionFailed("fenced", fenced=True)
    sink.end_transaction()
    assert not sink.ready and sink._client.calls[-1] == "renew"
    assert sink.send(job(sink, 10)).unavailable, "nothing is sent before positions are read"
    assert sink.take_back_after() > 0, "the id is left to the other producer a while"
    epoch = sink.epoch
    sink.read_positions()
    assert sink.ready and sink._client.calls[-1] == "init"
    assert sink.epoch == epoch + 1, "a worker that resumed before the positions does again"


def test_the_transactional_id_is_taken_once_per_producer_also_when_a_read_is_retried(sink):
    """librdkafka refuses a second init_transactions() on one producer: a retry after the
    offsets topic could not be read must not take the id again (an end-to-end test with
    ACLs found every other retry failing so)."""
    sink.send(job(sink, 10))
    sink._client.fail_commit = TransactionFailed("fenced", fenced=True)
    sink.end_transaction()
    sink._client.unreadable = TransactionFailed("kafka.offsets_topic logship-offsets: missing")
    with pytest.raises(TransactionFailed):
        sink.read_positions()
    sink.read_positions()
    calls = sink._client.calls
    assert sink.ready and calls[calls.index("renew"):] == ["renew", "init"]


def test_a_finished_file_is_tombstoned_unless_followed_in_the_same_transaction(sink):
    sink.forget(cp(30, ino=7))
    sink.forget(cp(40, ino=8))
    sink.send(Job("t", Envelope(None, ()), [b"x"], [0], lambda: None, cp(50, ino=8),
                  sink.epoch))
    sink.end_transaction()
    assert written(sink) == {position_key("web-01", cp(0, ino=7)): None,
                             position_key("web-01", cp(0, ino=8)): 50}


def test_a_start_position_is_written_without_lines(sink):
    sink.note_positions([cp(500)])
    sink.end_transaction()
    assert written(sink) == {position_key("web-01", cp(0)): 500}


def test_positions_decode_to_the_latest_of_this_agent_only():
    mine, gone = cp(10), cp(5, ino=2)
    records = [(position_key("web-01", mine), position_value(cp(3))),
               (position_key("web-01", mine), position_value(mine)),
               (position_key("web-02", mine), position_value(cp(99))),
               (position_key("web-01", gone), position_value(gone)),
               (position_key("web-01", gone), None),
               (b"not json", b"{}")]
    positions, finished, unreadable = decode_positions("web-01", records)
    assert positions == [mine] and finished == {("t", 2049, 2)} and unreadable == 1


def test_kafka_positions_overtake_state_dir_but_never_move_it_back(tmp_path):
    store = CheckpointStore(tmp_path)
    store.update(cp(100))                        # at least once went further
    store.update(cp(10, ino=2, path="/var/log/b.log"))
    store.update(cp(10, ino=3, path="/var/log/c.log"))
    ahead = store.adopt([cp(50), cp(70, ino=2, path="/var/log/b.log")], {("t", 2049, 3)})
    assert ahead == 1
    assert store.for_target("t", "/var/log/a.log") == [cp(100)]
    assert store.for_target("t", "/var/log/b.log") == [cp(70, ino=2, path="/var/log/b.log")]
    assert store.for_target("t", "/var/log/c.log") == []


def test_a_forgotten_file_is_told_to_the_sink(tmp_path):
    store = CheckpointStore(tmp_path)
    forgotten: list[FileCheckpoint] = []
    store.on_forget = forgotten.append
    store.update(cp(10))
    store.remove(cp(10))
    assert forgotten == [cp(10)]


@pytest.mark.parametrize("kafka, agent, message", [
    ({"delivery": "twice"}, {}, "kafka.delivery: must be one of at-least-once, exactly-once"),
    ({"transaction_interval": 0}, {}, "kafka.transaction_interval: must be a number from 0.01 "
                                      "to 60, got 0"),
    ({"transaction_interval": 61}, {}, "kafka.transaction_interval: must be a number from"),
    ({"offsets_topic": "my offsets"}, {}, "kafka.offsets_topic: not a valid Kafka topic name"),
    ({"delivery": "exactly-once"}, {"name": "web 01"}, "agent.name: kafka.delivery: "
                                                       "exactly-once uses logship-<agent.name>"),
    ({"producer": {"transactional_id": "x"}}, {}, "kafka.producer.transactional_id: managed by "
                                                  "logship; set kafka.delivery: exactly-once"),
])
def test_exactly_once_settings_that_cannot_work_are_refused(kafka, agent, message):
    data = {**BASE, "kafka": {**BASE["kafka"], **kafka}, "agent": agent}
    with pytest.raises(ConfigError, match=message):
        check_settings(parse_config(data, Path("/")).kafka)


def test_wait_ready_returns_false_on_stop(sink):
    sink._ready.clear()
    stopping = threading.Event()
    stopping.set()
    assert sink.wait_ready(stopping) is False
