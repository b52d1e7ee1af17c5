"""The glob dialect, glob entries in the etcd value, and Discovery's bookkeeping (real
directories; a recording fake stands in for inotify, which the e2e tests use for real)."""

from __future__ import annotations

import os

import pytest

from logship.checkpoint import CheckpointStore, FileCheckpoint
from logship.discovery import Discovery
from logship.fswatch import TreeSubscription
from logship.globs import GlobRoot, compile_glob, glob_root, walk_matches
from logship.spec import Target, parse_value


@pytest.mark.parametrize("pattern, path, matches", [
    ("/var/log/*.log", "/var/log/a.log", True),
    ("/var/log/*.log", "/var/log/sub/a.log", False),
    ("/var/log/*.log", "/var/log/.hidden.log", True),
    ("/var/log/?.log", "/var/log/ab.log", False),
    ("/var/log/[ab].log", "/var/log/b.log", True),
    ("/var/log/[!ab].log", "/var/log/b.log", False),
    ("/var/log/[!ab].log", "/var/log/c.log", True),
    ("/var/log/[a-c]*", "/var/log/cat", True),
    ("/var/log/[/]x", "/var/log//x", False),
    ("/var/log/app[.log", "/var/log/app[.log", True),
    ("/var/log/**/*.log", "/var/log/a.log", True),
    ("/var/log/**/*.log", "/var/log/x/y/a.log", True),
    ("/var/log/**", "/var/log/x/y/a.log", True),
    ("/var/log/**", "/var/logs/a", False),
])
def test_the_glob_dialect(pattern, path, matches):
    assert bool(compile_glob(pattern).fullmatch(path)) is matches


def test_the_root_of_a_glob_bounds_the_walk():
    assert glob_root("/var/log/app/*.log") == GlobRoot("/var/log/app", 1)
    assert glob_root("/var/log/*/app.log") == GlobRoot("/var/log", 2)
    assert glob_root("/var/log/**/x.log") == GlobRoot("/var/log", None)
    assert not glob_root("/var/log/*.log").recursive and glob_root("/var/log/*/x").recursive


def test_walk_finds_files_and_symlinks_to_files_but_does_not_enter_linked_dirs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("top.log", "a/mid.log", "a/b/deep.log", "a/b/deep.txt"):
        (tmp_path / name).write_text("x\n")
    os.symlink(tmp_path / "top.log", tmp_path / "a" / "link.log")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    everything = f"{tmp_path}/**/*.log"
    assert walk_matches(glob_root(everything), compile_glob(everything)) == [
        f"{tmp_path}/a/b/deep.log", f"{tmp_path}/a/link.log", f"{tmp_path}/a/mid.log",
        f"{tmp_path}/top.log"]
    one_down = f"{tmp_path}/*/*.log"
    assert walk_matches(glob_root(one_down), compile_glob(one_down)) == [
        f"{tmp_path}/a/link.log", f"{tmp_path}/a/mid.log"]


@pytest.mark.parametrize("path, reason", [
    ("/var/log/**.log", "'**' must be a whole path component"),
    ("/*/app.log", "a glob needs a fixed directory before its first wildcard"),
    ("/var/log/[z-a].log", "path: invalid glob"),
    ("/etc/*.conf", "no file under /etc can be inside allowed_paths"),
])
def test_bad_glob_entries_are_refused_with_the_reason(path, reason):
    parsed = parse_value(f'[{{"path": "{path}", "topic": "t"}}]', ["/var/log/**"])
    assert parsed.targets == () and reason in parsed.rejected[0]


def test_a_glob_entry_may_reach_into_allowed_paths_from_above():
    parsed = parse_value('[{"path": "/var/**/*.log", "topic": "t"}]', ["/var/log/**"])
    assert parsed.targets == (Target("/var/**/*.log", "t"),) and parsed.targets[0].is_glob


class RecordingWatcher:
    def __init__(self) -> None:
        self.trees: list[TreeSubscription] = []

    def watch_tree(self, directory, recursive, changed) -> TreeSubscription:
        sub = TreeSubscription(directory, recursive, changed)
        self.trees.append(sub)
        return sub

    def unwatch_tree(self, sub: TreeSubscription) -> None:
        self.trees.remove(sub)


@pytest.fixture
def found(tmp_path):
    store = CheckpointStore(tmp_path / "state")
    watcher = RecordingWatcher()
    woken = []
    discovery = Discovery(watcher, store, (f"{tmp_path}/**",), lambda: woken.append(1))
    return discovery, watcher, store, woken


def matches(discovery: Discovery) -> dict[str, str]:
    return {t.path.rsplit("/", 1)[1]: t.read_from
            for t in discovery.targets(100, set(), set()).values()}


def test_read_from_applies_to_what_matches_first_and_later_files_are_read_whole(found, tmp_path):
    discovery, watcher, _, woken = found
    (tmp_path / "a.log").write_text("")
    discovery.sync([Target(f"{tmp_path}/*.log", "t")])
    assert discovery.refresh(lambda target: True)
    assert matches(discovery) == {"a.log": "end"}
    assert [(s.directory, s.recursive) for s in watcher.trees] == [(str(tmp_path), False)]
    (tmp_path / "b.log").write_text("")
    assert not discovery.refresh(lambda target: True), "nothing was reported yet"
    watcher.trees[0].changed()
    assert woken and discovery.refresh(lambda target: True)
    assert matches(discovery) == {"a.log": "end", "b.log": "beginning"}
    assert discovery.matched == {("t", f"{tmp_path}/a.log"), ("t", f"{tmp_path}/b.log")}


def test_an_entry_whose_files_have_offsets_reads_every_new_file_whole(found, tmp_path):
    discovery, _, store, _ = found
    store.update(FileCheckpoint(f"{tmp_path}/a.log", "t", 1, 2, 0, "", 0))
    (tmp_path / "b.log").write_text("")
    discovery.sync([Target(f"{tmp_path}/*.log", "t")])
    discovery.refresh(lambda target: True)
    assert matches(discovery) == {"b.log": "beginning"}


def test_a_file_that_stops_matching_is_kept_until_its_worker_holds_nothing(found, tmp_path):
    discovery, watcher, _, _ = found
    (tmp_path / "a.log").write_text("")
    discovery.sync([Target(f"{tmp_path}/*.log", "t")])
    discovery.refresh(lambda target: True)
    (tmp_path / "a.log").rename(tmp_path / "a.log.1")
    watcher.trees[0].changed()
    assert not discovery.refresh(lambda target: True)
    assert matches(discovery) == {"a.log": "end"}, "draining"
    assert discovery.refresh(lambda target: False)
    assert matches(discovery) == {}


def test_the_cap_keeps_running_files_first_then_goes_by_path(found, tmp_path):
    discovery, _, _, _ = found
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.log").write_text("")
    discovery.sync([Target(f"{tmp_path}/*.log", "t")])
    discovery.refresh(lambda target: True)
    plain = {(f"{tmp_path}/plain", "t")}
    running = {(f"{tmp_path}/c.log", "t")}
    chosen = discovery.targets(2, plain, running)
    assert list(chosen) == [(f"{tmp_path}/c.log", "t")] and discovery.unfollowed == 2
    assert len(discovery.targets(10, plain, running)) == 3 and discovery.unfollowed == 0


def test_a_missing_base_is_awaited_from_its_nearest_ancestor(found, tmp_path):
    discovery, watcher, _, _ = found
    base = tmp_path / "later" / "app"
    discovery.sync([Target(f"{base}/**/*.log", "t")])
    discovery.refresh(lambda target: True)
    assert [(s.directory, s.recursive) for s in watcher.trees] == [(str(tmp_path), False)]
    (base / "x").mkdir(parents=True)
    (base / "x" / "a.log").write_text("")
    watcher.trees[0].changed()
    assert discovery.refresh(lambda target: True)
    assert [(s.directory, s.recursive) for s in watcher.trees] == [(str(base), True)]
    assert matches(discovery) == {"a.log": "beginning"}
    discovery.sync([])
    assert watcher.trees == [] and discovery.matched == frozenset()
