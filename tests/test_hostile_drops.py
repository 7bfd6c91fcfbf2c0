"""Drops written by careless or hostile people, made for real on disk and served by real
servers on loopback: links out of the drop, FIFOs, sockets, swapped files, stage folders
that are links or files, names with newlines, very long names, hostile FTP listings.

The rule: a listing only ever hands out regular files and real folders of the drop;
everything else is a typed `Skipped` with its reason, warned about once by name; nothing
is followed, read, blocked on, or moved outside the drop.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from csvbridge.filesystems import (
    NAME_MAX,
    EntryKind,
    FileSystem,
    NotRegularFile,
    UnsafePath,
    fit_name,
    name_problem,
    open_filesystem,
    work_name,
)
from tests.plugins.servers import FTPTestServer, SFTPTestServer
from tests.test_filesystems import Drop, drop  # noqa: F401  (the backend fixture)

pytestmark = pytest.mark.timeout(60)

SECRET = b"root-only secret\n"


def plant(root: Path, outside: Path) -> None:
    """What an attacker with write access to the drop leaves there."""
    outside.mkdir(exist_ok=True)
    (outside / "secret.csv").write_bytes(SECRET)
    (root / "good.csv").write_bytes(b"id\n1\n")
    (root / "link-out.csv").symlink_to(outside / "secret.csv")
    (root / "zero.csv").symlink_to("/dev/zero")
    (root / "dangling.csv").symlink_to(root / "nowhere")
    (root / "dir-link").symlink_to(outside, target_is_directory=True)


def test_only_regular_files_and_real_folders_are_listed(
    drop: Drop,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plant(drop.root, tmp_path / "outside")
    (drop.root / "real-dir").mkdir()
    caplog.set_level(logging.DEBUG, logger="csvbridge")
    fs = drop.open()
    listing = fs.scan()
    assert [f.name for f in listing.files] == ["good.csv"]
    assert [d.name for d in listing.dirs] == ["real-dir"]
    skipped = {s.name: s for s in listing.skipped}
    links = {"link-out.csv", "zero.csv", "dangling.csv", "dir-link"}
    if drop.name.startswith("ftp"):
        links.discard("dangling.csv")  # pyftpdlib's MLSD stats (follows): it hides these
    assert set(skipped) == links
    assert {s.kind for s in skipped.values()} == {EntryKind.LINK}
    assert all(s.reason for s in skipped.values())

    caplog.clear()
    assert sorted(e.name for e in fs.list()) == ["good.csv", "real-dir"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(links) and any("'link-out.csv'" in w for w in warnings)
    caplog.clear()
    fs.list()  # a daemon polls every 30 s: the second time is DEBUG, not a flood
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    for name in skipped:
        with pytest.raises((NotRegularFile, FileNotFoundError)):
            fs.read_bytes(name)
    assert SECRET not in b"".join(fs.read_bytes(f.path) for f in fs.list() if not f.is_dir)


@pytest.mark.parametrize("stage", ["processing", "done", "failed"])
def test_a_stage_folder_that_is_a_link_or_a_file_is_refused(
    drop: Drop,  # noqa: F811
    tmp_path: Path,
    stage: str,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (drop.root / stage).symlink_to(outside, target_is_directory=True)
    (drop.root / "orders.csv").write_bytes(b"id\n1\n")
    fs = drop.open()
    with pytest.raises(UnsafePath, match=f"'{stage}' is a symlink"):
        fs.mkdir(stage)
    (drop.root / stage).unlink()
    (drop.root / stage).write_bytes(b"a file named like a stage")
    with pytest.raises(UnsafePath, match=f"'{stage}' is a file"):
        fs.mkdir(stage)
    (drop.root / stage).unlink()
    fs.mkdir(stage)  # a real folder: fine, and idempotent
    fs.mkdir(stage)
    assert (drop.root / stage).is_dir() and not (drop.root / stage).is_symlink()
    assert list(outside.iterdir()) == []


def test_local_moves_never_go_through_a_link(tmp_path: Path) -> None:
    root, outside = tmp_path / "drop", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "failed").symlink_to(outside, target_is_directory=True)
    (root / "orders.csv").write_bytes(b"x")
    fs = open_filesystem(str(root))
    with pytest.raises(UnsafePath):
        fs.rename("orders.csv", "failed/orders.csv")
    with pytest.raises(UnsafePath):
        fs.write_bytes("failed/orders.csv.report.json", b"{}")
    with pytest.raises(UnsafePath):
        fs.list("failed")
    assert list(outside.iterdir()) == [] and (root / "orders.csv").exists()


def test_local_fifo_socket_and_swaps_never_block_or_escape(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    root.mkdir()
    os.mkfifo(root / "x.csv")  # read by the old code: the pass hung forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.csv"))
    (root / "ok.csv").write_bytes(b"ok")
    fs = open_filesystem(str(root))
    listing = fs.scan()
    assert [f.name for f in listing.files] == ["ok.csv"]
    assert {(s.name, s.kind) for s in listing.skipped} == {
        ("x.csv", EntryKind.FIFO),
        ("s.csv", EntryKind.SOCKET),
    }
    with pytest.raises(NotRegularFile, match="fifo"):
        fs.get("x.csv", tmp_path / "x.csv")  # returns at once: O_NONBLOCK + fstat
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(NotRegularFile):
        fs.write_bytes("x.csv", b"nobody reads")

    # swapped between the listing and the open: a link, then a FIFO
    (root / "ok.csv").unlink()
    (root / "ok.csv").symlink_to("/etc/hostname")
    with pytest.raises(NotRegularFile, match="symlink"):
        fs.read_bytes("ok.csv")
    (root / "ok.csv").unlink()
    os.mkfifo(root / "ok.csv")
    with pytest.raises(NotRegularFile, match="fifo"):
        fs.read_bytes("ok.csv")
    sock.close()


def test_ftp_list_fallback_sees_fifos_and_links(ftp_server: FTPTestServer, tmp_path: Path) -> None:
    plant(ftp_server.root, tmp_path / "outside")
    os.mkfifo(ftp_server.root / "x.csv")
    ftp_server.mlsd = False  # LIST: pyftpdlib shows what lstat says (l, p)
    with open_filesystem(ftp_server.url, password=ftp_server.password, timeout=10) as fs:
        listing = fs.scan()
        assert [f.name for f in listing.files] == ["good.csv"]
        kinds = {s.name: s.kind for s in listing.skipped}
        assert kinds["x.csv"] is EntryKind.FIFO and kinds["link-out.csv"] is EntryKind.LINK
        with pytest.raises(NotRegularFile):
            fs.read_bytes("link-out.csv")  # the server would follow it: the client refuses


def test_sftp_fstat_catches_a_swap(sftp_server: SFTPTestServer, tmp_path: Path) -> None:
    (sftp_server.root / "a.csv").write_bytes(b"a")
    os.mkfifo(sftp_server.root / "p.csv")
    with open_filesystem(
        sftp_server.url, password=sftp_server.password, known_hosts=sftp_server.known_hosts
    ) as fs:
        assert {(s.name, s.kind) for s in fs.scan().skipped} == {("p.csv", EntryKind.FIFO)}
        with pytest.raises(NotRegularFile):
            fs.read_bytes("p.csv")


# --- names ------------------------------------------------------------------------------


HOSTILE_FTP_NAMES = ["../../x.csv", "a/../b.csv", "sub/x.csv", "..", "c:\\..\\x.csv"]


@pytest.mark.parametrize("mlsd", [True, False], ids=["MLSD", "LIST"])
def test_hostile_ftp_listing_names_never_leave_the_drop(
    ftp_server: FTPTestServer, mlsd: bool
) -> None:
    (ftp_server.root / "fine.csv").write_bytes(b"f")
    ftp_server.mlsd = mlsd
    ftp_server.extra_mlsd = [
        f"type=file;size=3;modify=20200101000000; {n}" for n in HOSTILE_FTP_NAMES
    ]
    ftp_server.extra_list = [
        f"-rw-r--r--   1 u g 3 Jan  1  2020 {n}" for n in HOSTILE_FTP_NAMES if n != ".."
    ]
    with open_filesystem(ftp_server.url, password=ftp_server.password, timeout=10) as fs:
        listing = fs.scan()
    assert [f.path for f in listing.files] == ["fine.csv"]
    skipped = {s.name: s.reason for s in listing.skipped}
    expected = [n for n in HOSTILE_FTP_NAMES if n != ".."]
    assert sorted(skipped) == sorted(expected)
    assert all("path separator" in r for r in skipped.values())


def test_a_newline_in_a_local_or_sftp_name_is_skipped_by_name(
    sftp_server: SFTPTestServer, tmp_path: Path
) -> None:
    for root in (sftp_server.root, tmp_path):
        (root / "evil\nINFO forged.csv").write_bytes(b"x")
        (root / "tab\there.csv").write_bytes(b"x")
    sftp = open_filesystem(
        sftp_server.url, password=sftp_server.password, known_hosts=sftp_server.known_hosts
    )
    for fs in (open_filesystem(str(tmp_path)), sftp):
        listing = fs.scan()
        assert listing.files == []
        assert {s.name for s in listing.skipped} == {"evil\nINFO forged.csv", "tab\there.csv"}
        assert all("control character" in s.reason for s in listing.skipped)
    sftp.close()


def test_names_of_245_to_255_bytes_are_listed_and_derived_names_fit(drop: Drop) -> None:  # noqa: F811
    names = {n: "é" * ((n - 4) // 2) + "x" * ((n - 4) % 2) + ".csv" for n in (245, 250, 255)}
    for name in names.values():
        (drop.root / name).write_bytes(b"id\n1\n")
    fs: FileSystem = drop.open()
    assert sorted(f.name for f in fs.list()) == sorted(names.values())
    for name in names.values():
        assert len(name.encode()) <= NAME_MAX
        report = fit_name(name, ".report.json")
        rejects = fit_name(name, ".rejects.csv")
        stamped = fit_name(name.removesuffix(".csv"), ".20261122T074512Z-3.csv")
        for derived in (report, rejects, stamped):
            assert len(derived.encode()) <= NAME_MAX
            derived.encode().decode()  # never a character cut in half
        assert report.endswith(".csv.report.json") and "~" in report
        fs.write_bytes(report, b"{}")  # the backend really accepts it
        assert fs.read_bytes(report) == b"{}"
    reports = {fit_name(n, ".report.json") for n in names.values()}
    assert len(reports) == len(names)  # distinct names stay distinct
    assert fit_name("orders.csv", ".report.json") == "orders.csv.report.json"


def test_name_problem() -> None:
    assert name_problem("orders 2026 (1).csv") is None
    assert name_problem("x" * 255) is None
    assert "longer" in (name_problem("x" * 256) or "")
    assert "control" in (name_problem("a\rb") or "")
    assert "UTF-8" in (name_problem("caf\udce9.csv") or "")
    assert name_problem(".") and name_problem("..") and name_problem("")


def test_a_fifo_in_a_local_drop_does_not_hang_a_listing_thread(tmp_path: Path) -> None:
    """The old failure mode, end to end: list then read everything listed."""
    root = tmp_path / "drop"
    root.mkdir()
    os.mkfifo(root / "x.csv")
    (root / "y.csv").write_bytes(b"y")
    fs = open_filesystem(str(root))
    done = threading.Event()

    def read_all() -> None:
        for f in fs.list():
            fs.read_bytes(f.path)
        done.set()

    threading.Thread(target=read_all, daemon=True).start()
    assert done.wait(10), "reading the drop blocked on a FIFO"


def test_work_names_are_safe_short_and_distinct(tmp_path: Path) -> None:
    hostile = ["a b.csv", "a_b.csv", "evil\nname.csv", "../../x.csv", ".hidden.csv", "é" * 127]
    derived = [work_name(n) for n in hostile]
    assert len(set(derived)) == len(hostile)
    for name in derived:
        assert len(name.encode()) <= NAME_MAX and not name.startswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "-_.~") for c in name)
        (tmp_path / name).mkdir()  # the OS takes it as one plain name
    assert work_name("orders-2026.csv") == "orders-2026.csv"


def test_a_device_node_in_a_drop_is_skipped_and_never_written(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    root.mkdir()
    try:
        os.mknod(root / "null.csv", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    fs = open_filesystem(str(root))
    assert [(s.name, s.kind) for s in fs.scan().skipped] == [("null.csv", EntryKind.DEVICE)]
    with pytest.raises(NotRegularFile, match="device"):
        fs.write_bytes("null.csv", b"report")
    with pytest.raises(NotRegularFile, match="device"):
        fs.read_bytes("null.csv")
    assert stat.S_ISCHR(os.lstat(root / "null.csv").st_mode)  # still the device
