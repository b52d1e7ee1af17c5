"""Line filters and the JSON record format (pure logic)."""

from __future__ import annotations

import json

import pytest

from logship.processors import Processor
from logship.spec import Options, Target, parse_entry


def processor(**options) -> Processor:
    return Processor(Target("/var/log/app.log", "t", options=Options(**options)), "web-01")


def test_include_first_then_exclude_and_the_offsets_of_what_stays():
    lines = [b"INFO a", b"ERROR b", b"ERROR DEBUG c", b"WARN d"]
    result = processor(include_lines=("ERROR", "^WARN"), exclude_lines=("DEBUG",)).process(
        lines, [0, 7, 15, 29])
    assert (result.lines, result.offsets, result.filtered) == ([b"ERROR b", b"WARN d"], [7, 29], 2)


def test_a_json_record_carries_the_line_its_origin_and_the_constant_fields():
    result = processor(format="json", fields=(("service", "billing"), ("tier", 2))).process(
        [b'say "hi"\t\xff'], [42])
    record = json.loads(result.lines[0])
    assert record.pop("@timestamp").endswith("+00:00")
    assert record == {"message": 'say "hi"\t\ufffd', "path": "/var/log/app.log", "host": "web-01",
                      "offset": 42, "service": "billing", "tier": 2}


def test_json_message_embeds_an_object_and_counts_what_is_not_one():
    result = processor(format="json", json_message=True).process(
        [b'{"level": "error", "n": 1}', b"not json", b"[1, 2]"], [0, 27, 36])
    messages = [json.loads(line)["message"] for line in result.lines]
    assert messages == [{"level": "error", "n": 1}, "not json", "[1, 2]"]
    assert result.invalid_json == 2


def test_a_plain_entry_needs_no_processor():
    assert not Processor.needed(parse_entry({"path": "/a", "topic": "t", "key": "host"}).options)


@pytest.mark.parametrize("entry, message", [
    ({"include_lines": ["("]}, r"include_lines\[0\]: invalid regular expression"),
    ({"exclude_lines": "x"}, "exclude_lines: must be a list of regular expressions"),
    ({"format": "xml"}, "format: must be one of raw, json"),
    ({"key": "topic"}, "key: must be one of path, host, none"),
    ({"json_message": True}, 'json_message: needs "format": "json"'),
    ({"fields": {"message": "x"}}, "fields: \"message\" is a field of every record"),
    ({"fields": {"a": [1]}}, "fields.a: must be a string, number or boolean"),
])
def test_options_that_cannot_work_are_refused_naming_the_field(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_entry({"path": "/var/log/a", "topic": "t", **entry})
