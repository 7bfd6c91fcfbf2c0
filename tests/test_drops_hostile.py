"""Drops that fight back: missing or misspelt folders, stage folders that are files or
links, odd names, a full disk under the work folder or the ledger, a read-only drop or
feed target, a symlinked lock, a second daemon on the same ledger.

The rule checked throughout: every file ends shipped, rejected with a reason, or left
where it is for a retry with the reason logged; an error of one source never stops the
others and never shows a traceback.  Disk-full and read-only cases use real tmpfs
mounts (skipped, with the reason, where mount is not permitted).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from csvbridge.config import load_settings
from csvbridge.drops.lock import PassLock
from csvbridge.drops.runner import Runner, run_once
from csvbridge.errors import ConfigError
from csvbridge.report import FileState
from csvbridge.testing.emulator import Emulator
from tests.helpers import wait_until
from tests.plugins.servers import PASSWORD, FTPTestServer, SFTPTestServer
from tests.test_runner import (
    TOKEN,
    assert_received_exactly,
    cli,
    ledger_accepted,
    ledger_files,
    listing,
    local_source,
    make_settings,
    read_report,
    server_source,
    slow_shipment,
    write_export,
)


@pytest.fixture
def emu(emulator: Callable[..., Emulator]) -> Emulator:
    return emulator(token=TOKEN)


@contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A real, small file system at `path` (we run as root in CI and here)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", "mode=0755", *options])
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(
            "a small file system is needed to fill up for real, and mount is not "
            f"permitted here: {done.stderr.decode(errors='replace').strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full; returns it (delete to free)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Errors are logged as reasons: no record at INFO or above carries a traceback."""
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            assert record.exc_info is None, record.getMessage()
    assert "Traceback" not in caplog.text


# --------------------------------------------------------------------------- config


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "etc" / "csvbridge"
    (home / "drop").mkdir(parents=True)
    ids, _ = write_export(home / "drop" / "orders.csv", 3)
    config = home / "csvbridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "api": {"base_url": emu.url, "site_id": emu.site_id, "token": TOKEN},
                "feed": {"target": "file://./feeds"},
                "state": {
                    "ledger": "state/ledger.sqlite",
                    "work_dir": "state/work",
                    "lock_file": "state/lock",
                },
                "sources": [
                    {
                        "name": "shop",
                        "url": "drop",
                        "min_age_seconds": 0,
                        "stable_polls": 0,
                        "sinks": ["api", "feed"],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    elsewhere = tmp_path / "cron-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # cron runs from anywhere

    settings = load_settings(config)

    assert settings.sources[0].url == str(home / "drop")
    assert settings.feed.target == (home / "feeds").as_uri()
    assert settings.state.ledger == home / "state" / "ledger.sqlite"
    assert settings.state.lock_file == home / "state" / "lock"
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    assert listing(home / "drop")["done"] == ["orders.csv", "orders.csv.report.json"]
    assert len(list((home / "feeds").iterdir())) == 1
    assert list(elsewhere.iterdir()) == []  # nothing landed in the working directory
    assert_received_exactly(emu, ids)


def test_missing_drop_is_an_error_of_that_source_unless_create(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    ids, _ = write_export(good / "orders.csv", 2)
    misspelt = tmp_path / "exprots"
    settings = make_settings(
        tmp_path, emu, local_source(misspelt, name="typo"), local_source(good, name="good")
    )

    summary = run_once(settings)

    assert summary.exit_code == 3, summary.describe()
    typo = summary.sources[0]
    assert typo.error is not None and "does not exist" in typo.error and "create" in typo.error
    assert not misspelt.exists()  # not created silently
    assert summary.sources[1].error is None
    assert listing(good)["done"] == ["orders.csv", "orders.csv.report.json"]
    assert_received_exactly(emu, ids)
    no_traceback(caplog)

    settings.sources[0].create_missing = True
    assert run_once(settings).exit_code == 0
    assert sorted(p.name for p in misspelt.iterdir()) == ["done", "failed", "processing"]


# --------------------------------------------------------------------------- stage folders


@pytest.mark.parametrize("kind", ["file", "link", "dangling-link"])
def test_a_stage_folder_that_is_not_a_folder_stops_only_its_source(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    good.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    if kind == "file":
        (bad / "failed").write_text("a regular file named failed\n")
    elif kind == "link":
        (bad / "failed").symlink_to(outside)
    else:
        (bad / "failed").symlink_to(tmp_path / "nowhere")
    write_export(bad / "orders.csv", 2)
    ids, _ = write_export(good / "orders.csv", 2, first=50)
    settings = make_settings(
        tmp_path, emu, local_source(bad, name="bad"), local_source(good, name="good")
    )
    runner = Runner(settings)
    try:
        summary = runner.run_pass(settle=False)
    finally:
        runner.close()

    assert summary.exit_code == 3, summary.describe()
    error = summary.sources[0].error or ""
    assert "'failed'" in error and ("link" in error or "regular file" in error), error
    assert runner.last_error is not None and runner.last_error.startswith("bad: ")  # /healthz
    assert runner.metrics.get("errors_total", source="bad", kind="StageFolderError") == 1
    assert (bad / "orders.csv").exists()  # untouched, nothing moved through the link
    assert list(outside.iterdir()) == []
    assert listing(good)["done"] == ["orders.csv", "orders.csv.report.json"]
    assert_received_exactly(emu, ids)
    no_traceback(caplog)


# --------------------------------------------------------------------------- names


def test_odd_names_are_left_in_place_with_a_warning_and_others_go_on(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    drop = tmp_path / "drop"
    drop.mkdir()
    newline = "orders\nevil.csv"
    long_name = "x" * 246 + ".csv"  # 250 bytes: no room for a timestamp and a report
    odd_ok = "Ünïcode orders (1) ; 'quoted' " + "y" * 150 + ".csv"  # long, but fits
    write_export(drop / "seed.csv", 1, first=900)
    for name in (newline, long_name):
        shutil.copy(drop / "seed.csv", drop / name)
    (drop / "seed.csv").unlink()
    ids, _ = write_export(drop / odd_ok, 2)
    settings = make_settings(tmp_path, emu, local_source(drop))

    summary = run_once(settings)

    assert summary.exit_code == 0, summary.describe()
    skipped = {f.file: f.reason for f in summary.files if f.state is FileState.SKIPPED}
    assert set(skipped) == {newline, long_name}
    assert "control character" in (skipped[newline] or "")
    assert "250 bytes" in (skipped[long_name] or "")
    assert repr(newline) in caplog.text and long_name in caplog.text  # named in the log
    assert (drop / newline).exists() and (drop / long_name).exists()  # left in place
    assert listing(drop)["done"] == sorted([odd_ok, f"{odd_ok}.report.json"])
    assert read_report(drop / "done" / f"{odd_ok}.report.json")["file"] == odd_ok
    assert_received_exactly(emu, ids)
    assert summary.totals()["skipped_files"] == 2
    no_traceback(caplog)


# --------------------------------------------------------------------------- private files


def test_state_reports_and_rejects_are_private_whatever_the_umask(
    tmp_path: Path, emu: Emulator
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    write_export(drop / "partly-bad.csv", 4, invalid={1})
    settings = make_settings(tmp_path, emu, local_source(drop))
    old = os.umask(0)
    try:
        assert run_once(settings).exit_code == 1
    finally:
        os.umask(old)
    failed = drop / "failed"
    for name in ("partly-bad.csv.report.json", "partly-bad.csv.rejects.csv"):
        assert stat.S_IMODE((failed / name).stat().st_mode) == 0o600, name
    state = tmp_path / "state"
    assert stat.S_IMODE(settings.state.ledger.stat().st_mode) == 0o600
    for extra in state.glob("ledger.sqlite-*"):
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra.name
    assert stat.S_IMODE(settings.state.lock_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.state.work_dir.stat().st_mode) == 0o700


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me\n")
    lock = tmp_path / "state" / "csvbridge.lock"
    lock.parent.mkdir()
    lock.symlink_to(precious)
    with pytest.raises(ConfigError, match="symbolic link"):
        PassLock(lock).acquire()
    assert precious.read_text() == "do not truncate me\n"


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize("room", ["none", "source-only"])
def test_work_folder_disk_full_leaves_the_file_for_a_retry(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture, room: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "orders.csv", 400)
    size = (drop / "orders.csv").stat().st_size
    # "none": the download into the work folder fails; "source-only": the download fits,
    # the conversion's own files do not
    kib = 64 if room == "none" else size // 1024 + 96
    with tmpfs(tmp_path / "work", f"{kib}k") as work:
        settings = make_settings(tmp_path, emu, local_source(drop))
        settings.state.work_dir = work / "csvbridge"
        summary = run_once(settings)

        assert summary.exit_code == 3, summary.describe()
        (f,) = summary.files
        assert f.state is FileState.PROCESSING and "No space left" in (f.reason or "")
        assert "No space left" in (summary.sources[0].error or "")
        assert listing(drop) == {"": [], "processing": ["orders.csv"], "done": [], "failed": []}
        assert emu.stats.received_ids == {}
        assert list(work.rglob("*.csv")) == []  # the work folder was cleaned up
        no_traceback(caplog)

    settings.state.work_dir = tmp_path / "roomy"
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    assert listing(drop)["done"] == ["orders.csv", "orders.csv.report.json"]
    assert_received_exactly(emu, ids)
    (entry,) = ledger_files(settings).values()
    assert entry.status is FileState.DONE  # no row left processing


def test_ledger_disk_full_leaves_the_file_for_a_retry(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "orders.csv", 5)
    with tmpfs(tmp_path / "state", "512k") as state:
        settings = make_settings(tmp_path, emu, local_source(drop))
        settings.state.work_dir = tmp_path / "work"  # only the ledger fills up
        runner = Runner(settings)  # the ledger is open (and its WAL created) ...
        filler = fill(state)  # ... then its disk fills up
        try:
            summary = runner.run_pass(settle=False)
        finally:
            runner.close()
        assert summary.exit_code == 3, summary.describe()
        assert "disk is full" in (summary.sources[0].error or ""), summary.describe()
        # the claim could not be recorded: the file was not even moved
        assert listing(drop) == {"": ["orders.csv"], "processing": [], "done": [], "failed": []}
        assert emu.stats.received_ids == {}
        no_traceback(caplog)

        filler.unlink()
        summary = run_once(settings)
        assert summary.exit_code == 0, summary.describe()
        assert listing(drop)["done"] == ["orders.csv", "orders.csv.report.json"]
        assert_received_exactly(emu, ids)
        assert {e.status for e in ledger_files(settings).values()} == {FileState.DONE}


def test_read_only_drop_is_an_error_of_that_source(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    ids, _ = write_export(good / "orders.csv", 2, first=70)
    with tmpfs(tmp_path / "ro", "4m") as ro:
        for stage in ("processing", "done", "failed"):
            (ro / stage).mkdir()
        data = write_export(ro / "orders.csv", 2)
        assert data
        remount(ro, "ro")
        settings = make_settings(
            tmp_path, emu, local_source(ro, name="ro"), local_source(good, name="good")
        )
        summary = run_once(settings)
        assert summary.exit_code == 3, summary.describe()
        assert "Read-only file system" in (summary.sources[0].error or "")
        assert (ro / "orders.csv").exists()
        assert listing(good)["done"] == ["orders.csv", "orders.csv.report.json"]
        assert_received_exactly(emu, ids)
        no_traceback(caplog)


def test_a_refused_feed_upload_keeps_the_file_for_a_retry(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    write_export(drop / "orders.csv", 3)
    with tmpfs(tmp_path / "feeds", "1m", "ro") as feeds:
        settings = make_settings(tmp_path, emu, local_source(drop, sinks=["feed"]))
        settings.feed.target = feeds.as_uri()
        summary = run_once(settings)
        assert summary.exit_code == 3, summary.describe()
        (f,) = summary.files
        assert f.state is FileState.PROCESSING
        assert "feed upload failed" in (f.reason or "") and "Read-only" in (f.reason or "")
        assert listing(drop) == {"": [], "processing": ["orders.csv"], "done": [], "failed": []}
        no_traceback(caplog)

        remount(feeds, "rw")
        summary = run_once(settings)
        assert summary.exit_code == 0, summary.describe()
        assert listing(drop)["done"] == ["orders.csv", "orders.csv.report.json"]
        assert len(list(feeds.iterdir())) == 1
    (entry,) = ledger_files(settings).values()
    assert entry.status is FileState.DONE and entry.attempts == 2


class RefusingFTPServer(FTPTestServer):
    """pyftpdlib answering like vsftpd on a drop it will not let us change
    (``550 Create directory operation failed``, ``550 Rename failed``) when `read_only`,
    and ``550 Failed to open file.`` for downloads of the names in `unreadable`."""

    def __init__(self, root: Path) -> None:
        self.read_only = False
        self.unreadable: set[str] = set()
        self.no_moves_into: str | None = None  # a stage folder renames into are refused
        super().__init__(root)

    def _make_handler(self, tls_files: Any) -> Any:
        handler = super()._make_handler(tls_files)
        ctl = self

        class Handler(handler):  # type: ignore[misc,valid-type]
            def ftp_MKD(self, path: str) -> Any:
                if ctl.read_only:
                    self.respond("550 Create directory operation failed.")
                    return None
                return super().ftp_MKD(path)

            def ftp_RNFR(self, path: str) -> Any:
                if ctl.read_only:
                    self.respond("550 RNFR command failed.")
                    return None
                return super().ftp_RNFR(path)

            def ftp_RNTO(self, path: str) -> Any:
                if ctl.no_moves_into and f"/{ctl.no_moves_into}/" in path:
                    self._rnfr = None
                    self.respond("550 Rename failed.")
                    return None
                return super().ftp_RNTO(path)

            def ftp_RETR(self, file: str, *args: Any) -> Any:
                if os.path.basename(file) in ctl.unreadable:
                    self.respond("550 Failed to open file.")
                    return None
                return super().ftp_RETR(file, *args)

        return Handler


@pytest.fixture
def refusing_ftp(tmp_path: Path) -> Iterator[RefusingFTPServer]:
    (tmp_path / "refusing-home").mkdir()
    server = RefusingFTPServer(tmp_path / "refusing-home")
    server.start()
    yield server
    server.stop()


def test_ftp_drop_refusing_writes_is_an_error_of_that_source(
    tmp_path: Path,
    emu: Emulator,
    refusing_ftp: RefusingFTPServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    ids, _ = write_export(good / "orders.csv", 2, first=70)
    write_export(refusing_ftp.root / "remote.csv", 2)
    refusing_ftp.read_only = True
    settings = make_settings(
        tmp_path, emu, server_source(refusing_ftp, "ftp"), local_source(good, name="good")
    )
    runner = Runner(settings)
    try:
        summary = runner.run_pass(settle=False)
    finally:
        runner.close()
    assert summary.exit_code == 3, summary.describe()
    error = summary.sources[0].error or ""
    assert "cannot create the stage folder" in error, error
    assert "550 Create directory operation failed" in error, error
    assert runner.metrics.get("errors_total", source="ftp", kind="StageFolderError") == 1
    assert sorted(p.name for p in refusing_ftp.root.iterdir()) == ["remote.csv"]
    assert listing(good)["done"] == ["orders.csv", "orders.csv.report.json"]
    assert_received_exactly(emu, ids)
    no_traceback(caplog)


def test_ftp_file_that_cannot_be_opened_waits_for_a_retry(
    tmp_path: Path,
    emu: Emulator,
    refusing_ftp: RefusingFTPServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids, _ = write_export(refusing_ftp.root / "locked.csv", 3)
    refusing_ftp.unreadable = {"locked.csv"}
    settings = make_settings(tmp_path, emu, server_source(refusing_ftp, "ftp"))

    summary = run_once(settings)

    assert summary.exit_code == 3, summary.describe()
    (f,) = summary.files
    assert f.state is FileState.PROCESSING and "550 Failed to open file" in (f.reason or "")
    assert listing(refusing_ftp.root)["processing"] == ["locked.csv"]
    assert listing(refusing_ftp.root)["failed"] == []
    no_traceback(caplog)

    refusing_ftp.unreadable = set()
    assert run_once(settings).exit_code == 0
    assert listing(refusing_ftp.root)["done"] == ["locked.csv", "locked.csv.report.json"]
    assert_received_exactly(emu, ids)


def test_a_file_whose_move_failed_after_its_report_is_filed_without_a_second_report(
    tmp_path: Path, emu: Emulator, refusing_ftp: RefusingFTPServer
) -> None:
    """Report written, ledger row closed, then the move into done/ refused: the file waits
    in processing/, and the next pass only moves it next to its report: nothing is sent
    again and no second, contradicting report appears."""
    ids, _ = write_export(refusing_ftp.root / "orders.csv", 3)
    refusing_ftp.no_moves_into = "done"
    settings = make_settings(tmp_path, emu, server_source(refusing_ftp, "ftp"))

    summary = run_once(settings)

    assert summary.exit_code == 3, summary.describe()
    assert "550 Rename failed" in (summary.files[0].reason or "")
    assert listing(refusing_ftp.root)["processing"] == ["orders.csv"]
    assert listing(refusing_ftp.root)["done"] == ["orders.csv.report.json"]
    (entry,) = ledger_files(settings).values()
    assert entry.status is FileState.DONE

    refusing_ftp.no_moves_into = None
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    assert listing(refusing_ftp.root)["done"] == ["orders.csv", "orders.csv.report.json"]
    assert listing(refusing_ftp.root)["processing"] == []
    assert_received_exactly(emu, ids)
    (entry,) = ledger_files(settings).values()
    assert entry.status is FileState.DONE and entry.attempts == 1


@pytest.mark.parametrize("protocol", ["ftp", "sftp"])
def test_remote_drop_on_a_read_only_disk_is_an_error_of_that_source(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """Like OpenSSH's root-owned chroot or a vsftpd without write_enable: the server
    lists the drop but refuses to create the stage folders."""
    good = tmp_path / "good"
    good.mkdir()
    ids, _ = write_export(good / "orders.csv", 2, first=70)
    with tmpfs(tmp_path / "ro-home", "4m") as home:
        write_export(home / "remote.csv", 2)
        remount(home, "ro")
        server: FTPTestServer | SFTPTestServer
        if protocol == "ftp":
            server = FTPTestServer(home)
        else:
            server = SFTPTestServer(home, tmp_path / "ssh")
        server.start()
        try:
            settings = make_settings(
                tmp_path, emu, server_source(server, "remote"), local_source(good, name="good")
            )
            summary = run_once(settings)
        finally:
            server.shutdown() if isinstance(server, SFTPTestServer) else server.stop()
        assert summary.exit_code == 3, summary.describe()
        error = summary.sources[0].error or ""
        assert "cannot create the stage folder 'processing'" in error, error
        if protocol == "ftp":  # (the SFTP backend reports the stat that follows: ENOENT)
            assert "Read-only file system" in error, error
        assert sorted(p.name for p in home.iterdir()) == ["remote.csv"]
    assert listing(good)["done"] == ["orders.csv", "orders.csv.report.json"]
    assert_received_exactly(emu, ids)
    assert PASSWORD not in caplog.text
    no_traceback(caplog)


# --------------------------------------------------------------------------- the log line


def test_the_log_line_of_a_failed_file_gives_its_reason(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    drop = tmp_path / "drop"
    drop.mkdir()
    write_export(drop / "partly-bad.csv", 4, invalid={1, 2})
    (drop / "empty.csv").write_bytes(b"")
    run_once(make_settings(tmp_path, emu, local_source(drop)))
    lines = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records}
    bad = lines["shop/partly-bad.csv"]
    assert "failed" in bad and "currency" in bad, bad
    assert "empty" in lines["shop/empty.csv"].split("failed", 1)[1], lines["shop/empty.csv"]


# --------------------------------------------------------------------------- two owners


def test_a_file_claimed_by_a_live_process_is_not_resumed_by_another(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    """Two passes with the same drop and ledger but different lock files (a second
    daemon started with another config): the second leaves the first one's file alone."""
    emu, settings, config, ids = slow_shipment(tmp_path, emulator, n=150)
    drop = tmp_path / "drop"
    first = cli("run", "--config", str(config))
    try:
        wait_until(lambda: ledger_accepted(settings.state.ledger), what="pass 1 shipping")
        other = settings.model_copy(deep=True)
        other.state.lock_file = tmp_path / "other.lock"
        summary = run_once(other)
        (f,) = summary.files
        assert f.state is FileState.SKIPPED and f"pid {first.pid}" in (f.reason or "")
        assert listing(drop)["processing"] == ["big.csv"]
    finally:
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err.decode()
    assert_received_exactly(emu, ids)  # nothing sent twice
    (entry,) = ledger_files(settings).values()
    assert entry.attempts == 1


def test_threads_of_one_process_share_its_claims(tmp_path: Path, emu: Emulator) -> None:
    """The daemon resumes its own files: a claim held by this very process is ours."""
    drop = tmp_path / "drop"
    (drop / "processing").mkdir(parents=True)
    ids, _ = write_export(drop / "processing" / "left.csv", 2)
    settings = make_settings(tmp_path, emu, local_source(drop))
    runner = Runner(settings)
    try:
        assert runner.ledger.claim("shop", "processing/left.csv") is None
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(runner.run_pass(settle=False)))
        t.start()
        t.join(30)
    finally:
        runner.close()
    assert listing(drop)["done"] == ["left.csv", "left.csv.report.json"]
    assert_received_exactly(emu, ids)


def test_ledger_disk_full_mid_shipment_keeps_the_file_and_the_ledger_consistent(
    tmp_path: Path, emulator: Callable[..., Emulator], caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger's disk fills up while a file is being shipped: the batch answers that
    could not be recorded are sent again later (at least once), nothing is lost, the file
    never lands in failed/, and the row ends done after the retry."""
    slow = emulator(token=TOKEN, speed=1)
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "orders.csv", 60)
    with tmpfs(tmp_path / "state", "512k") as state:
        settings = make_settings(tmp_path, slow, local_source(drop), max_objects_per_request=10)
        settings.state.work_dir = tmp_path / "work"  # only the ledger fills up
        runner = Runner(settings)
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(runner.run_pass(settle=False)))
        thread.start()
        try:
            wait_until(lambda: ledger_accepted(settings.state.ledger), what="a first batch")
            filler = fill(state)
        finally:
            thread.join(timeout=60)
            runner.close()
        (summary,) = result
        assert summary.exit_code == 3, summary.describe()  # type: ignore[attr-defined]
        assert listing(drop)["failed"] == [] and listing(drop)["processing"] == ["orders.csv"]
        no_traceback(caplog)

        filler.unlink()
        summary = run_once(settings)
        assert summary.exit_code == 0, summary.describe()
        assert listing(drop)["done"] == ["orders.csv", "orders.csv.report.json"]
        assert set(slow.stats.received_ids) == ids  # nothing lost
        (entry,) = ledger_files(settings).values()
        assert entry.status is FileState.DONE and entry.shipped == 60
