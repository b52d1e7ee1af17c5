"""Multiline events through the real agent, on both Kafka clients: one record per event,
a checkpoint never inside an event (kill -9 mid-event re-sends it whole), the last
event released after its timeout and at SIGTERM."""

from __future__ import annotations

import pytest

from conftest import CLIENTS
from harness import header, wait_until

pytestmark = pytest.mark.e2e
STACK = {"pattern": r"^\s", "timeout": 1}


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


def test_kill_9_inside_an_event_resends_it_whole(etcd, kafka, make_agent, reader, key, topic,
                                                 tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic, "multiline": {**STACK, "timeout": 60}}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker started path={log}")
    first = b"ERROR one\n  at a(A.java:1)\n  at b(B.java:2)\n"
    log.write_bytes(first + b"ERROR two\n  at c(C.java:3)\n")
    topic_reader = reader(topic)
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
