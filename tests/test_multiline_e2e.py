"""Multiline events through the real agent, on both Kafka clients: one record per event,
a checkpoint never inside an event (kill -9 mid-event re-sends it whole), the last
event released after its timeout and at SIGTERM, and the Java recipes of docs/etcd-value.md."""

from __future__ import annotations

import pytest

from conftest import CLIENTS
from harness import header, unique, wait_until

pytestmark = pytest.mark.e2e
STACK = {"pattern": r"^\s", "timeout": 1}
# The recipes of docs/etcd-value.md: a bare Java trace, and log lines that start with a date.
JAVA_TRACE = {"pattern": r"^(\s|Caused by:)", "timeout": 1}
DATED = {"pattern": r"^\d{4}-\d{2}-\d{2}", "negate": True, "timeout": 1}
# As the JVM prints it: causes, a suppressed exception, and frames in common elided.
TRACE = b"""\
java.lang.IllegalStateException: request 42 failed
\tat com.example.shop.OrderService.place(OrderService.java:88)
\tat com.example.shop.OrderController.post(OrderController.java:31)
\tat java.base/java.lang.Thread.run(Thread.java:840)
\tSuppressed: java.io.UncheckedIOException: java.io.IOException: close failed
\t\tat com.example.shop.Ledger.close(Ledger.java:57)
\t\tat com.example.shop.OrderService.place(OrderService.java:86)
\t\t... 2 more
\tCaused by: java.io.IOException: close failed
\t\tat com.example.shop.Ledger.flush(Ledger.java:61)
\t\t... 4 more
Caused by: java.sql.SQLTransientConnectionException: pool exhausted after 30000ms
\tat com.example.db.Pool.borrow(Pool.java:112)
\tat com.example.shop.OrderService.place(OrderService.java:79)
\t... 2 more
Caused by: java.net.SocketTimeoutException: Read timed out
\tat java.base/sun.nio.ch.NioSocketImpl.timedRead(NioSocketImpl.java:288)
\tat com.example.db.Pool.borrow(Pool.java:104)
\t... 3 more
"""


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_kill_9_inside_an_event_resends_it_whole(etcd, kafka, make_agent, reader, key, topic,
                                                 tmp_path, delivery):
    """Exactly-once, read_committed: also never twice."""
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic, "multiline": {**STACK, "timeout": 60}}])
    agent = make_agent(etcd, kafka, [key], agent={"name": unique("ml")})
    agent.config["kafka"]["delivery"] = delivery
    agent.write_config()
    agent.start().wait_log(f"worker started path={log}")
    first = b"ERROR one\n  at a(A.java:1)\n  at b(B.java:2)\n"
    log.write_bytes(first + b"ERROR two\n  at c(C.java:3)\n")
    topic_reader = reader(topic, committed=delivery == "exactly-once")
    assert [r.value for r in topic_reader.wait_count(1)] == [first.rstrip(b"\n")]
    wait_until(lambda: [c["offset"] for c in agent.checkpoints()] == [len(first)], 15,
               "the checkpoint at the held event's start")
    agent.kill()
    with log.open("ab") as f:
        f.write(b"  at d(D.java:4)\nINFO three\n")
    agent.start()
    records = topic_reader.wait_count(2)
    assert records[1].value == b"ERROR two\n  at c(C.java:3)\n  at d(D.java:4)"
    assert header(records[1], "offset") == b"%d" % len(first)
    agent.stop()
    assert [r.value for r in topic_reader.wait_count(3)][2] == b"INFO three", \
        "the held last event is sent at SIGTERM"
    if delivery == "exactly-once":
        assert len(topic_reader.settle(1.5)) == 3


def test_the_last_event_is_released_after_its_timeout(etcd, kafka, make_agent, reader, key,
                                                     topic, tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic, "multiline": STACK}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    log.write_bytes(b"Traceback (most recent call last):\n  File \"x.py\", line 1\n")
    records = reader(topic).wait_count(1, timeout=30)
    assert records[0].value == b'Traceback (most recent call last):\n  File "x.py", line 1'
    size = log.stat().st_size
    wait_until(lambda: [c["offset"] for c in agent.checkpoints()] == [size], 15,
               "the checkpoint past the released event")


def test_the_readme_java_recipes_keep_a_multi_cause_trace_in_one_record(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    bare, dated = tmp_path / "bare.log", tmp_path / "dated.log"
    bare_topic, dated_topic = f"{topic}-bare", f"{topic}-dated"
    for log in (bare, dated):
        log.write_bytes(b"")
    etcd.put(key, [{"path": str(bare), "topic": bare_topic, "multiline": JAVA_TRACE},
                   {"path": str(dated), "topic": dated_topic, "multiline": DATED}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={bare}")
    agent.wait_log(f"worker started path={dated}")
    before, after = b"2026-12-02 10:00:00,001 ERROR [http-1] OrderController: boom\n", \
        b"2026-12-02 10:00:01,002 INFO [http-2] OrderController: next\n"
    bare.write_bytes(TRACE + TRACE)
    dated.write_bytes(before + TRACE + after)
    trace = TRACE.rstrip(b"\n")
    assert [r.value for r in reader(bare_topic).wait_count(2, timeout=30)] == [trace, trace]
    assert [r.value for r in reader(dated_topic).wait_count(2, timeout=30)] == [
        before + trace, after.rstrip(b"\n")]
    lines = TRACE.count(b"\n")
    assert agent.metric("logship_lines_read_total", topic=dated_topic) == lines + 2
    wait_until(lambda: agent.metric("logship_records_sent_total", topic=dated_topic) == 2, 10,
               "two records counted for the dated file's lines")
