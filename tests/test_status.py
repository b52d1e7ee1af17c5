"""The status report and its summary in etcd: when the summary is rewritten, what it
says, its bound; the table of `logship status`; the keys a fleet config expands."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from logship.config import StatusConfig, expand_key, parse_config
from logship.errors import ConfigError
from logship.spec import Target
from logship.status import (LISTED_FILES, MAX_DOCUMENT_BYTES, Condition, Identity, Schedule,
                            Table, document, encode, parse_document)
from logship.supervisor import ChildState
from logship.worker import Progress

BASE = {"etcd": {"endpoints": ["127.0.0.1:2379"], "keys": ["k"]},
        "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]}}


def test_keys_expand_the_agent_name_and_the_host_name():
    data = {**BASE, "agent": {"name": "web-01"},
            "etcd": {**BASE["etcd"], "keys": ["logship/hosts/{name}", "h/{hostname}", "all"]}}
    config = parse_config(data, Path("/"))
    assert config.etcd.keys == ("logship/hosts/web-01", f"h/{socket.gethostname()}", "all")
    assert parse_config(BASE, Path("/")).name == socket.gethostname()


@pytest.mark.parametrize("data, message", [
    ({**BASE, "etcd": {**BASE["etcd"], "keys": ["a/{host}"]}},
     r"etcd.keys\[0\]: unknown placeholder \{host\} in 'a/\{host\}'; use \{name\} or \{hostname\}"),
    ({**BASE, "agent": {"name": "a/b"}}, "agent.name: must not hold '/'"),
    ({**BASE, "status": {"interval": 10, "progress_interval": 5}},
     r"status.progress_interval: must be at least status.interval \(10\)"),
    ({**BASE, "status": {"progress_interval": 0.5}},
     r"status.progress_interval: must be a number >= 1, got 0.5"),
    ({**BASE, "log": {"format": "xml"}}, "log.format: must be one of text, json"),
])
def test_fleet_settings_that_cannot_work_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, Path("/"))


def test_status_settings_default_for_a_fleet():
    status = parse_config(BASE, Path("/")).status
    assert (status.ttl, status.interval, status.progress_interval) == (15, 5.0, 60.0)
    assert status.keepalive == 5.0


def test_a_key_given_to_a_command_expands_as_the_agent_does():
    assert expand_key("logship/hosts/{name}", "web-01") == "logship/hosts/web-01"


@dataclass
class FakeWorker:
    """What the report reads of a worker."""

    state: str = "shipping"
    offset: int = 0
    size: int = 0
    records: int = 0

    def progress(self) -> Progress:
        return Progress(self.state, self.offset, self.size, self.size - self.offset, self.records)


CONFIG = StatusConfig(interval=5, progress_interval=60)
IDENTITY = Identity("web-01", "h1", 0.0, pid=42)


class Agent:
    """Files and their workers, as the status writer sees them."""

    def __init__(self, files: int = 1) -> None:
        self.workers = {f"/var/log/{i}.log": FakeWorker() for i in range(files)}
        self.errors: dict[str, str] = {}
        self.kafka_down: str | None = None

    def report(self) -> dict:
        children = [ChildState(Target(path, "t"), None if path in self.errors else worker,
                               self.errors.get(path)) for path, worker in self.workers.items()]
        condition = Condition(self.kafka_down, (), "at-least-once", None)
        return document(IDENTITY, CONFIG, ["k"], condition, children, {})


def due(schedule: Schedule, agent: Agent, now: float, fingerprint=None) -> dict | None:
    """The summary the writer would write at `now` (and reports written)."""
    if not schedule.look(fingerprint, now):
        return None
    report = agent.report()
    summary = schedule.next(report, fingerprint, now)
    if summary is not None:
        schedule.wrote(summary, report, now)
    return summary


def test_an_unchanged_agent_writes_once_and_then_never_rebuilds_its_report():
    schedule, agent = Schedule(CONFIG), Agent()
    assert due(schedule, agent, 0.0, fingerprint=1)["records_per_second"] == 0.0
    assert not schedule.look(1, 5.0) and not schedule.look(1, 3600.0)
    assert due(schedule, agent, 10.0, fingerprint=2) is None, "looked at, nothing changed"


def test_a_change_an_operator_acts_on_is_written_at_once_counters_at_most_every_progress_interval():
    schedule, agent = Schedule(CONFIG), Agent()
    due(schedule, agent, 0.0)
    agent.kafka_down = "127.0.0.1:9092: connection refused"
    assert due(schedule, agent, 5.0)["kafka_cause"] == agent.kafka_down
    agent.kafka_down = None
    agent.workers["/var/log/0.log"].records = 600
    written = due(schedule, agent, 10.0)
    assert written["kafka"] == "ok" and written["records_sent"] == 600
    agent.workers["/var/log/0.log"].records = 1200
    assert [due(schedule, agent, t) for t in (15.0, 40.0, 65.0)] == [None, None, None]
    summary = due(schedule, agent, 70.0)
    assert summary["records_sent"] == 1200 and summary["records_per_second"] == 10.0
    assert summary["rate_window_seconds"] == 60.0
    assert summary["files"][0]["records_per_second"] == 10.0


def test_counters_that_stop_moving_are_said_once_with_a_rate_of_zero():
    schedule, agent = Schedule(CONFIG), Agent()
    due(schedule, agent, 0.0, fingerprint=0)
    agent.workers["/var/log/0.log"].records = 3000
    assert due(schedule, agent, 60.0, fingerprint=1)["records_per_second"] == 50.0
    assert due(schedule, agent, 65.0, fingerprint=1) is None
    rest = due(schedule, agent, 120.0, fingerprint=1)
    assert rest["records_per_second"] == 0.0 and rest["records_sent"] == 3000
    assert not schedule.look(1, 180.0) and not schedule.look(1, 10**6)


def test_a_file_in_error_is_written_at_once_and_listed_first():
    schedule, agent = Schedule(CONFIG), Agent(files=3)
    agent.workers["/var/log/2.log"].size = 500
    due(schedule, agent, 0.0)
    agent.errors["/var/log/1.log"] = "permission denied"
    summary = due(schedule, agent, 5.0)
    assert summary["files_by_state"] == {"error": 1, "shipping": 2}
    assert [f["path"] for f in summary["files"]] == ["/var/log/1.log", "/var/log/2.log",
                                                      "/var/log/0.log"]


def test_a_new_lease_is_written_at_once_with_rates_that_span_the_outage():
    schedule, agent = Schedule(CONFIG), Agent()
    due(schedule, agent, 0.0, fingerprint=1)
    schedule.forget()
    agent.workers["/var/log/0.log"].records = 900
    assert due(schedule, agent, 30.0, fingerprint=1)["records_per_second"] == 30.0


def test_a_restarted_worker_counts_from_zero_again():
    schedule, agent = Schedule(CONFIG), Agent()
    agent.workers["/var/log/0.log"].records = 1000
    due(schedule, agent, 0.0)
    agent.workers["/var/log/0.log"].records = 120
    assert due(schedule, agent, 60.0)["records_per_second"] == 2.0


def test_a_summary_of_2000_files_stays_within_its_bound():
    agent = Agent(files=2000)
    for i, (path, worker) in enumerate(agent.workers.items()):
        worker.size = i
        if i % 100 == 0:
            agent.errors[path] = "x" * 5000
    long_paths = {"/var/log/" + "deep/" * 400 + f"{i}.log": w
                  for i, w in enumerate(agent.workers.values())}
    agent.workers = long_paths
    agent.errors = {next(iter(long_paths)): "y" * 5000}
    summary = due(Schedule(CONFIG), agent, 0.0)
    assert len(encode(summary)) <= MAX_DOCUMENT_BYTES
    assert summary["files_total"] == 2000 and 0 < len(summary["files"]) <= LISTED_FILES
    assert summary["files"][0]["last_error"].endswith("…")


def test_a_summary_lists_the_worst_few_files_and_counts_them_all():
    agent = Agent(files=2000)
    for i, worker in enumerate(agent.workers.values()):
        worker.size, worker.records = i, 1
    summary = due(Schedule(CONFIG), agent, 0.0)
    assert [f["lag_bytes"] for f in summary["files"]] == list(range(1999, 1999 - LISTED_FILES, -1))
    assert summary["lag_bytes"] == sum(range(2000)) and summary["records_sent"] == 2000
    assert summary["files_by_state"] == {"shipping": 2000}
    assert len(encode(summary)) < 4096
    assert len(agent.report()["files"]) == 2000, "the full report keeps every file"


DOC = {"name": "web-01", "host": "h1", "updated": "2026-12-02T10:00:00+00:00", "kafka": "ok",
       "delivery": "exactly-once", "files_total": 1, "lag_bytes": 3 << 20,
       "files": [{"path": "/var/log/a.log", "topic": "a", "state": "held", "lag_bytes": 3 << 20,
                  "last_error": None}]}


def test_the_table_shows_each_agent_then_its_files():
    table = Table(datetime.fromisoformat("2026-12-02T10:00:10+00:00").timestamp())
    table.add(DOC)
    assert str(table) == (
        "NAME    HOST  UPDATED  FILES  LAG      KAFKA  DELIVERY\n"
        "web-01  h1    10s ago  1      3.0 MiB  ok     exactly-once\n"
        "\n"
        "web-01:\n"
        "  PATH            TOPIC  STATE  LAG      LAST ERROR\n"
        "  /var/log/a.log  a      held   3.0 MiB")


def test_the_table_says_how_many_files_a_summary_leaves_out():
    table = Table(0.0)
    table.add({**DOC, "files_total": 3})
    assert str(table).endswith("  ... and 2 more, each less behind (all of them: /api/status "
                               "on the agent)")


def test_a_document_of_an_older_agent_lists_every_file_and_is_summed():
    table = Table(0.0)
    table.add({name: value for name, value in DOC.items() if name not in ("files_total", "lag_bytes")})
    assert "web-01  h1" in str(table) and "3.0 MiB" in str(table).splitlines()[1]


def test_values_that_are_not_status_documents_are_left_out():
    assert parse_document(json.dumps(DOC).encode()) == DOC
    for value in (b"not json", b"[1]", json.dumps({"name": "x"}).encode()):
        assert parse_document(value) is None
