"""Idle workers sleep until inotify wakes them: with the safety poll an hour away, every
change to a followed name must still arrive at once, also one whose event the kernel
dropped on a queue overflow. Where no event can come (a directory that is gone, a file
behind a symlink or with another hard link) the worker polls every poll_interval."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from harness import Agent, stat_fields, wait_until

pytestmark = pytest.mark.e2e

INOTIFY_ONLY = {"poll_interval": 0.5, "safety_poll_interval": 3600, "close_rotated_after": 1.0}


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_appends_truncation_and_a_late_file_wake_an_idle_worker(etcd, kafka, make_agent, reader,
                                                                key, topic, tmp_path):
    log, late = tmp_path / "app.log", tmp_path / "late.log"
    log.write_bytes(b"")
    etcd.put(key, [{"path": str(log), "topic": topic}, {"path": str(late), "topic": topic}])
    agent: Agent = make_agent(etcd, kafka, [key], files=INOTIFY_ONLY).start()
    agent.wait_log(f"worker started path={late}")
    topic_reader = reader(topic)
    append(log, b"a longer first line\n")
    topic_reader.wait_count(1, timeout=10)
    log.write_bytes(b"truncated\n")                    # shorter than what was read
    agent.wait_log("truncated", timeout=10)
    topic_reader.wait_count(2, timeout=10)
    late.write_bytes(b"late\n")
    topic_reader.wait_count(3, timeout=10)
    os.rename(log, tmp_path / "app.log.1")
    append(tmp_path / "app.log.1", b"to the rotated file\n")
    log.write_bytes(b"successor\n")
    records = topic_reader.wait_count(5, timeout=10)
    assert sorted(r.value for r in records) == sorted(
        [b"a longer first line", b"truncated", b"late", b"to the rotated file", b"successor"])


def test_a_deleted_and_recreated_directory_is_watched_again(etcd, kafka, make_agent, reader, key,
                                                            topic, tmp_path):
    directory = tmp_path / "app"
    directory.mkdir()
    log = directory / "app.log"
    etcd.put(key, [{"path": str(log), "topic": topic}])
    agent: Agent = make_agent(etcd, kafka, [key], files=INOTIFY_ONLY).start()
    agent.wait_log(f"worker started path={log}")
    topic_reader = reader(topic)
    log.write_bytes(b"one\n")
    topic_reader.wait_count(1, timeout=10)
    shutil.rmtree(directory)
    directory.mkdir()
    log.write_bytes(b"two\n")
    topic_reader.wait_count(2, timeout=10)
    agent.wait_log("rotated file finished and closed")  # the deleted file: no more polling
    append(log, b"three\n")                             # seen through the new directory's watch
    assert [r.value for r in topic_reader.wait_count(3, timeout=10)] == [b"one", b"two", b"three"]


def test_a_file_behind_a_symlink_is_polled(etcd, kafka, make_agent, reader, key, topic, tmp_path):
    target = tmp_path / "real" / "app.log"
    target.parent.mkdir()
    target.write_bytes(b"")
    link = tmp_path / "app.log"
    link.symlink_to(target)
    etcd.put(key, [{"path": str(link), "topic": topic}])
    agent: Agent = make_agent(etcd, kafka, [key], files=INOTIFY_ONLY).start()
    agent.wait_log(f"worker started path={link}")
    append(target, b"through the link\n")              # inotify reports it in real/, not here
    assert [r.value for r in reader(topic).wait_count(1, timeout=10)] == [b"through the link"]


def test_a_file_with_another_hard_link_is_polled(etcd, kafka, make_agent, reader, key, topic,
                                                tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    elsewhere = tmp_path / "other" / "app.log"
    elsewhere.parent.mkdir()
    os.link(log, elsewhere)       # written through this name, the event lands in other/
    etcd.put(key, [{"path": str(log), "topic": topic}])
    agent: Agent = make_agent(etcd, kafka, [key], files=INOTIFY_ONLY).start()
    agent.wait_log(f"worker started path={log}")
    append(elsewhere, b"no event for app.log\n")
    assert [r.value for r in reader(topic).wait_count(1, timeout=10)] == [b"no event for app.log"]


SWEPT = {**INOTIFY_ONLY, "safety_poll_interval": 0.5}


def test_a_file_in_a_symlinked_directory_is_found_by_the_sweep(etcd, kafka, make_agent, reader,
                                                               key, topic, tmp_path):
    real = tmp_path / "releases" / "1"
    real.mkdir(parents=True)
    current = tmp_path / "current"
    current.symlink_to(real)
    log = current / "app.log"
    _, topic_reader = first_line_shipped(etcd, kafka, make_agent, reader, key, topic, log, SWEPT)
    later = tmp_path / "releases" / "2"
    later.mkdir()
    (later / "app.log").write_bytes(b"")
    (tmp_path / "next").symlink_to(later)
    os.rename(tmp_path / "next", current)           # the link now leads elsewhere
    append(log, b"two\n")
    assert [r.value for r in topic_reader.wait_count(2, timeout=10)] == [b"one", b"two"]


def test_a_watched_directory_renamed_away_and_made_again_is_watched_again(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    directory = tmp_path / "app"
    directory.mkdir()
    log = directory / "app.log"
    _, topic_reader = first_line_shipped(etcd, kafka, make_agent, reader, key, topic, log, SWEPT)
    os.rename(directory, tmp_path / "app.1")       # its watch goes with it
    directory.mkdir()
    log.write_bytes(b"two\n")
    topic_reader.wait_count(2, timeout=10)
    append(log, b"three\n")
    assert [r.value for r in topic_reader.wait_count(3, timeout=10)] == [b"one", b"two", b"three"]


def test_events_lost_on_an_inotify_queue_overflow_are_found_by_a_sweep_at_once(
        etcd, kafka, make_agent, reader, key, topic, tmp_path):
    log = tmp_path / "app.log"
    agent, topic_reader = first_line_shipped(etcd, kafka, make_agent, reader, key, topic, log,
                                             INOTIFY_ONLY)
    # Its acknowledgement collected, the worker sleeps until an event comes.
    wait_until(lambda: [cp["offset"] for cp in agent.checkpoints()] == [4], 10,
               "the line's offset to be saved")
    agent.proc.send_signal(signal.SIGSTOP)      # nobody reads the kernel's queue now
    try:
        wait_until(lambda: stopped(agent.proc.pid), 10, "every thread of the agent to stop")
        flood(tmp_path, 2 * int(Path("/proc/sys/fs/inotify/max_queued_events").read_text()))
        append(log, b"its event is dropped\n")
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    agent.wait_log("inotify queue overflowed, events were lost: 1 idle file looked at, "
                   "1 had changed", timeout=10)
    assert [r.value for r in topic_reader.wait_count(2, timeout=10)] == [b"one",
                                                                         b"its event is dropped"]


def first_line_shipped(etcd, kafka, make_agent, reader, key, topic, log: Path, files: dict):
    """An agent following `log` alone, and a reader of its topic that has its line `one`."""
    etcd.put(key, [{"path": str(log), "topic": topic}])
    agent: Agent = make_agent(etcd, kafka, [key], files=files).start()
    agent.wait_log(f"worker started path={log}")
    topic_reader = reader(topic)
    append(log, b"one\n")
    topic_reader.wait_count(1, timeout=10)
    return agent, topic_reader


def stopped(pid: int) -> bool:
    """Every thread in the stopped state; one that ended meanwhile (the etcd client starts
    short-lived ones) does not count."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            states.append(stat_fields(task / "stat")[0])
        except FileNotFoundError:
            continue
    return all(state == "T" for state in states)


def flood(directory: Path, events: int) -> None:
    """More events than the kernel queues: names that come and go (two events each)."""
    for i in range(events // 2 + 100):
        path = directory / f"flood-{i}"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
        os.unlink(path)
