"""Atomic writes: a file or folder is replaced whole, or left as it was."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from qsegment.files import atomic_folder, atomic_write, write_json


def test_bytes_text_and_a_writer_each_land_whole(tmp_path):
    def save_npy(tmp):
        with tmp.open("wb") as f:
            np.save(f, np.arange(3))

    atomic_write(tmp_path / "a" / "b.bin", b"\x00\xff")  # the folder is made
    atomic_write(tmp_path / "c.txt", "calibre µm\n")  # text is UTF-8
    atomic_write(tmp_path / "d.npy", save_npy)
    write_json(tmp_path / "e.json", {"nan": float("nan"), "path": tmp_path})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "c.txt").read_bytes() == "calibre µm\n".encode()
    assert np.load(tmp_path / "d.npy").tolist() == [0, 1, 2]
    assert json.loads((tmp_path / "e.json").read_text())["path"] == str(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.txt", "d.npy", "e.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("converter failed")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_folder(out) as staging:
        (staging / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing shows before the end
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging or old folder left
