"""The journal entry's pure logic: its validation, journalctl's command line, how an entry
becomes a record, and where a partly taken batch leaves the cursor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logship.checkpoint import FileCheckpoint
from logship.config import parse_config
from logship.errors import ConfigError, SpecError
from logship.journal import EntryFormat, command, field_bytes, journal_identity
from logship.sink import Envelope, Job, Records
from logship.spec import parse_entry, parse_value

DIRECTORY = "/var/log/journal"


def journal_target(**extra):
    filters = extra.pop("filters", {})
    return parse_entry({"journal": filters, "topic": "journal", **extra})


def test_the_whole_journal_and_its_name():
    target = journal_target()
    assert target.path == "journal:all" and target.read_from == "end"
    assert target.options.key == "unit" and not target.is_glob
    named = journal_target(filters={"units": ["sshd", "nginx.service", "nginx"],
                                    "identifiers": ["CRON", "postfix/smtpd"], "priority": 4,
                                    "directory": DIRECTORY + "/"})
    assert named.path == ("journal:unit=nginx.service,unit=sshd.service,identifier=CRON,"
                          "identifier=postfix/smtpd,priority=4,directory=/var/log/journal")
    assert str(named) == f"{named.path} topic=journal"


@pytest.mark.parametrize("entry, message", [
    ({"journal": [], "topic": "j"}, "journal: must be an object of filters"),
    ({"journal": {"unit": ["a"]}, "topic": "j"},
     "journal: unknown field 'unit'; did you mean units?"),
    ({"journal": {"units": "nginx"}, "topic": "j"}, "journal.units: must be a list of names"),
    ({"journal": {"units": ["ngi*"]}, "topic": "j"}, "journal.units[0]: must be a unit name"),
    ({"journal": {"identifiers": ["a\nb"]}, "topic": "j"},
     "journal.identifiers[0]: must be an identifier"),
    ({"journal": {"priority": 8}, "topic": "j"}, "journal.priority: must be a syslog level"),
    ({"journal": {"priority": True}, "topic": "j"}, "journal.priority: must be a syslog level"),
    ({"journal": {"directory": "journal"}, "topic": "j"},
     "journal.directory: must be an absolute path"),
    ({"journal": {"directory": "/var/log/*"}, "topic": "j"},
     "journal.directory: must be one directory, not a glob"),
    ({"journal": {}, "topic": "bad topic"}, "topic: not a valid Kafka topic name"),
    ({"journal": {}, "path": "/var/log/a", "topic": "j"},
     "journal: an entry names either a path or the journal"),
    ({"journal": {}, "topic": "j", "multiline": {"pattern": "^ "}},
     "multiline: not for a journal entry"),
    ({"journal": {}, "topic": "j", "key": "path"}, "key: must be one of unit, host, none"),
    ({"journal": {}, "topic": "j", "read_from": "start"}, "read_from: must be 'end' or"),
    ({"journal": {}, "topic": "j", "colour": 1}, "unknown field 'colour'"),
])
def test_a_bad_journal_entry_names_its_field(entry, message):
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("*", r"\*")):
        parse_entry(entry)


def test_the_directory_must_pass_allowed_paths(tmp_path):
    value = json.dumps([{"journal": {"directory": str(tmp_path)}, "topic": "j"},
                        {"journal": {"directory": "/run/log/journal"}, "topic": "j"},
                        {"journal": {}, "topic": "j"}])
    parsed = parse_value(value, [str(tmp_path) + "/**"])
    assert [t.path for t in parsed.targets] == [f"journal:directory={tmp_path}", "journal:all"]
    [refused] = parsed.rejected
    assert refused == ("entry 1: journal.directory: /run/log/journal (real path "
                       "/run/log/journal) is outside allowed_paths")
    with pytest.raises(SpecError):
        parse_value("{}", ["/**"])


def test_journalctl_follows_merged_from_the_cursor_with_the_filters_as_matches():
    target = journal_target(filters={"units": ["nginx"], "identifiers": ["sshd"], "priority": 3,
                                     "directory": DIRECTORY})
    assert command("/usr/bin/journalctl", target.journal, "s=1;i=2") == [
        "/usr/bin/journalctl", "--output=json", "--merge", "--utc", "--no-pager", "--all",
        "--follow", "--no-tail", f"--directory={DIRECTORY}", "--priority=3",
        "--after-cursor=s=1;i=2",
        "_SYSTEMD_UNIT=nginx.service", "+", "_PID=1", "UNIT=nginx.service", "+",
        "SYSLOG_IDENTIFIER=sshd"]
    assert command("journalctl", journal_target().journal, None, follow=False) == [
        "journalctl", "--output=json", "--merge", "--utc", "--no-pager", "--all"]


def test_field_bytes_as_journalctl_prints_them():
    assert field_bytes("café") == "café".encode()
    assert field_bytes([104, 105, 0, 255]) == b"hi\x00\xff"
    assert field_bytes(["first", "second"]) == b"first"
    assert field_bytes([[1, 2], "x"]) == b"\x01\x02"
    assert field_bytes(None) == b"" and field_bytes([]) == b""


ENTRY = {"__CURSOR": "s=abc;i=7", "MESSAGE": "GET / 200", "_SYSTEMD_UNIT": "nginx.service",
         "SYSLOG_IDENTIFIER": "nginx", "PRIORITY": "6", "_HOSTNAME": "web-01"}


def line(**changes) -> bytes:
    return json.dumps({k: v for k, v in {**ENTRY, **changes}.items() if v is not None}).encode()


def test_an_entry_as_a_raw_record():
    form = EntryFormat(journal_target(fields={"env": "prod", "canary": False}), b"agent-host")
    cursor, record = form.record(line())
    assert cursor == "s=abc;i=7"
    assert (record.value, record.key) == (b"GET / 200", b"nginx.service")
    assert record.headers == [("host", b"web-01"), ("unit", b"nginx.service"),
                              ("priority", b"6"), ("cursor", b"s=abc;i=7"),
                              ("canary", b"false"), ("env", b"prod")]
    _, bare = form.record(line(_SYSTEMD_UNIT=None, _HOSTNAME=None, MESSAGE=[0, 1]))
    assert bare.key == b"nginx" and bare.value == b"\x00\x01"
    assert dict(bare.headers)["host"] == b"agent-host"


def test_an_entry_as_json_with_its_fields_and_the_keys():
    raw = line()
    assert EntryFormat(journal_target(format="json"), b"h").record(raw)[1].value == raw
    with_fields = EntryFormat(journal_target(format="json", fields={"env": "prod"}, key="host"),
                              b"h").record(raw)[1]
    assert json.loads(with_fields.value) == {**ENTRY, "env": "prod"}
    assert with_fields.key == b"web-01"
    assert EntryFormat(journal_target(key="none"), b"h").record(raw)[1].key is None


def test_the_filters_drop_an_entry_but_give_its_cursor():
    form = EntryFormat(journal_target(include_lines=["GET"], exclude_lines=[" 500$"]), b"h")
    assert form.record(line())[1] is not None
    assert form.record(line(MESSAGE="POST / 200")) == ("s=abc;i=7", None)
    assert form.record(line(MESSAGE="GET / 500")) == ("s=abc;i=7", None)
    for bad in (b"[]", b'{"MESSAGE": "no cursor"}', b"not json"):
        with pytest.raises(ValueError):
            form.record(bad)


def test_a_partly_taken_batch_leaves_the_cursor_after_the_last_record_taken():
    dev, ino = journal_identity("journal:all")
    assert dev == 0 and ino > 0 and journal_identity("journal:all") == (dev, ino)
    end = FileCheckpoint("journal:all", "j", dev, ino, 0, "", 12, "c12")
    records = Records([b"u"] * 3, [[("cursor", b"c%d" % i)] for i in (3, 7, 11)],
                      ["c3", "c7", "c11"])
    job = Job("j", Envelope(None, ()), [b"a", b"b", b"c"], [3, 7, 11], lambda: None, end,
              records=records)
    assert job.position_after(3) == end
    assert (job.position_after(2).cursor, job.position_after(2).offset) == ("c7", 8)
    assert [m[2] for m in job.messages()] == records.headers
    part = job.part([1, 2])
    assert part.lines == [b"b", b"c"] and part.records.cursors == ["c7", "c11"]


def test_a_file_checkpoint_is_saved_without_a_cursor():
    file = FileCheckpoint("/var/log/a", "t", 1, 2, 0, "", 5)
    assert "cursor" not in file.as_dict()
    journal = FileCheckpoint("journal:all", "t", 0, 9, 0, "", 5, "s=1")
    assert FileCheckpoint(**journal.as_dict()) == journal


def test_a_static_journal_entry_and_journalctl_in_config_yaml():
    base = {"etcd": {"endpoints": ["127.0.0.1:2379"], "keys": ["k"]},
            "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]}, "allowed_paths": ["/srv/**"]}
    config = parse_config({**base, "logs": [{"journal": {"units": ["cron"]}, "topic": "j"}],
                           "journal": {"journalctl": "/opt/systemd/bin/journalctl"}}, Path("/"))
    assert [t.path for t in config.logs] == ["journal:unit=cron.service"]
    assert config.journal.journalctl == "/opt/systemd/bin/journalctl"
    assert parse_config(base, Path("/")).journal.journalctl == "journalctl"
    with pytest.raises(ConfigError, match=r"^logs\[0\]: journal\.directory: /var/log/journal "
                                          r".*outside allowed_paths"):
        parse_config({**base, "logs": [{"journal": {"directory": "/var/log/journal"},
                                        "topic": "j"}]}, Path("/"))
    with pytest.raises(ConfigError, match=r"^logs\[0\]: journal\.priority"):
        parse_config({**base, "logs": [{"journal": {"priority": "high"}, "topic": "j"}]},
                     Path("/"))
