"""Bad input, pure logic: every refusal is a clear one-line error, never a crash.

The end-to-end twins of these cases, through the real `logship run`, are in
test_bad_input_e2e.py. Property-based cases generate etcd values and configs.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logship.checkpoint import CheckpointStore, FileCheckpoint
from logship.config import load_config, parse_config
from logship.errors import ConfigError, SourceError, SpecError
from logship.logs import SafeFormatter, escape, shown
from logship.spec import Target, parse_value
from logship.supervisor import Backoff, Supervisor
from logship.tailer import Tailer, TailSettings, open_checked

ALLOWED = ("/var/log/**",)
GOOD = {"path": "/var/log/ok.log", "topic": "ok"}
BASE = {"etcd": {"endpoints": ["127.0.0.1:2379"], "keys": ["k"]},
        "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
entries = st.dictionaries(st.sampled_from(["path", "topic", "read_from", "x"]), json_values,
                          max_size=4)


def one_line(text: str) -> bool:
    return "\n" not in text and "\r" not in text and len(text) < 2000


# -- etcd values ------------------------------------------------------------------------

@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entries | json_values, max_size=5))
def test_any_json_array_is_parsed_entry_by_entry(value):
    parsed = parse_value(json.dumps(value) + "", ALLOWED)
    assert len(parsed.targets) + len(parsed.rejected) <= len(value)
    assert all(one_line(reason) for reason in parsed.rejected)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_whole(raw):
    try:
        parse_value(raw, ALLOWED)
    except SpecError as exc:
        assert one_line(str(exc))


@pytest.mark.parametrize("entry, reason", [
    ('{"path": "/var/log/\\udcff.log", "topic": "t"}', "path: not valid UTF-8"),
    ('{"path": "/var/log/a\\u0000b", "topic": "t"}', "path: contains a NUL character"),
    ('{"path": "/var/log/' + "a" * 5000 + '", "topic": "t"}', "path: longer than 4096 bytes"),
    ('{"path": "/var/log/a", "topic": "t", "read_from": ' + "9" * 5000 + "}",
     "read_from: must be 'end' or 'beginning', got \"<a number of 5000 digits>\""),
])
def test_hostile_entry_is_refused_alone(entry, reason):
    parsed = parse_value(f"[{entry}, {json.dumps(GOOD)}]", ALLOWED)
    assert parsed.targets == (Target(GOOD["path"], GOOD["topic"]),)
    assert len(parsed.rejected) == 1 and reason in parsed.rejected[0]
    assert one_line(parsed.rejected[0])


def test_a_huge_topic_is_echoed_capped_and_a_newline_escaped():
    parsed = parse_value(json.dumps([{"path": "/var/log/a", "topic": "t" * 1_000_000},
                                     {"path": "rel\nFAKE ERROR", "topic": "t"}]), ALLOWED)
    assert "... (1000002 chars)" in parsed.rejected[0] and len(parsed.rejected[0]) < 400
    assert "\\nFAKE ERROR" in parsed.rejected[1] and one_line(parsed.rejected[1])


def test_every_log_message_is_one_line():
    record = logging.LogRecord("logship", logging.INFO, __file__, 1, "worker started %s", (
        Target("/var/log/a\n2026-01-01 ERROR forged", "t"),), None)
    assert SafeFormatter("%(message)s").format(record) == \
        "worker started path=/var/log/a\\x0a2026-01-01 ERROR forged topic=t"


def test_shown_escapes_controls_and_surrogates():
    assert escape("a\nb\x1b[31m\udcff") == "a\\x0ab\\x1b[31m\\udcff"
    assert shown("x" * 300) == "x" * 200 + "... (300 chars)"


# -- config.yaml ----------------------------------------------------------------------

configs = st.fixed_dictionaries({}, optional={
    "etcd": st.dictionaries(st.sampled_from(["endpoints", "keys", "timeout", "password"]),
                            json_values, max_size=3),
    "kafka": st.dictionaries(st.sampled_from(["bootstrap_servers", "producer", "buffer_bytes"]),
                             json_values, max_size=3),
    "files": json_values, "logs": json_values, "allowed_paths": json_values,
    "state_dir": json_values, "metrics": json_values})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_config_document_is_accepted_or_refused_by_field(data):
    try:
        parse_config({**BASE, **data}, Path("/etc/logship"))
    except ConfigError as exc:
        assert one_line(str(exc)) and ":" in str(exc)


def write(tmp_path, data: bytes) -> Path:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    return path


def test_a_latin1_byte_names_the_file_and_line(tmp_path):
    path = write(tmp_path, yaml.safe_dump(BASE).encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not UTF-8 \(byte 0xe9"):
        load_config(path)


@pytest.mark.parametrize("text", [
    b"etcd:\n  endpoints: ['127.0.0.1:2379']\n  password: [98765432123456\n",
    b"etcd: {endpoints: ['127.0.0.1:2379'], keys: [k], password: 98765432123456}\n"
    b"kafka: {bootstrap_servers: ['127.0.0.1:9092']}\n",
])
def test_a_password_is_never_echoed(tmp_path, text):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert "98765432123456" not in str(error.value)
    assert "etcd.password" in str(error.value) or "not valid YAML" in str(error.value)


@pytest.mark.parametrize("servers", ["127.0.0.1:99999", "broker:notaport", "http://127.0.0.1:9092",
                                     "127.0.0.1"])
def test_bootstrap_servers_must_be_host_port(servers):
    with pytest.raises(ConfigError, match=r"kafka.bootstrap_servers\[0\]: must be host:port"):
        parse_config({**BASE, "kafka": {"bootstrap_servers": [servers]}}, Path("/"))


def test_etcd_endpoints_in_url_form():
    config = parse_config({**BASE, "etcd": {"endpoints": ["http://127.0.0.1:2379/", "h:1"],
                                            "keys": ["k"]}}, Path("/"))
    assert config.etcd.endpoints == (("127.0.0.1", 2379), ("h", 1))
    for endpoint, message in (("https://h:1", "https:// needs etcd.ca_cert"),
                              ("unix://h:1", "scheme unix:// not supported")):
        with pytest.raises(ConfigError, match=message):
            parse_config({**BASE, "etcd": {"endpoints": [endpoint], "keys": ["k"]}}, Path("/"))


def test_size_defaults_fit_kafkas_default_message_limit():
    config = parse_config(BASE, Path("/"))
    # room for the key and headers (a path of up to 4 KiB, twice) beside the longest line
    assert config.files.max_line_bytes + 32 * 1024 <= config.kafka.max_request_size <= 1048588


# -- files ------------------------------------------------------------------------------

def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match="not a regular file"):
        open_checked(str(fifo), (f"{tmp_path}/**",))


def test_procfs_is_refused_at_open():
    with pytest.raises(SourceError, match="size does not grow as it is read"):
        open_checked("/proc/self/status", ("/**",))


def test_the_opened_file_is_judged_not_the_name(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret\n")
    os.symlink(outside / "secret", inside / "app.log")
    with pytest.raises(SourceError, match="outside allowed_paths"):
        open_checked(str(inside / "app.log"), (f"{inside}/**",))


def test_a_resumed_file_is_checked_again(tmp_path):
    """After a restart the saved file is reopened by name: a symlink swapped in meanwhile
    must not be followed outside allowed_paths."""
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"secret line\n")
    st_secret = secret.stat()
    saved = FileCheckpoint(str(inside / "app.log"), "t", st_secret.st_dev, st_secret.st_ino,
                           0, "", 0)
    os.symlink(secret, inside / "app.log")
    settings_ = TailSettings(4096, 1024, 1.0, 10.0, (f"{inside}/**",))
    tailer = Tailer(str(inside / "app.log"), settings_)
    with pytest.raises(SourceError, match="outside allowed_paths"):
        tailer.restore([saved], "beginning", 0.0)
    assert tailer.files() == []


def test_state_dir_is_private(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    store = CheckpointStore(state)
    store.load()
    store.update(FileCheckpoint("/var/log/a", "t", 1, 2, 0, "", 10))
    store.save()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "checkpoints.json").stat().st_mode) == 0o600


# -- supervision ------------------------------------------------------------------------

def test_a_child_that_cannot_be_built_counts_as_a_crash():
    restarts = []

    def factory(spec):
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    supervisor = Supervisor("worker", factory, restarts.append,
                            backoff=lambda: Backoff(base=0.0, cap=0.0))
    supervisor.reconcile({"a": "a"})
    supervisor.supervise()
    assert restarts == ["a", "a"] and threading.active_count() >= 1
