"""Checkpoint store: atomic saves, recovery from damage, expiry."""

import json

from logship.checkpoint import FILE_NAME, CheckpointStore, FileCheckpoint


def cp(path="/var/log/a", topic="t", ino=1, offset=10):
    return FileCheckpoint(path, topic, 1, ino, 4, "ab", offset)


def test_save_only_when_changed_and_load_back(tmp_path):
    store = CheckpointStore(tmp_path)
    store.update(cp())
    store.save()
    mtime = (tmp_path / FILE_NAME).stat().st_mtime_ns
    store.update(cp())                       # same value: nothing to write
    store.save()
    assert (tmp_path / FILE_NAME).stat().st_mtime_ns == mtime
    store.update(cp(offset=20))
    store.save()
    again = CheckpointStore(tmp_path)
    again.load()
    assert again.for_target("t", "/var/log/a") == [cp(offset=20)]
    assert not (tmp_path / "checkpoints.tmp").exists()


def test_damaged_file_is_set_aside(tmp_path):
    (tmp_path / FILE_NAME).write_text("{half")
    store = CheckpointStore(tmp_path)
    store.load()
    assert store.for_target("t", "/var/log/a") == []
    assert (tmp_path / "checkpoints.corrupt").read_text() == "{half"


def test_expire_forgets_gone_unconfigured_files(tmp_path):
    existing = tmp_path / "exists.log"
    existing.write_text("")
    store = CheckpointStore(tmp_path)
    store.update(cp(path=str(existing)))
    store.update(cp(path=str(tmp_path / "gone.log"), ino=2))
    store.update(cp(path=str(tmp_path / "gone-but-configured.log"), ino=3))
    store.expire({("t", str(tmp_path / "gone-but-configured.log"))})
    store.save()
    kept = {f["path"] for f in json.loads((tmp_path / FILE_NAME).read_text())["files"]}
    assert kept == {str(existing), str(tmp_path / "gone-but-configured.log")}


def test_first_start_is_true_once_per_target(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.first_start("t", "/a") and not store.first_start("t", "/a")
    assert store.first_start("t", "/b")


def test_a_file_is_found_under_every_name_it_has_offsets_under(tmp_path):
    store = CheckpointStore(tmp_path)
    store.update(cp(path="/var/log/app.log", offset=10))
    store.update(cp(path="/var/log/app.log", offset=20))
    store.update(cp(path="/var/log/other.log", ino=2))
    assert store.same_file("t", 1, 1) == [cp(path="/var/log/app.log", offset=20)]
    assert store.same_file("other-topic", 1, 1) == []
    store.save()
    again = CheckpointStore(tmp_path)
    again.load()
    assert again.same_file("t", 1, 2) == [cp(path="/var/log/other.log", ino=2)]
    again.expire(set())
    assert again.same_file("t", 1, 2) == [] and again.same_file("t", 1, 1) == []


def test_a_closed_file_is_still_found_for_a_glob_match_that_it_became(tmp_path):
    store = CheckpointStore(tmp_path)
    store.update(cp(path="/var/log/app.log", offset=30))
    store.remove(cp(path="/var/log/app.log", offset=30))
    assert store.for_target("t", "/var/log/app.log") == []
    assert store.same_file("t", 1, 1) == [cp(path="/var/log/app.log", offset=30)]
