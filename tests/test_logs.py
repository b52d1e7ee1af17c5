"""Log line formatting (pure logic)."""

import json
import logging
import re

from logship.logs import JsonFormatter, SafeFormatter, plural, setup


def test_times_carry_their_zone_and_messages_stay_on_one_line():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\nb", None, None)
    line = SafeFormatter("%(asctime)s %(message)s").format(record)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d a\\x0ab", line)


def test_counts_read_as_words():
    assert [plural(n, "entry", "entries") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]


def test_a_json_line_names_the_key_path_and_topic_its_event_is_about():
    record = logging.LogRecord("logship.worker", logging.WARNING, __file__, 1,
                               "worker started path=%s topic=%s: %s",
                               ("/var/log/a.log", "t", "opened at offset 0"), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "logship.worker"
    assert line["message"] == "worker started path=/var/log/a.log topic=t: opened at offset 0"
    assert (line["path"], line["topic"]) == ("/var/log/a.log", "t")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d", line["time"])


def test_the_log_level_and_format_come_from_the_config():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup("warning", "json")
        assert root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
