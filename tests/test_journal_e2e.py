"""The systemd journal as a source, end to end: real journal files written by
systemd-journal-remote, followed by the real `logship run` through journalctl, read back
from Kafka (at exactly-once by a read_committed consumer counting every entry)."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time

import pytest

from conftest import CLIENTS
from harness import (Journal, has_all, header, journalctl_children, logship, numbers,
                     report_duplicates, unique, wait_until, zombies)
from test_delivery_e2e import entry
from test_exactly_once_e2e import every_line_once, exactly_once

pytestmark = pytest.mark.e2e


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "journal")


def journal_entry(journal: Journal, topic: str, **extra) -> dict:
    filters = extra.pop("filters", {})
    return {"journal": {"directory": str(journal.directory), **filters}, "topic": topic, **extra}


def name_of(journal: Journal, **filters) -> str:
    parts = [f"{kind}={value}" for kind, value in filters.items()]
    return "journal:" + ",".join([*parts, f"directory={journal.directory}"])


class JournalWriter(threading.Thread):
    """Appends numbered entries in runs at about `rate` a second, up to `total`; `next`
    says how far it got."""

    def __init__(self, journal: Journal, start: int, total: int, rate: int = 2000,
                 run: int = 200) -> None:
        super().__init__(daemon=True)
        self.journal, self.next, self.end = journal, start, start + total
        self.rate, self.run_size = rate, run

    def run(self) -> None:
        started, first = time.monotonic(), self.next
        while self.next < self.end:
            count = min(self.run_size, self.end - self.next)
            self.journal.write_numbered(self.next, count)
            self.next += count
            ahead = (self.next - first) / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)       # pacing the writer, not waiting for a condition


def test_entries_before_and_after_the_start_with_their_record(etcd, kafka, make_agent, reader,
                                                              key, topic, journal):
    journal.write_numbered(0, 1000)
    etcd.put(key, [journal_entry(journal, topic, read_from="beginning")])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(rf"worker started {name_of(journal)} topic={topic}: at the beginning")
    journal.write_numbered(1000, 500)
    journal.write([b"caf\xc3\xa9 \x01binary", b"two\nlines"], unit="nginx.service",
                  identifier="nginx", priority=3)
    topic_reader = reader(topic)
    records = topic_reader.wait_for(has_all(1500), 60, "1500 entries")
    records = topic_reader.wait_count(1502)
    assert report_duplicates("journal before and after", records) == 0
    by_value = {r.value: r for r in records}
    first = by_value[b"n:00000000"]
    binary, two_lines = by_value[b"caf\xc3\xa9 \x01binary"], by_value[b"two\nlines"]
    assert first.value == b"n:00000000" and first.key == b"app.service"
    assert header(first, "host") == b"journal-host" and header(first, "unit") == b"app.service"
    assert header(first, "priority") == b"6"
    assert header(first, "cursor").startswith(b"s=")
    assert binary.key == b"nginx.service" and header(two_lines, "priority") == b"3"
    def saved() -> list[dict]:
        return [c for c in agent.checkpoints() if c.get("cursor") == header(two_lines, "cursor")
                .decode() and c["path"] == name_of(journal) and c["topic"] == topic]
    wait_until(saved, 10, "the last entry's cursor saved")
    status = json.loads(agent.scrape("/api/status"))
    [shown] = [f for f in status["files"] if f["path"] == name_of(journal)]
    assert shown["state"] == "shipping" and shown["records_sent"] == 1502


def test_read_from_end_a_unit_and_an_identifier_json_format(etcd, kafka, make_agent, reader,
                                                            key, topic, journal):
    journal.write([b"old nginx entry"], unit="nginx.service", identifier="nginx")
    filters = {"units": ["nginx"], "identifiers": ["sshd"]}
    etcd.put(key, [journal_entry(journal, topic, filters=filters, format="json",
                                 exclude_lines=["^debug"])])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(rf"worker started {name_of(journal, unit='nginx.service', identifier='sshd')}"
                   rf" topic={topic}: at the end")
    journal.write([b"cron entry"], unit="cron.service", identifier="CRON")
    journal.write([b"nginx entry", b"debug nginx entry"], unit="nginx.service", identifier="nginx")
    journal.write([b"sshd entry"], unit="ssh.service", identifier="sshd")
    topic_reader = reader(topic)
    records = topic_reader.wait_count(2)
    records = topic_reader.settle(1.5)
    messages = [json.loads(r.value)["MESSAGE"] for r in records]
    assert sorted(messages) == ["nginx entry", "sshd entry"]
    units = {json.loads(r.value)["_SYSTEMD_UNIT"] for r in records}
    assert units == {"nginx.service", "ssh.service"}
    assert agent.metric("logship_lines_skipped_total", topic=topic, reason="filtered") == 1


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_kill_9_mid_stream_then_resume(etcd, kafka, make_agent, reader, key, topic, journal,
                                       delivery):
    total = 30_000
    journal.write_numbered(0, 2000)
    etcd.put(key, [journal_entry(journal, topic, read_from="beginning")])
    agent = make_agent(etcd, kafka, [key])
    if delivery == "exactly-once":
        exactly_once(agent)
    topic_reader = reader(topic, committed=delivery == "exactly-once")
    agent.start()
    writer = JournalWriter(journal, 2000, total - 2000)
    writer.start()
    topic_reader.wait_for(lambda r: len(r) >= 5000, 120, "5000 entries")
    wait_until(lambda: any(c.get("cursor") for c in agent.checkpoints()), 10, "a cursor saved")
    pid = agent.proc.pid
    agent.kill()
    assert writer.next < total, "the kill came after the last entry was written"
    wait_until(lambda: not journalctl_children(journal.directory), 10,
               f"journalctl gone with the agent (pid {pid})")
    agent.start()
    agent.wait_log(rf"worker started {name_of(journal)} topic={topic}: after cursor s=")
    writer.join()
    if delivery == "exactly-once":
        every_line_once("journal exactly-once kill -9", topic_reader, total)
    else:
        topic_reader.wait_for(has_all(total), 180, f"all {total} entries")
        report_duplicates("journal kill -9", topic_reader.records)
    assert agent.stop() == 0
    assert not journalctl_children(journal.directory)


def test_kafka_down_and_back(etcd, own_kafka, make_agent, reader, key, topic, journal):
    if own_kafka.proc is None:
        own_kafka.start()
    etcd.put(key, [journal_entry(journal, topic)])
    agent = make_agent(etcd, own_kafka, [key]).start()
    agent.wait_log(rf"worker started {name_of(journal)} topic={topic}")
    journal.write_numbered(0, 1000)
    topic_reader = reader(topic, own_kafka)
    topic_reader.wait_for(has_all(1000), 60, "entries before the outage")
    own_kafka.stop()
    journal.write_numbered(1000, 2000)
    agent.wait_log(rf"Kafka unavailable \({own_kafka.address}\)", timeout=60)
    own_kafka.start()
    topic_reader.wait_for(has_all(3000), 180, "every entry, after the outage")
    agent.wait_log("Kafka available again")
    report_duplicates("journal kafka outage", topic_reader.records)
    assert sorted(set(numbers(topic_reader.records))) == list(range(3000))


def test_journalctl_that_exits_or_is_missing_harms_nothing_else(etcd, kafka, make_agent, reader,
                                                                key, topic, journal, tmp_path):
    failing = tmp_path / "journalctl"
    failing.write_text("#!/bin/sh\necho 'Failed to open journal directory: permission denied' "
                       ">&2\nexit 1\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [journal_entry(journal, topic, read_from="beginning"),
                   entry(log, topic + "-file")])
    agent = make_agent(etcd, kafka, [key], journal={"journalctl": str(failing)}).start()
    agent.wait_log(rf"{name_of(journal)} topic={topic}: journalctl exited with status 1: "
                   rf"Failed to open journal directory: permission denied \(command: {failing} "
                   rf"--output=json .*--follow --no-tail --directory={journal.directory}\); "
                   rf"starting it again in [\d.]+s", timeout=60, count=2)
    assert "WARNING logship.journal" not in agent.log()
    wait_until(lambda: not zombies(agent.proc.pid), 10, "no zombie journalctl")
    assert agent.metric("logship_worker_restarts_total", topic=topic) >= 2
    log.write_bytes(b"a file line\n")
    file_reader = reader(topic + "-file")
    assert file_reader.wait_count(1)[0].value == b"a file line"

    agent.config["journal"] = {"journalctl": str(tmp_path / "no-such-journalctl")}
    agent.write_config()
    agent.wait_log(rf"{name_of(journal)} topic={topic}: {tmp_path}/no-such-journalctl not "
                   rf"found \(journal\.journalctl\)", timeout=30)
    with open(log, "ab") as handle:
        handle.write(b"another file line\n")
    file_reader.wait_count(2)
    assert "Traceback" not in agent.log()
    assert agent.stop() == 0


def test_a_directory_outside_allowed_paths_is_refused(etcd, kafka, make_agent, key, topic,
                                                      tmp_path, journal):
    outside = f"/var/log/journal-{unique('x')}"
    agent = make_agent(etcd, kafka, [key])
    value = tmp_path / "value.json"
    value.write_text(json.dumps([{"journal": {"directory": outside}, "topic": topic}]))
    put = logship("put", "--config", str(agent.config_path), key, str(value))
    assert put.returncode == 1
    assert f"journal.directory: {outside} (real path {outside}) is outside allowed_paths" \
        in put.stderr.decode()
    assert etcd.get(key) is None
    etcd.put(key, [{"journal": {"directory": outside}, "topic": topic},
                   journal_entry(journal, topic)])
    agent.start()
    agent.wait_log(rf"key={key} entry 0: journal\.directory: {outside} .*outside allowed_paths; "
                   r"entry ignored")
    agent.wait_log(rf"worker started {name_of(journal)} topic={topic}")


def test_stop_kills_and_reaps_journalctl(etcd, kafka, make_agent, key, topic, journal):
    etcd.put(key, [journal_entry(journal, topic)])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(rf"worker started {name_of(journal)} topic={topic}")
    wait_until(lambda: journalctl_children(journal.directory), 10, "journalctl running")
    etcd.put(key, [])
    agent.wait_log(rf"worker stopped {name_of(journal)} topic={topic}")
    wait_until(lambda: not journalctl_children(journal.directory), 10, "journalctl stopped")
    assert not zombies(agent.proc.pid)
    agent.signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0
    agent.proc = None
    assert os.path.isdir(journal.directory)
