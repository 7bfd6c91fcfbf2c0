"""The runner on the filesystem layer: kept sessions, typed skips, derived names, and a
log that says why a file is not taken yet.  Real servers on loopback, real files."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csvbridge.config import FeedSettings
from csvbridge.drops.filing import FileWork
from csvbridge.drops.runner import Runner
from csvbridge.drops.stages import Stages
from csvbridge.filesystems import UploadRefused, open_filesystem
from csvbridge.report import FileState
from csvbridge.sinks.feed import deliver_feed
from csvbridge.testing.emulator import Emulator
from tests.plugins.servers import SFTPTestServer
from tests.test_drops_hostile import RefusingFTPServer
from tests.test_runner import (
    TOKEN,
    age,
    assert_received_exactly,
    listing,
    local_source,
    make_settings,
    server_source,
    write_export,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def emu(emulator: Callable[..., Emulator]) -> Emulator:
    return emulator(token=TOKEN)


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[RefusingFTPServer]:
    root = tmp_path / "ftp-root"
    root.mkdir()
    server = RefusingFTPServer(root)
    server.start()
    yield server
    server.stop()


def test_an_sftp_source_keeps_one_session_across_polls(
    tmp_path: Path, emu: Emulator, sftp_server: SFTPTestServer
) -> None:
    settings = make_settings(tmp_path, emu, server_source(sftp_server, "sftp"))
    runner = Runner(settings)
    try:
        ids = set()
        for n in range(3):
            new, _ = write_export(sftp_server.root / f"orders-{n}.csv", 2, first=10 * n)
            ids |= new
            summary = runner.run_pass(settle=False)
            assert summary.exit_code == 0, summary.describe()
        assert sftp_server.sessions == 1  # three polls, one SSH login
        assert len(runner.connections) == 1
    finally:
        runner.close()
    assert_received_exactly(emu, ids)


def test_a_file_swapped_for_a_fifo_after_listing_is_skipped_not_failed(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    write_export(drop / "orders.csv", 2)
    settings = make_settings(tmp_path, emu, local_source(drop))
    runner = Runner(settings)
    try:
        fs = open_filesystem(str(drop))
        Stages().prepare(fs)
        (info,) = fs.scan("").files  # listed as a regular file...
        (drop / "orders.csv").unlink()
        os.mkfifo(drop / "orders.csv")  # ...then swapped for a FIFO before it is read
        work = FileWork(settings, runner.ledger, fs, settings.sources[0], Stages(), runner.stop)
        outcome = work.run(info, claimed=False)
    finally:
        runner.close()
    assert outcome.state is FileState.SKIPPED
    assert "not a regular file" in (outcome.reason or "") and "fifo" in (outcome.reason or "")
    assert "'orders.csv' skipped" in caplog.text
    assert listing(drop)["failed"] == [] and listing(drop)["processing"] == []
    assert (drop / "orders.csv").exists()  # moved back where it was found, untouched
    assert_received_exactly(emu, set())


def test_the_log_says_why_a_file_is_not_taken_yet(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="csvbridge.drops")
    drop = tmp_path / "drop"
    drop.mkdir()
    write_export(drop / "young.csv", 1)
    write_export(drop / "announced.csv", 1, first=10)
    age(drop / "announced.csv", 600)
    source = local_source(drop, name="a", min_age_seconds=300, done_marker=True)
    settings = make_settings(tmp_path, emu, source)
    runner = Runner(settings)
    try:
        runner.run_pass(settle=False)
        assert "'young.csv' not taken yet" in caplog.text
        assert "min_age_seconds is 300" in caplog.text
        assert "'announced.csv' not taken yet: waiting for its done marker" in caplog.text
        caplog.clear()
        settings.sources[0] = local_source(drop, name="a", stable_polls=2, done_marker=True)
        runner.run_pass(settle=False)
        assert "'young.csv' not taken yet: size or mtime still changing" in caplog.text
    finally:
        runner.close()
    assert sorted(p.name for p in drop.glob("*.csv")) == ["announced.csv", "young.csv"]


def test_a_refused_feed_folder_is_a_typed_transient_error(
    tmp_path: Path, refusing: RefusingFTPServer
) -> None:
    local = tmp_path / "feed.csv"
    local.write_text("id\n1\n")
    refusing.read_only = True  # 550 Create directory operation failed
    feed = FeedSettings(target=f"{refusing.url}feeds/", password=refusing.password)
    with pytest.raises(UploadRefused) as caught:
        deliver_feed(local, feed, rows=1)
    assert caught.value.exit_code == 3
    assert not (refusing.root / "feeds").exists()


def test_stage_and_report_names_are_derived_by_the_filesystem_layer() -> None:
    from csvbridge.drops.stages import report_name

    name = "y" * 222 + ".csv"
    assert len(report_name(name).encode()) <= 255
    assert report_name("orders.csv") == "orders.csv.report.json"


def test_a_version_2_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    """Migration 3 (events, cursors) on a ledger written by the previous release."""
    import sqlite3

    from csvbridge.drops.ledger import Ledger
    from csvbridge.drops.ledger_rows import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "ledger.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version in (1, 2):
        for statement in MIGRATIONS[version]:
            con.execute(statement)
        con.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    con.execute(
        "INSERT INTO files (source, name, size, mtime, sha256, fingerprint, status, "
        "started_at) VALUES ('shop', 'old.csv', 1, 0, 'ab', 'ab:1', 'processing', 0)"
    )
    con.execute("INSERT INTO conversions VALUES (1, 'A', 'accepted', 1, 1)")
    con.commit()
    con.close()
    with Ledger(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert ledger.accepted_ids(1) == {"A"}  # the bulk API's progress is kept
        assert ledger.sent_event_ids(1) == set()  # and owes the events sink everything
        ledger.record_events(1, 1, ["A", "B"], ["C"])
        ledger.set_cursor("chq", '{"page": 2}')
    with Ledger(path) as ledger:
        assert ledger.sent_event_ids(1) == {"A", "B"}
        assert ledger.accepted_ids(1) == {"A"}  # one sink never marks the other's ids
        assert ledger.get_cursor("chq") == '{"page": 2}' and ledger.get_cursor("x") is None
