"""Atomic writes: the target is replaced only by a complete new one; a failure keeps the old one."""

import pytest

from perk_cli.files import staged_directory, staged_file


def test_a_failed_file_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "mem.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with staged_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["mem.safetensors"]
    with staged_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["mem.safetensors"]


def test_a_failed_directory_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "run"
    with staged_directory(target) as staging:
        (staging / "a.txt").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(target) as staging:
            (staging / "b.txt").write_text("2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
