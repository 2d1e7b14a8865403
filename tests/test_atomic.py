"""The atomic writer: the old file survives any failure, no temporary file is left."""

import json
import os

import pytest

from nanoae import atomic
from nanoae.atomic import DirectoryNotWritable, remove_stale_temp_files, write_atomically, write_json_atomically


def test_writes_the_whole_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    assert write_atomically(target, lambda handle: handle.write(b"abc" * 1000)) == target
    assert target.read_bytes() == b"abc" * 1000
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt(), ValueError("bad")])
def test_a_write_failing_midway_keeps_the_old_file(tmp_path, failure):
    target = tmp_path / "config.json"
    write_json_atomically(target, {"version": 1})
    before = target.read_bytes()

    def half_then_fail(handle):
        handle.write(b'{"version": 2, "trunc')
        raise failure

    with pytest.raises(type(failure)):
        write_atomically(target, half_then_fail)
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]  # the temporary file is gone


def test_a_failing_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    write_json_atomically(target, {"a": 1})

    def refuse(source, destination):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_json_atomically(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert list(tmp_path.iterdir()) == [target]


def test_json_that_cannot_be_encoded_never_touches_the_file(tmp_path):
    target = tmp_path / "c.json"
    write_json_atomically(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomically(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True} and list(tmp_path.iterdir()) == [target]


def test_json_is_sorted_indented_with_a_final_newline(tmp_path):
    target = write_json_atomically(tmp_path / "c.json", {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_a_missing_directory_is_reported_as_not_writable(tmp_path):
    with pytest.raises(DirectoryNotWritable) as info:
        write_atomically(tmp_path / "nowhere" / "x.json", lambda handle: handle.write(b"x"))
    assert isinstance(info.value.__cause__, FileNotFoundError) and info.value.errno == 2


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "m.npz"
    target.write_bytes(b"x")
    mine = tmp_path / f".m.npz.tmp-{os.getpid()}-abcd1234"
    mine.write_bytes(b"x")
    dead_pid = 2**22 + 12345  # above Linux's default pid_max: no such process
    dead = tmp_path / f".m.npz.tmp-{dead_pid}-00ff00ff"
    dead.write_bytes(b"x")
    expected = [dead] if os.name == "posix" else []
    assert remove_stale_temp_files(target) == expected
    assert mine.exists() and target.exists()


@pytest.mark.skipif(os.name != "posix", reason="liveness of a writer is checked on POSIX only")
def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    """A writer killed mid-save leaves ``.<name>.tmp-<pid>-<hex>``; the next save of the
    same target removes it, and leaves other targets' temporaries and other files alone."""
    dead_pid = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = tmp_path / f".checkpoint.npz.tmp-{dead_pid}-0badf00d"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / f".config.json.tmp-{dead_pid}-0badf00d"
    other.write_bytes(b"{")
    users = tmp_path / "notes.tmp"
    users.write_text("mine")
    target = write_atomically(tmp_path / "checkpoint.npz", lambda handle: handle.write(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name, users.name])
    write_json_atomically(tmp_path / "config.json", {"a": 1})
    assert not other.exists() and users.read_text() == "mine"
