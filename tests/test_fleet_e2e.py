"""A fleet seen and steered through etcd: agent names, per-agent keys, the status
document on a lease, `logship status`, /api/status, the lag gauge and JSON logs."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from harness import Agent, Etcd, KeyWrites, logship, numbered, unique, wait_until
from test_delivery_e2e import Writer

pytestmark = pytest.mark.e2e


def fleet_agent(workdir, etcd, kafka, name: str, prefix: str, **sections) -> Agent:
    workdir.mkdir(exist_ok=True)
    return Agent(workdir, etcd, kafka, [prefix + "hosts/{name}"], agent={"name": name},
                 status={"prefix": prefix + "agents/", "ttl": 3, "interval": 0.5,
                         "progress_interval": 1}, **sections)


def statuses(agent: Agent, *args: str) -> list[dict]:
    result = logship("status", "--json", "--config", agent.config_path, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def status_of(agent: Agent, name: str) -> dict | None:
    return next((d for d in statuses(agent) if d["name"] == name), None)


def first_file(doc: dict | None) -> dict:
    """The first document may be written before the worker started: no files yet."""
    return doc["files"][0] if doc and doc["files"] else {}


@pytest.fixture
def prefix():
    return f"/{unique('fleet')}/"


def test_two_agents_read_their_own_keys_and_show_in_status(etcd, kafka, reader, prefix, topic,
                                                          tmp_path):
    agents = {name: fleet_agent(tmp_path / name, etcd, kafka, name, prefix,
                                log={"format": "json"})
              for name in ("web-a", "web-b")}
    try:
        for name, agent in agents.items():
            log = agent.workdir / "app.log"
            log.write_bytes(b"")
            value = agent.workdir / "value.json"
            value.write_text(json.dumps([{"path": str(log), "topic": topic}]))
            put = logship("put", "--config", agent.config_path, prefix + "hosts/{name}", value)
            assert put.stdout.decode() == f"key={prefix}hosts/{name}: wrote 1 entry\n", put.stderr
            agent.start().wait_log(f"worker started path={log}")
            log.write_bytes(b"from %s\n" % name.encode())
        records = reader(topic).wait_count(2)
        assert sorted(r.value for r in records) == [b"from web-a", b"from web-b"]
        for name, agent in agents.items():
            wait_until(lambda: first_file(status_of(agents["web-a"], name)).get("records_sent") == 1,
                       10, f"{name}'s status with its line counted")
            doc = status_of(agent, name)
            assert doc["keys"] == [f"{prefix}hosts/{name}"]
            assert doc["kafka"] == "ok" and doc["pid"] == agent.proc.pid
            [entry] = doc["files"]
            assert entry["path"] == str(agent.workdir / "app.log")
            assert entry["keys"] == [f"{prefix}hosts/{name}"]
        table = logship("status", "--config", agents["web-a"].config_path).stdout.decode()
        assert table.startswith("NAME ") and "web-a" in table and "web-b" in table
        assert len(statuses(agents["web-b"], "web-b")) == 1
        lines = [json.loads(line) for line in agents["web-a"].log().splitlines()]
        started = [line for line in lines if line["message"].startswith("worker started")]
        assert started[0]["path"] == str(agents["web-a"].workdir / "app.log")
        assert started[0]["topic"] == topic and started[0]["level"] == "INFO"
    finally:
        for agent in agents.values():
            if agent.proc is not None:
                agent.kill()


def test_sigterm_removes_the_status_at_once_and_kill_9_lets_it_expire(etcd, kafka, prefix,
                                                                       tmp_path):
    agent = fleet_agent(tmp_path, etcd, kafka, "web-c", prefix)
    agent.config["status"]["ttl"] = 60
    agent.write_config()
    agent.start()
    wait_until(lambda: status_of(agent, "web-c"), 15, "the status document")
    assert agent.stop() == 0
    assert status_of(agent, "web-c") is None, "revoked with the lease, long before its ttl"
    agent.config["status"]["ttl"] = 3
    agent.write_config()
    agent.start()
    wait_until(lambda: status_of(agent, "web-c"), 15, "the status document again")
    agent.signal(signal.SIGKILL)
    agent.proc.wait()
    agent.proc = None
    wait_until(lambda: status_of(agent, "web-c") is None, 30, "the lease to expire")


def test_status_shows_lag_while_kafka_is_down_and_none_after(etcd, own_kafka, reader, prefix,
                                                            topic, tmp_path):
    if own_kafka.proc is None:
        own_kafka.start()
    agent = fleet_agent(tmp_path, etcd, own_kafka, "web-d", prefix)
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    etcd.put(prefix + "hosts/web-d", [{"path": str(log), "topic": topic}])
    try:
        agent.start().wait_log(f"worker started path={log}")
        log.write_bytes(numbered(0, 10))
        reader(topic, own_kafka).wait_count(10)
        own_kafka.stop()
        with log.open("ab") as f:
            f.write(numbered(10, 1000))
        # The status follows /metrics within one status.interval (0.5 s here; the deadlines
        # allow for `logship status` itself), long before Kafka counts as down (10 s).
        wait_until(lambda: agent.metric("logship_lag_bytes", topic=topic) > 0, 10,
                   "the lag in /metrics")
        wait_until(lambda: first_file(status_of(agent, "web-d")).get("lag_bytes"), 5,
                   "the same lag in the status document")
        wait_until(lambda: agent.metric("logship_kafka_up") == 0, 60, "Kafka down in /metrics")
        wait_until(lambda: (status_of(agent, "web-d") or {}).get("kafka") == "unavailable", 5,
                   "Kafka down in the status document")

        def held():
            doc = status_of(agent, "web-d")
            return doc if doc and doc["kafka"] == "unavailable" and first_file(doc).get("lag_bytes") \
                else None
        doc = wait_until(held, 60, "a status with lag while Kafka is down")
        assert doc["files"][0]["state"] == "held"
        assert doc["files"][0]["size"] == log.stat().st_size
        assert agent.metric("logship_lag_bytes", topic=topic) > 0
        api = json.loads(agent.scrape("/api/status"))
        assert api["name"] == "web-d" and api["files"][0]["lag_bytes"] > 0
        own_kafka.start()

        def caught_up():
            doc = status_of(agent, "web-d")
            return doc and doc["kafka"] == "ok" and first_file(doc).get("lag_bytes") == 0
        wait_until(caught_up, 120, "the lag to drop to 0 after Kafka returned")
        assert agent.metric("logship_lag_bytes", topic=topic) == 0
        assert json.loads(agent.scrape("/api/status"))["files"][0]["state"] == "shipping"
    finally:
        if agent.proc is not None:
            agent.kill()


def test_a_second_agent_of_the_same_name_is_told_and_leaves_the_first_ones_status(
        etcd, kafka, prefix, tmp_path):
    first = fleet_agent(tmp_path / "first", etcd, kafka, "web-f", prefix)
    second = fleet_agent(tmp_path / "second", etcd, kafka, "web-f", prefix)
    try:
        first.start()
        wait_until(lambda: (status_of(first, "web-f") or {}).get("pid") == first.proc.pid, 15,
                   "the first agent's status")
        second.start()
        told = (f"status {prefix}agents/web-f: another live agent has the same agent.name "
                f"\\(host {socket.gethostname()}, pid {first.proc.pid}, started ")
        second.wait_log(told)
        assert second.stop() == 0
        assert status_of(first, "web-f")["pid"] == first.proc.pid, "kept at the second's stop"
        second.start().wait_log(told, count=2)
        assert first.stop() == 0
        second.wait_log(f"status {prefix}agents/web-f: the other agent of this name has gone; "
                        f"status written")
        wait_until(lambda: (status_of(second, "web-f") or {}).get("pid") == second.proc.pid, 10,
                   "the second agent's status")
    finally:
        for agent in (first, second):
            if agent.proc is not None:
                agent.kill()


def test_an_agent_rewrites_its_status_only_when_it_changes(etcd, kafka, prefix, topic, tmp_path):
    """Counted with a watch on each key: an idle agent writes nothing while its lease is
    kept alive; a busy one writes its counters at most every progress_interval; a new
    file is written within status.interval."""
    idle = fleet_agent(tmp_path / "idle", etcd, kafka, "quiet-1", prefix)
    busy = fleet_agent(tmp_path / "busy", etcd, kafka, "busy-1", prefix)
    for agent in (idle, busy):
        agent.config["status"]["progress_interval"] = 2
        agent.write_config()
    log = busy.workdir / "busy.log"
    log.write_bytes(b"")
    idle_value = [{"path": str(idle.workdir / "idle.log"), "topic": topic}]
    etcd.put(prefix + "hosts/quiet-1", idle_value)
    etcd.put(prefix + "hosts/busy-1", [{"path": str(log), "topic": topic}])
    writer = Writer(log, total=10**9, rate=200, batch=20)
    watches: list[KeyWrites] = []
    try:
        idle.start().wait_log("worker started")
        busy.start().wait_log("worker started")
        writer.start()
        wait_until(lambda: (status_of(busy, "busy-1") or {}).get("records_sent"), 20,
                   "the busy agent's records in its status")
        wait_until(lambda: first_file(status_of(idle, "quiet-1")).get("state") == "waiting", 10,
                   "the idle agent's status with its file")
        watches = [KeyWrites(etcd, prefix + "agents/" + name) for name in ("quiet-1", "busy-1")]
        started = time.monotonic()
        wait_until(lambda: len(watches[1].writes) >= 4, 30, "four writes of the busy agent")
        window = time.monotonic() - started
        assert watches[0].writes == [], "the idle agent rewrote an unchanged document"
        assert len(watches[1].writes) <= window / 2 + 1, (len(watches[1].writes), window)
        assert all(len(value) < 4096 for _, value in watches[1].writes)
        assert status_of(idle, "quiet-1") is not None, "its lease kept alive"
        assert idle.metric("logship_status_current_timestamp_seconds") > time.time() - 3
        assert idle.metric("logship_status_written_timestamp_seconds") < time.time() - window

        etcd.put(prefix + "hosts/quiet-1",
                 idle_value + [{"path": str(idle.workdir / "new.log"), "topic": topic}])
        wait_until(lambda: watches[0].writes, 5, "a new file written within status.interval")
        assert json.loads(watches[0].writes[-1][1])["files_total"] == 2
    finally:
        writer.stop()
        for watch in watches:
            watch.close()
        for agent in (idle, busy):
            if agent.proc is not None:
                agent.kill()


def test_a_status_of_2000_files_stays_small_and_api_status_lists_them_all(
        etcd, kafka, prefix, topic, tmp_path):
    agent = fleet_agent(tmp_path / "agent", etcd, kafka, "wide-1", prefix)
    logs = agent.workdir / "logs"
    logs.mkdir()
    for i in range(2000):
        (logs / f"file-{i:04d}-with-a-name-of-some-length.log").write_bytes(b"")
    etcd.put(prefix + "hosts/wide-1", [{"path": str(logs / "*.log"), "topic": topic}])
    try:
        agent.start()
        doc = wait_until(lambda: (d := status_of(agent, "wide-1")) and d["files_total"] == 2000
                         and d["files_by_state"] == {"shipping": 2000} and d, 120,
                         "a status of 2,000 files, all shipping")
        value = etcd.get(prefix + "agents/wide-1")
        assert len(value) <= 16 * 1024, len(value)
        assert 0 < len(doc["files"]) <= 10
        assert len(json.loads(agent.scrape("/api/status"))["files"]) == 2000
    finally:
        if agent.proc is not None:
            agent.kill()


def fleet_documents(etcd: Etcd, prefix: str, count: int, size: int) -> None:
    """`count` documents of `size` bytes, as agents write them."""
    doc = {"host": "h", "pid": 1, "version": "0.1.0", "kafka": "ok", "delivery": "at-least-once",
           "updated": "2026-12-07T10:00:00.000+00:00", "interval": 5.0, "progress_interval": 60.0,
           "files_total": 20, "files_by_state": {"shipping": 20}, "lag_bytes": 0,
           "records_sent": 100, "records_per_second": 0.0, "health": "ok",
           "files": [{"path": f"/var/log/app-{i}.log", "topic": "app", "keys": ["k"],
                      "state": "shipping", "offset": 1, "size": 1, "lag_bytes": 0,
                      "records_sent": 5, "records_per_second": 0.0, "last_error": None}
                     for i in range(10)]}
    doc["padding"] = "x" * (size - len(json.dumps(doc)))
    etcd.put_all({f"{prefix}agent-{i:05d}": json.dumps({**doc, "name": f"agent-{i:05d}"})
                  for i in range(count)})


def test_status_and_top_read_a_fleet_larger_than_one_etcd_message(etcd, kafka, prefix, tmp_path):
    """1,200 documents of 5 kB: 6 MB under the prefix, beyond gRPC's 4 MiB per message."""
    fleet_documents(etcd, prefix + "agents/", 1200, 5000)
    viewer = fleet_agent(tmp_path, etcd, kafka, "viewer", prefix)
    documents = statuses(viewer)
    assert [d["name"] for d in documents] == [f"agent-{i:05d}" for i in range(1200)]
    table = logship("status", "--config", viewer.config_path)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.decode().split("\n\n")[0].splitlines()
    assert len(rows) == 1 + 1200 and rows[1].startswith("agent-00000 ")
    [one] = statuses(viewer, "agent-00777")
    assert one["name"] == "agent-00777"
    frame = logship("top", "--config", viewer.config_path)
    assert frame.returncode == 0, frame.stderr
    assert frame.stdout.decode().startswith("logship top: 1200 agents, 24000 files")
    named = logship("top", "--config", viewer.config_path, "--agent", "agent-00001",
                    "agent-01199")
    assert named.stdout.decode().startswith("logship top: 2 agents"), named.stderr


def test_status_says_when_etcd_cannot_be_reached(kafka, tmp_path):
    agent = fleet_agent(tmp_path, ["127.0.0.1:1"], kafka, "web-e", "/x/")
    result = logship("status", "--config", agent.config_path)
    assert result.returncode == 1
    assert result.stderr.decode() == ("logship: error: no etcd endpoint answered (127.0.0.1:1: "
                                      "connection refused)\n")
