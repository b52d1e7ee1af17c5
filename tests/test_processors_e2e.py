"""Entry options through the real agent, on both Kafka clients: line filters (dropped
lines still move the offset), JSON records with constant fields and embedded JSON
messages, constant fields as headers, and the record key."""

from __future__ import annotations

import json
import socket

import pytest

from conftest import CLIENTS
from harness import header, wait_until

pytestmark = pytest.mark.e2e
HOST = socket.gethostname()


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


def test_filters_drop_lines_and_still_move_the_offset(etcd, kafka, make_agent, reader, key,
                                                     topic, tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic, "include_lines": ["ERROR", "^WARN"],
                    "exclude_lines": ["DEBUG"], "key": "none", "fields": {"team": "core"}}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    log.write_bytes(b"INFO a\nERROR b\nERROR DEBUG c\nWARN d\n")
    records = sorted(reader(topic).wait_count(2), key=lambda r: int(header(r, "offset")))
    assert [r.value for r in records] == [b"ERROR b", b"WARN d"]
    assert [(r.key, header(r, "team"), header(r, "offset")) for r in records] == [
        (None, b"core", b"7"), (None, b"core", b"29")], "no key: partitions, hence order, vary"
    with log.open("ab") as f:
        f.write(b"INFO only noise\nDEBUG more\n")
    size = log.stat().st_size
    wait_until(lambda: any(c["offset"] == size for c in agent.checkpoints()), 15,
               "the offset past lines that were all filtered out")
    assert agent.metric("logship_lines_skipped_total", topic=topic, reason="filtered") == 4
    assert agent.metric("logship_lines_read_total", topic=topic) == 6, "lines, not records"
    assert agent.metric("logship_records_sent_total", topic=topic) == 2


def test_json_records_with_fields_and_embedded_json(etcd, kafka, make_agent, reader, key, topic,
                                                   tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic, "format": "json", "json_message": True,
                    "fields": {"service": "billing", "replica": 2}, "key": "host"}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    log.write_bytes(b'{"level": "error", "code": 7}\nplain text\n')
    records = reader(topic).wait_count(2)
    documents = [json.loads(r.value) for r in records]
    for document in documents:
        assert document.pop("@timestamp").endswith("+00:00")
    assert documents == [
        {"message": {"level": "error", "code": 7}, "path": str(log), "host": HOST, "offset": 0,
         "service": "billing", "replica": 2},
        {"message": "plain text", "path": str(log), "host": HOST, "offset": 30,
         "service": "billing", "replica": 2}]
    assert {r.key for r in records} == {HOST.encode()}
    wait_until(lambda: agent.metric("logship_lines_invalid_json_total", topic=topic) == 1, 10,
               "the line that is not JSON counted")


def test_changed_options_restart_the_worker_with_them(etcd, kafka, make_agent, reader, key,
                                                     topic, tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    log.write_bytes(b"raw line\n")
    reader_ = reader(topic)
    reader_.wait_count(1)
    etcd.put(key, [{"path": str(log), "topic": topic, "format": "json"}])
    agent.wait_log(f"worker started path={log}", count=2)
    with log.open("ab") as f:
        f.write(b"json line\n")
    records = reader_.wait_count(2)
    assert records[0].value == b"raw line"
    assert json.loads(records[1].value)["message"] == "json line"
