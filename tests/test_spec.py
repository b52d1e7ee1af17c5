"""Parsing and validating etcd values (pure logic)."""

import os

import pytest

from logship.errors import SpecError
from logship.spec import Target, check_allowed, parse_value, split_host_port

ALLOWED = ("/var/log/**",)


def test_valid_entries_with_defaults_and_duplicates_collapsed():
    parsed = parse_value(b'[{"path": "/var/log/a.log", "topic": "a"},'
                         b' {"path": "/var/log//a.log", "topic": "a", "read_from": "beginning"},'
                         b' {"path": "/var/log/b.log", "topic": "b", "read_from": "beginning"}]',
                         ALLOWED)
    assert parsed.targets == (Target("/var/log/a.log", "a", "end"),
                              Target("/var/log/b.log", "b", "beginning"))
    assert parsed.rejected == ()


@pytest.mark.parametrize("raw, message", [
    (b"{", "not valid JSON"),
    (b'{"path": "/var/log/a"}', "must be a JSON array"),
    (b'"text"', "must be a JSON array"),
    (b"\xff", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_whole_value_refused(raw, message):
    with pytest.raises(SpecError, match=message):
        parse_value(raw, ALLOWED)


@pytest.mark.parametrize("entry, reason", [
    ('"x"', "entry must be an object"),
    ('{"path": "rel.log", "topic": "t"}', "path: must be an absolute path"),
    ('{"path": "/var/log/a", "topic": "bad topic"}', "topic: not a valid Kafka topic name"),
    ('{"path": "/var/log/a", "topic": ".."}', "topic: not a valid Kafka topic name"),
    ('{"path": "/var/log/a", "topic": "t", "read_from": "middle"}', "read_from: must be"),
    ('{"path": "/var/log/a", "topic": "t", "extra": 1}', "unknown field 'extra'"),
    ('{"path": "/var/log/a", "topc": "t"}', "unknown field 'topc'; did you mean topic?"),
    ('{"path": "/var/log/a", "topic": "t", "multiline": {"patern": "x"}}',
     "multiline: unknown field 'patern'; did you mean pattern?"),
    ('{"path": "/etc/passwd", "topic": "t"}', "outside allowed_paths"),
    ('{"path": "/var/log/../../etc/passwd", "topic": "t"}', "outside allowed_paths"),
])
def test_bad_entry_refused_alone(entry, reason):
    parsed = parse_value(f'[{entry}, {{"path": "/var/log/ok", "topic": "ok"}}]', ALLOWED)
    assert parsed.targets == (Target("/var/log/ok", "ok"),)
    assert len(parsed.rejected) == 1 and parsed.rejected[0].startswith("entry 0: ")
    assert reason in parsed.rejected[0]


def path_allowed(path, allowed) -> bool:
    try:
        check_allowed(Target(path, "t"), allowed)
    except ValueError:
        return False
    return True


def test_globs_and_symlinks(tmp_path):
    assert path_allowed("/var/log/a/b/c.log", ["/var/log/**"])
    assert path_allowed("/var/log/app.log", ["/var/log/*.log"])
    assert not path_allowed("/var/log/sub/app.log", ["/var/log/*.log"])
    assert not path_allowed("/var/logs/app.log", ["/var/log/**"])
    inside = tmp_path / "logs"
    inside.mkdir()
    os.symlink("/etc/passwd", inside / "sneaky.log")
    assert not path_allowed(str(inside / "sneaky.log"), [f"{inside}/**"])
    assert path_allowed(str(inside / "later.log"), [f"{inside}/**"])   # may not exist yet


def test_host_port():
    assert split_host_port("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert split_host_port("[::1]:9092") == ("::1", 9092)
    for bad in ("nohost", ":1", "h:", "h:0", "h:70000", "h:x", "http://h:1", "h/x:1", "a b:1"):
        with pytest.raises(ValueError):
            split_host_port(bad)
