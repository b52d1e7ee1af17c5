"""A topic Kafka refuses while it takes the others (here a name that collides with an
existing one once '.' and '_' are equated; a topic policy or an ACL is met the same way):
only the entries of that topic are held, named with Kafka's reason, and a fix on the
broker's side is picked up. Both Kafka clients, through the real agent."""

from __future__ import annotations

import pytest

from conftest import CLIENTS
from harness import has_all, numbered

pytestmark = pytest.mark.e2e


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


def test_a_refused_topic_holds_only_its_entry_and_ships_once_fixed(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    taken, refused = f"{topic}.coll", f"{topic}_coll"
    kafka.create_topic(taken)
    good, held = tmp_path / "good.log", tmp_path / "held.log"
    good.write_bytes(b"")
    held.write_bytes(numbered(0, 5))
    etcd.put(key, [{"path": str(good), "topic": topic},
                   {"path": str(held), "topic": refused, "read_from": "beginning"}])
    agent = make_agent(etcd, kafka, [key]).start()
    agent.wait_log(f"worker path={held} topic={refused} failed: key={key}: Kafka \\("
                   f"{kafka.address}\\) refuses topic {refused}: Topic '{refused}' collides with "
                   f"existing topic: {taken}; this entry's lines are held, the others ship; "
                   f"restarting in ")
    agent.wait_log(f"worker started path={good}")
    good.write_bytes(numbered(0, 10))
    reader(topic).wait_for(has_all(10), 60, "the other entry's lines")
    assert agent.metric("logship_kafka_up") == 1
    assert "Kafka unavailable" not in agent.log()
    kafka.delete_topic(taken)               # the fix, on the broker's side
    reader(refused).wait_for(has_all(5), 90, "the held entry's lines once Kafka takes them")
