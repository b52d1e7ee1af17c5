"""Log line formatting (pure logic)."""

import logging
import re

from logship.logs import SafeFormatter, plural


def test_times_carry_their_zone_and_messages_stay_on_one_line():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\nb", None, None)
    line = SafeFormatter("%(asctime)s %(message)s").format(record)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d a\\x0ab", line)


def test_counts_read_as_words():
    assert [plural(n, "entry", "entries") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
