"""Many files in one etcd value: every one is followed and ships, a restart resumes every
one at its saved offset, a stop stops every worker, and a thread the process cannot have
is said in one line while the files that have one keep shipping. How fast is measured
by `make bench` (the scale rows), never here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import Agent, has_all, numbered, numbers

pytestmark = pytest.mark.e2e

FILES = 300


def one_value(directory: Path, topic: str, files: int) -> list[dict]:
    """`files` files over ten directories, file i holding the line numbered i."""
    entries = []
    for i in range(files):
        path = directory / f"d{i % 10}" / f"f{i}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(numbered(i, 1))
        entries.append({"path": str(path), "topic": topic, "read_from": "beginning"})
    return entries


def test_hundreds_of_files_in_one_value_ship_and_resume_at_their_offsets_after_a_restart(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    entries = one_value(tmp_path / "logs", topic, FILES)
    etcd.put(key, entries)
    agent: Agent = make_agent(etcd, kafka, [key]).start()
    topic_reader = reader(topic)
    topic_reader.wait_for(has_all(FILES), 120, "every file's line")
    assert agent.log().count("worker started path=") == FILES
    assert agent.log().count(": opened at offset 0") == FILES     # one start line each
    assert agent.stop(60) == 0
    assert "did not stop" not in agent.log()

    for i, entry in enumerate(entries):
        with open(entry["path"], "ab") as f:
            f.write(numbered(FILES + i, 1))
    agent.start()
    topic_reader.wait_for(has_all(2 * FILES), 120, "every file's second line")
    agent.wait_log(r"topic=\S+: resuming at offset 11", count=FILES)
    assert sorted(numbers(topic_reader.settle())) == list(range(2 * FILES)), \
        "a file was read again from its start, or not at all"


def pids_cgroup() -> Path | None:
    """A pids cgroup of our own (v1's pids hierarchy, or v2's unified one), where the
    kernel lets us make one: its pids.max caps the threads of the processes put in it."""
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        group = root / f"logship-test-{os.getpid()}"
        try:
            group.mkdir()
        except OSError:
            continue
        if (group / "pids.max").exists():
            return group
        group.rmdir()
    return None


def test_a_thread_the_process_cannot_have_is_said_once_and_the_started_files_ship(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    group = pids_cgroup()
    if group is None:
        pytest.skip("no pids cgroup can be made on this machine to cap the agent's threads")
    agent: Agent = make_agent(etcd, kafka, [key]).start()
    try:
        agent.wait_log(f"key={key} is absent")
        (group / "cgroup.procs").write_text(str(agent.proc.pid))
        threads = len(os.listdir(f"/proc/{agent.proc.pid}/task"))
        (group / "pids.max").write_text(str(threads + 10))
        etcd.put(key, one_value(tmp_path / "logs", topic, 50))
        line = agent.wait_log("worker: [0-9]+ could not start")
        assert "raise its limits (systemd TasksMax=" in line
        topic_reader = reader(topic)
        topic_reader.wait_count(5, timeout=30)          # those that have a thread ship

        (group / "pids.max").write_text("max")          # the operator raised the limit
        topic_reader.wait_for(has_all(50), 60, "every file, once threads could be had")
        assert agent.stop(60) == 0
    finally:
        if agent.proc is not None:
            agent.kill()
        group.rmdir()
