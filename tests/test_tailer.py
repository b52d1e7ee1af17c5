"""tail -F logic on real files: partial lines, CR, long lines, rotation, truncation, identity."""

import os

import pytest

from logship.checkpoint import FileCheckpoint
from logship.errors import SourceError
from logship.tailer import Tailer, TailSettings


def tailer_for(path, read_from="beginning", saved=(), max_line=1024, chunk=4096):
    settings = TailSettings(chunk, max_line, close_rotated_after=1.0, close_removed_timeout=10.0,
                            allowed_paths=(str(path.parent) + "/**",))
    tailer = Tailer(str(path), settings)
    stale, _ = tailer.restore(saved, read_from, now=0.0)
    return tailer, stale


def read_all(tailer, now=1.0):
    lines, offsets = [], []
    while (chunk := tailer.read(now)) is not None:
        lines += chunk.lines
        offsets += chunk.offsets
    return lines, offsets


def test_lines_offsets_partial_and_crlf(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"one\r\ntwo\nthr")
    tailer, _ = tailer_for(log)
    assert read_all(tailer) == ([b"one", b"two"], [0, 5])
    with open(log, "ab") as f:
        f.write(b"ee\n")
    assert read_all(tailer) == ([b"three"], [9])
    assert tailer.current.offset == 15


def test_read_from_end_starts_after_the_last_complete_line(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"old\nhalf")
    tailer, _ = tailer_for(log, read_from="end")
    with open(log, "ab") as f:
        f.write(b" line\nnew\n")
    assert read_all(tailer)[0] == [b"half line", b"new"]


def test_overlong_line_is_truncated_and_the_rest_skipped(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"x" * 3000 + b"\nnext\n" + b"y" * 2000 + b"\n")
    tailer, _ = tailer_for(log, max_line=1024, chunk=512)
    chunks = []
    while (chunk := tailer.read(1.0)) is not None:
        chunks.append(chunk)
    lines = [line for c in chunks for line in c.lines]
    assert lines == [b"x" * 1024, b"next", b"y" * 1024]
    assert sum(c.truncated for c in chunks) == 2
    assert tailer.current.offset == log.stat().st_size


def test_rename_rotation_drains_old_file_then_follows_new(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"1\n")
    tailer, _ = tailer_for(log)
    assert read_all(tailer)[0] == [b"1"]
    old = open(log, "ab")
    os.rename(log, tmp_path / "a.log.1")
    log.write_bytes(b"new 1\n")
    old.write(b"2\n")                     # the writer still appends to the old descriptor
    old.flush()
    assert read_all(tailer, now=2.0)[0] == [b"2", b"new 1"]
    old.write(b"3\n")
    old.close()
    assert read_all(tailer, now=3.0)[0] == [b"3"]
    [rotated] = tailer.rotated
    assert tailer.closable(now=3.5) == []          # quiet for less than close_rotated_after
    assert tailer.closable(now=4.5) == []          # its lines are not acknowledged yet
    assert tailer.closable(now=13.5) == [rotated]  # ... but not for ever
    rotated.acked_offset = rotated.offset
    assert tailer.closable(now=4.5) == [rotated]
    tailer.close_file(rotated)
    assert tailer.rotated == []


def test_truncation_restarts_from_zero(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"long line one\n")
    tailer, _ = tailer_for(log)
    read_all(tailer)
    log.write_bytes(b"x\n")
    assert read_all(tailer) == ([b"x"], [0])


def test_file_appearing_later_is_read_from_start_even_with_read_from_end(tmp_path):
    log = tmp_path / "late.log"
    tailer, _ = tailer_for(log, read_from="end")
    assert tailer.read(1.0) is None
    log.write_bytes(b"first\n")
    assert read_all(tailer)[0] == [b"first"]


def test_not_a_regular_file_and_outside_allowed(tmp_path):
    log = tmp_path / "dir.log"
    log.mkdir()
    with pytest.raises(SourceError, match="not a regular file"):
        tailer_for(log)
    link = tmp_path / "link.log"
    os.symlink("/etc/hostname", link)
    with pytest.raises(SourceError, match="outside allowed_paths"):
        tailer_for(link)


def checkpoint_of(tailer, topic="t"):
    followed = tailer.current
    followed.acked_offset = followed.offset
    return followed.checkpoint(topic)


def test_resume_from_checkpoint_and_find_a_renamed_file(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"1\n2\n")
    tailer, _ = tailer_for(log)
    read_all(tailer)
    saved = checkpoint_of(tailer)
    tailer.close()
    with open(log, "ab") as f:
        f.write(b"3\n")
    os.rename(log, tmp_path / "a.log.1")           # rotated while the agent was down
    log.write_bytes(b"new\n")
    tailer, stale = tailer_for(log, saved=[saved], read_from="end")
    assert stale == []
    assert read_all(tailer)[0] == [b"3", b"new"]


def test_reused_inode_with_other_content_is_a_new_file(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"old content\n")
    tailer, _ = tailer_for(log)
    read_all(tailer)
    saved = checkpoint_of(tailer)
    tailer.close()
    log.unlink()
    log.write_bytes(b"brand new and longer content\n")
    if log.stat().st_ino != saved.ino:     # make the reuse explicit when the fs did not
        saved = FileCheckpoint(saved.path, saved.topic, log.stat().st_dev, log.stat().st_ino,
                               saved.fp_len, saved.fp, saved.offset)
    tailer, stale = tailer_for(log, saved=[saved], read_from="end")
    assert stale == [saved]
    assert read_all(tailer)[0] == [b"brand new and longer content"]
