"""Line filters and the JSON record format (pure logic)."""

from __future__ import annotations

import json
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logship.processors import Processor
from logship.spec import Multiline, Options, Target, parse_entry
from logship.tailer import Chunk


def processor(**options) -> Processor:
    return Processor(Target("/var/log/app.log", "t", options=Options(**options)), "web-01")


def test_include_first_then_exclude_and_the_offsets_of_what_stays():
    chunk = chunk_of([b"INFO a", b"ERROR b", b"ERROR DEBUG c", b"WARN d"])
    result = processor(include_lines=("ERROR", "^WARN"), exclude_lines=("DEBUG",)).process(
        chunk, now=0.0)
    assert (chunk.lines, chunk.offsets, result.filtered) == ([b"ERROR b", b"WARN d"], [7, 29], 2)


def test_a_json_record_carries_the_line_its_origin_and_the_constant_fields():
    chunk = chunk_of([b'say "hi"\t\xff'], start=42)
    processor(format="json", fields=(("service", "billing"), ("tier", 2))).process(chunk, 0.0)
    record = json.loads(chunk.lines[0])
    assert record.pop("@timestamp").endswith("+00:00")
    assert record == {"message": 'say "hi"\t\ufffd', "path": "/var/log/app.log", "host": "web-01",
                      "offset": 42, "service": "billing", "tier": 2}


def test_json_message_embeds_an_object_and_counts_what_is_not_one():
    chunk = chunk_of([b'{"level": "error", "n": 1}', b"not json", b"[1, 2]"])
    result = processor(format="json", json_message=True).process(chunk, now=0.0)
    messages = [json.loads(line)["message"] for line in chunk.lines]
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


def chunk_of(lines: list[bytes], start: int = 0) -> Chunk:
    offsets = list(accumulate((len(line) + 1 for line in lines), initial=start))
    return Chunk(FOLLOWED, list(lines), offsets[:-1], offsets[-1])


FOLLOWED = object()
TRACE = [b"2026-12-02 ERROR boom", b"  at a.b(C.java:1)", b"  at d.e(F.java:2)", b"2026-12-02 INFO ok"]


def test_multiline_after_joins_continuations_and_holds_the_last_event():
    p = processor(multiline=Multiline(pattern=r"^\s"))
    chunk = chunk_of(TRACE)
    p.process(chunk, now=0.0)
    assert chunk.lines == [b"2026-12-02 ERROR boom\n  at a.b(C.java:1)\n  at d.e(F.java:2)"]
    assert chunk.offsets == [0]
    assert chunk.end_offset == 60, "the held event's start: a checkpoint never inside it"
    assert p.next_release() == 5.0 and p.expired(4.9) is None
    released, _ = p.expired(5.0)
    assert (released.lines, released.offsets, released.end_offset) == (
        [b"2026-12-02 INFO ok"], [60], 79)


def test_multiline_negate_and_before_and_max_lines():
    negated = processor(multiline=Multiline(pattern=r"^\d{4}", negate=True, max_lines=2))
    chunk = chunk_of(TRACE)
    negated.process(chunk, now=0.0)
    assert chunk.lines == [b"2026-12-02 ERROR boom\n  at a.b(C.java:1)"]
    before = processor(multiline=Multiline(pattern=r"\\$", match="before"))
    chunk = chunk_of([b"a \\", b"b \\", b"c", b"d"])
    before.process(chunk, now=0.0)
    assert (chunk.lines, chunk.offsets, chunk.end_offset) == (
        [b"a \\\nb \\\nc", b"d"], [0, 10], 12)


def test_a_multiline_event_is_filtered_and_formatted_whole():
    p = processor(multiline=Multiline(pattern=r"^\s"), exclude_lines=("INFO",), format="json")
    chunk = chunk_of(TRACE + [b"2026-12-02 WARN x"])
    result = p.process(chunk, now=0.0)
    assert [json.loads(line)["message"] for line in chunk.lines] == [
        "2026-12-02 ERROR boom\n  at a.b(C.java:1)\n  at d.e(F.java:2)"]
    assert result.filtered == 1


@given(st.lists(st.binary(max_size=40) | st.sampled_from([b'", "', b'\\", "', b"\\", b'"']),
                min_size=1, max_size=20))
def test_json_records_hold_each_message_exactly(lines):
    """The encoder splits one json.dumps of all the messages apart again: any bytes,
    quotes, backslashes and the separator itself included, come back whole."""
    chunk = chunk_of(lines)
    processor(format="json").process(chunk, now=0.0)
    assert [json.loads(record)["message"] for record in chunk.lines] == [
        line.decode("utf-8", "replace") for line in lines]


@given(st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126)), min_size=1,
                max_size=20))
def test_plain_ascii_lines_fill_the_record_template_exactly(texts):
    """Lines with nothing to escape take the bytes template: `%` and non-ASCII in the
    path and the fields must come out as written, whatever the lines hold."""
    chunk = chunk_of([text.encode() for text in texts])
    target = Target("/var/log/100%-été.log", "t",
                    options=Options(format="json", fields=(("p%d", "x%s"),)))
    Processor(target, "h%b").process(chunk, now=0.0)
    documents = [json.loads(record) for record in chunk.lines]
    assert [d["message"] for d in documents] == texts
    assert [d["offset"] for d in documents] == chunk.offsets
    assert {(d["path"], d["host"], d["p%d"]) for d in documents} == {
        ("/var/log/100%-été.log", "h%b", "x%s")}


def events_one_by_one(lines: list[bytes], offsets: list[int], after: bool,
                      max_lines: int) -> list[tuple[bytes, int]]:
    """Filebeat's multiline, a line at a time: the model the chunked Joiner must equal.
    A line starting with a space continues an event. Events with their first offsets."""
    events, held, start = [], [], 0
    for line, offset in zip(lines, offsets):
        continues = line.startswith(b" ")
        if after and not continues and held:
            events.append((b"\n".join(held), start))
            held = []
        if not held:
            start = offset
        if len(held) < max_lines:
            held.append(line)
        if not after and not continues:
            events.append((b"\n".join(held), start))
            held = []
    return events + ([(b"\n".join(held), start)] if held else [])


@given(st.lists(st.sampled_from([b"start", b" more", b"x", b" y"]), max_size=40),
       st.lists(st.integers(1, 7), min_size=1), st.booleans(), st.integers(1, 4))
def test_multiline_in_chunks_equals_one_line_at_a_time(lines, cuts, after, max_lines):
    """Events, their offsets, and a checkpoint that never points past a held event's start."""
    p = processor(multiline=Multiline(pattern=r"^ ", match="after" if after else "before",
                                      max_lines=max_lines))
    offsets = list(accumulate((len(line) + 1 for line in lines), initial=0))
    events, i = [], 0
    for size in cuts * (len(lines) + 1):
        if i >= len(lines):
            break
        stop = min(i + size, len(lines))
        chunk = Chunk(None, lines[i:stop], offsets[i:stop], offsets[stop])
        p.process(chunk, now=0.0)
        events += zip(chunk.lines, chunk.offsets)
        i = stop
        unfinished = [start for _, start in events_one_by_one(lines[:i], offsets, after,
                                                               max_lines)[len(events):]]
        assert chunk.end_offset == (unfinished[0] if unfinished else offsets[i])
    released = p.expired(0.0, force=True)
    events += zip(released[0].lines, released[0].offsets) if released else []
    assert events == events_one_by_one(lines, offsets, after, max_lines)
