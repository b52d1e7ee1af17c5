"""The status document's rendering and parsing, and the keys a fleet config expands."""

from __future__ import annotations

import json
import socket
from datetime import datetime
from pathlib import Path

import pytest

from logship.config import expand_key, parse_config
from logship.errors import ConfigError
from logship.status import MAX_FILES, Encoder, capped_files, parse_documents, render

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
    ({**BASE, "status": {"ttl": 5, "interval": 5}}, "status.interval: must be below status.ttl"),
    ({**BASE, "log": {"format": "xml"}}, "log.format: must be one of text, json"),
])
def test_fleet_settings_that_cannot_work_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, Path("/"))


def test_a_key_given_to_a_command_expands_as_the_agent_does():
    assert expand_key("logship/hosts/{name}", "web-01") == "logship/hosts/web-01"


DOC = {"name": "web-01", "host": "h1", "updated": "2026-12-02T10:00:00+00:00", "kafka": "ok",
       "delivery": "exactly-once", "files": [{"path": "/var/log/a.log", "topic": "a", "state": "held", "lag_bytes": 3 << 20,
                  "last_error": None}]}


def test_the_table_shows_each_agent_then_its_files():
    now = datetime.fromisoformat("2026-12-02T10:00:10+00:00").timestamp()
    assert render([DOC], now) == (
        "NAME    HOST  UPDATED  FILES  LAG      KAFKA  DELIVERY\n"
        "web-01  h1    10s ago  1      3.0 MiB  ok     exactly-once\n"
        "\n"
        "web-01:\n"
        "  PATH            TOPIC  STATE  LAG      LAST ERROR\n"
        "  /var/log/a.log  a      held   3.0 MiB")


def test_a_document_rewritten_for_its_stamp_alone_encodes_as_a_new_one():
    encode = Encoder()
    doc = {**DOC, "files": [dict(entry) for entry in DOC["files"]]}
    assert json.loads(encode(doc)) == doc
    doc["updated"] = "2026-12-02T10:00:15+00:00"
    assert json.loads(encode(doc)) == doc
    rebuilt = {**doc, "files": [{**doc["files"][0], "lag_bytes": 0}]}
    assert json.loads(encode(rebuilt)) == rebuilt


def test_values_that_are_not_status_documents_are_left_out():
    values = [json.dumps(DOC).encode(), b"not json", b"[1]", json.dumps({"name": "x"}).encode()]
    assert parse_documents(values) == [DOC]


def test_a_status_lists_at_most_max_files_the_furthest_behind_first():
    entries = [{"path": f"/var/log/{i}", "lag_bytes": i} for i in range(MAX_FILES + 5)]
    files = capped_files(entries)
    assert files["files_total"] == MAX_FILES + 5 and len(files["files"]) == MAX_FILES
    assert files["files"][0]["lag_bytes"] == MAX_FILES + 4
    doc = {**DOC, "files": DOC["files"], "files_total": 3}
    assert render([doc], 0.0).endswith("  ... and 2 more, each less behind")
