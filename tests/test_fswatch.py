"""Which idle files the agent's sweep looks at (real files; the observer is not started,
so no inotify event wakes anyone here: only the sweep does). The real queue overflow is in
test_idle_e2e."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from logship import fswatch
from logship.fswatch import DirWatcher, file_state, filesystem


@pytest.mark.parametrize("kind, swept", [("nfs4", True), ("fuse.sshfs", True), ("cifs", True),
                                         (None, True), ("ext4", False), ("xfs", False)])
def test_a_sweep_looks_at_idle_files_only_where_inotify_may_miss_a_write(
        tmp_path, monkeypatch, kind, swept):
    monkeypatch.setattr(fswatch, "filesystem", lambda dev: kind)
    watcher, path, woken = idle_file(tmp_path)
    path.write_bytes(b"written unseen\n")
    watcher.sweep()
    assert woken == ([path] if swept else [])


def test_after_an_overflow_one_sweep_looks_at_every_idle_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fswatch, "filesystem", lambda dev: "ext4")
    watcher, path, woken = idle_file(tmp_path)
    path.write_bytes(b"its event dropped\n")
    watcher.overflowed = True
    watcher.sweep()
    assert woken == [path] and not watcher.overflowed
    watcher.sweep()
    assert woken == [path]


def idle_file(directory: Path) -> tuple[DirWatcher, Path, list[Path]]:
    """An empty file whose subscriber is idle, and the list of its wakes."""
    path = directory / "app.log"
    path.write_bytes(b"")
    woken: list[Path] = []
    watcher = DirWatcher()
    subscription = watcher.subscribe(str(path), lambda: woken.append(path))
    subscription.idle_state = file_state(str(path))
    return watcher, path, woken


def test_the_filesystem_of_a_device_comes_from_the_mount_table():
    assert filesystem(os.stat("/proc").st_dev) == "proc"
    assert filesystem(os.makedev(4095, 1048575)) is None
