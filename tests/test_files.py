"""csvbridge.files: private modes, atomic replacement, devices/FIFOs/links written through."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from csvbridge.files import move_into_place, open_private, replaceable, write_bytes


def test_new_and_regular_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        write_bytes(tmp_path / "new", b"a")
        (tmp_path / "old").write_bytes(b"x")
        os.chmod(tmp_path / "old", 0o666)
        write_bytes(tmp_path / "old", b"b")
    finally:
        os.umask(old)
    for name, data in (("new", b"a"), ("old", b"b")):
        assert (tmp_path / name).read_bytes() == data
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]  # no .part left


def test_dev_null_stays_a_device() -> None:
    assert not replaceable("/dev/null")
    write_bytes("/dev/null", b"discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_symlink_is_written_through_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(target)
    produced = tmp_path / "produced"
    produced.write_bytes(b"new")
    move_into_place(produced, link)
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_bytes(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_open_private_does_not_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(OSError):
        open_private(tmp_path / "lock")
    assert victim.read_bytes() == b"keep me"


def test_a_failed_write_leaves_the_old_content(tmp_path: Path) -> None:
    from csvbridge.files import write_into_place

    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), write_into_place(dest) as f:
        f.write(b"half")
        raise RuntimeError("disk went away")
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out"]
