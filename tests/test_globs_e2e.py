"""Glob entries through the real agent, on both Kafka clients: a worker per matching file
with its own key and offsets, new files picked up through inotify (the safety sweep is
set to ten minutes, so nothing else could find them in time), rotation out of and
within the glob, `**` under a directory that appears later, allowed_paths per match,
the files.max_files cap, and a file that appeared while the agent was down."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import CLIENTS
from harness import header, wait_until

pytestmark = pytest.mark.e2e

NO_SWEEP = {"poll_interval": 0.5, "close_rotated_after": 0.5, "safety_poll_interval": 600}


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


@pytest.fixture
def logs(tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir()
    return directory


def shipped(records) -> list[tuple[str, bytes, int]]:
    return sorted((r.key.decode(), r.value, int(header(r, "offset"))) for r in records)


def follow_glob(etcd, kafka, make_agent, key, entry: dict, *empty_files):
    """Empty files first, then the glob entry and an agent that follows each of them."""
    for path in empty_files:
        path.write_bytes(b"")
    etcd.put(key, [entry])
    agent = make_agent(etcd, kafka, [key], files=NO_SWEEP).start()
    for path in empty_files:
        agent.wait_log(f"worker started path={path}")
    return agent


def ship_and_save(agent, reader_, path, data: bytes) -> None:
    """Write a new file's lines, then wait for them in Kafka and for its saved offset."""
    path.write_bytes(data)
    reader_.wait_count(data.count(b"\n"))
    wait_until(lambda: any(c["path"] == str(path) and c["offset"] == len(data)
                           for c in agent.checkpoints()), 15, f"{path.name}'s offset saved")


def test_each_matching_file_is_followed_and_new_ones_are_picked_up(etcd, kafka, make_agent,
                                                                  reader, key, topic, logs):
    (logs / "a.log").write_bytes(b"old a\n")
    (logs / "b.log").write_bytes(b"old b\n")
    (logs / "c.txt").write_bytes(b"not matched\n")
    etcd.put(key, [{"path": f"{logs}/*.log", "topic": topic}])
    agent = make_agent(etcd, kafka, [key], files=NO_SWEEP).start()
    agent.wait_log(f"worker started path={logs}/b.log")
    agent.wait_log(f"worker started path={logs}/a.log")
    for name in ("a.log", "b.log"):
        with (logs / name).open("ab") as f:
            f.write(f"new {name}\n".encode())
    (logs / "d.log").write_bytes(b"first of d\n")
    records = reader(topic).wait_count(3, timeout=15)
    assert shipped(records) == [(f"{logs}/a.log", b"new a.log", 6),
                                (f"{logs}/b.log", b"new b.log", 6),
                                (f"{logs}/d.log", b"first of d", 0)], \
        "read_from: end for the files there at the start; a file that appears later whole"
    status = json.loads(agent.scrape("/api/status"))
    assert sorted((f["path"], f["glob"], f["keys"]) for f in status["files"]) == [
        (f"{logs}/{name}", f"{logs}/*.log", [key]) for name in ("a.log", "b.log", "d.log")]
    assert agent.metric("logship_workers_running", key=key) == 3


def test_a_file_renamed_out_of_the_glob_is_drained_then_let_go(etcd, kafka, make_agent, reader,
                                                              key, topic, logs):
    app, other = logs / "app.log", logs / "other.log"
    agent = follow_glob(etcd, kafka, make_agent, key, {"path": f"{logs}/*.log", "topic": topic},
                        app, other)
    reader_ = reader(topic)
    with app.open("ab", buffering=0) as writer, other.open("ab", buffering=0) as other_writer:
        writer.write(b"one\n")
        other_writer.write(b"other one\n")
        reader_.wait_count(2)
        app.rename(logs / "app.log.1")
        other.rename(logs / "other.old")
        writer.write(b"two\n")
        other_writer.write(b"other two\n")
    app.write_bytes(b"three\n")
    records = reader_.wait_count(5)
    assert shipped(records) == [(str(app), b"one", 0), (str(app), b"three", 0),
                                (str(app), b"two", 4), (str(other), b"other one", 0),
                                (str(other), b"other two", 10)]
    agent.wait_log(f"path={other} no longer matches and holds nothing more; its worker stops")
    agent.wait_log(f"worker stopped path={other}")
    assert "worker started path=" + str(logs / "app.log.1") not in agent.log()
    assert f"path={app} no longer matches" not in agent.log(), "app.log came back"


def test_a_file_renamed_within_the_glob_resumes_at_its_offset(etcd, kafka, make_agent, reader,
                                                             key, topic, logs):
    app = logs / "app.log"
    agent = follow_glob(etcd, kafka, make_agent, key, {"path": f"{logs}/app.log*", "topic": topic},
                        app)
    reader_ = reader(topic)
    ship_and_save(agent, reader_, app, b"one\ntwo\n")
    app.rename(logs / "app.log.1")
    agent.wait_log(rf"path={logs}/app.log.1 topic=\S+: resuming at offset 8")
    with (logs / "app.log.1").open("ab") as f:
        f.write(b"three\n")
    reader_.wait_for(lambda rs: any(r.value == b"three" for r in rs), 30, "three")
    assert [r for r in reader_.records if r.key == f"{logs}/app.log.1".encode()
            and int(header(r, "offset")) < 8] == [], "the renamed file is not sent again"


def test_a_recursive_glob_under_a_directory_that_appears_later(etcd, kafka, make_agent, reader,
                                                              key, topic, tmp_path):
    base = tmp_path / "later"
    etcd.put(key, [{"path": f"{base}/**/*.log", "topic": topic}])
    agent = make_agent(etcd, kafka, [key], files=NO_SWEEP).start()
    agent.wait_log(f"glob={base}/\\*\\*/\\*.log topic={topic}: matching files: 0 ")
    (base / "x" / "y").mkdir(parents=True)
    (base / "x" / "y" / "deep.log").write_bytes(b"deep\n")
    (base / "top.log").write_bytes(b"top\n")
    (base / "x" / "skip.txt").write_bytes(b"not matched\n")
    reader_ = reader(topic)
    assert shipped(reader_.wait_count(2, timeout=15)) == [(f"{base}/top.log", b"top", 0),
                                                          (f"{base}/x/y/deep.log", b"deep", 0)]
    shutil.rmtree(base)
    agent.wait_log(f"path={base}/top.log no longer matches and holds nothing more")
    (base / "z").mkdir(parents=True)
    (base / "z" / "again.log").write_bytes(b"again\n")
    reader_.wait_for(lambda rs: any(r.value == b"again" for r in rs), 15,
                     "a file under the directory made again")


def test_allowed_paths_per_match_and_the_max_files_cap(etcd, kafka, make_agent, reader, key,
                                                      topic, logs):
    for name in ("a", "b", "c"):
        (logs / f"{name}.log").write_bytes(f"{name}1\n".encode())
    os.symlink("/etc/passwd", logs / "evil.log")
    etcd.put(key, [{"path": f"{logs}/*.log", "topic": topic, "read_from": "beginning"}])
    agent = make_agent(etcd, kafka, [key], files={**NO_SWEEP, "max_files": 2}).start()
    agent.wait_log(rf"{logs}/evil.log \(real path /etc/passwd\) is outside allowed_paths; "
                   "not followed")
    agent.wait_log(r"1 matching file not followed: the agent follows at most files.max_files "
                   r"\(2\) files")
    reader_ = reader(topic)
    assert shipped(reader_.wait_count(2)) == [(f"{logs}/a.log", b"a1", 0),
                                              (f"{logs}/b.log", b"b1", 0)]
    assert agent.metric("logship_files_unfollowed") == 1
    (logs / "a.log").unlink()
    agent.wait_log(f"glob={logs}/\\*.log topic={topic}: every matching file is followed again")
    reader_.wait_for(lambda rs: any(r.value == b"c1" for r in rs), 30, "c.log shipped")
    assert b"root:" not in b"".join(r.value for r in reader_.records)
    assert agent.metric("logship_files_unfollowed") == 0


def test_a_file_that_appeared_while_the_agent_was_down_is_shipped_whole(etcd, kafka, make_agent,
                                                                       reader, key, topic, logs):
    app = logs / "a.log"
    agent = follow_glob(etcd, kafka, make_agent, key, {"path": f"{logs}/*.log", "topic": topic},
                        app)
    reader_ = reader(topic)
    ship_and_save(agent, reader_, app, b"one\n")
    agent.kill()
    (logs / "b.log").write_bytes(b"while down\n")
    with app.open("ab") as f:
        f.write(b"two\n")
    agent.start()
    reader_.wait_for(lambda rs: {b"while down", b"two"} <= {r.value for r in rs}, 30,
                     "both lines written while the agent was down")
    assert [r.value for r in reader_.records].count(b"one") == 1
