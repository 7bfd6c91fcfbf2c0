"""The drop runner end to end: real drops (local, FTP, FTPS, SFTP on loopback), the real
API emulator, real `csvbridge run` processes (killed with SIGKILL where that is the point).

The invariants checked throughout: every file ends in done/ or failed/ (or stays visibly
in processing/ when a pass could not finish it), never lost and never deleted unless it
succeeded with ``on_success: delete``; every row is accounted for in the report; the
emulator received exactly the valid conversions; nothing accepted is sent twice.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from csvbridge.config import Settings, SourceSettings, StateSettings
from csvbridge.drops.ledger import Ledger
from csvbridge.drops.lock import PassLock
from csvbridge.drops.outcome import FileOutcome, PassSummary
from csvbridge.drops.runner import run_once
from csvbridge.errors import LockedError
from csvbridge.report import FileState
from csvbridge.schema.models import TEMPLATE_HEADER
from csvbridge.testing.emulator import Emulator
from csvbridge.testing.samples import conversion_rows
from tests.helpers import kill9, wait_until
from tests.plugins.api import settings_for
from tests.plugins.servers import PASSWORD, FTPTestServer, SFTPTestServer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "csvbridge" / "data" / "demo" / "orders-2026-11-21.csv"
DEMO_INVALID = {"ORD-000000007-f8883f", "ORD-000000019-ee8da1"}  # documented: 2 of 30 bad
TOKEN = "tok-7Hq2-VERY-secret-api-token"  # distinctive, so leaks can be grepped for
STAGES = ("processing", "done", "failed")

# --------------------------------------------------------------------------- helpers


def write_export(
    path: Path,
    n: int,
    *,
    first: int = 0,
    seed: int = 1,
    invalid: set[int] = frozenset(),  # type: ignore[assignment]
    status: str | None = None,
) -> tuple[set[str], set[str]]:
    """A documented-format export of `n` conversions numbered from `first`.

    Conversions whose number is in `invalid` get a bad currency.  Returns (valid ids,
    invalid ids).
    """
    rnd = random.Random(seed * 1_000_003 + first)
    currency, status_col = TEMPLATE_HEADER.index("currency"), TEMPLATE_HEADER.index("status")
    valid, bad = set(), set()
    tmp = path.with_name(f".{path.name}.writing")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(TEMPLATE_HEADER)
        for k in range(first, first + n):
            rows = conversion_rows(k, rnd)
            for row in rows:
                if k in invalid:
                    row[currency] = "euro"
                if status is not None:
                    row[status_col] = status
            (bad if k in invalid else valid).add(rows[0][0])
            w.writerows(rows)
    tmp.replace(path)  # appears complete, as a well-behaved uploader does
    return valid, bad


def csv_ids(path: Path) -> set[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return {row["id"] for row in csv.DictReader(f)}


def age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def make_settings(tmp_path: Path, emu: Emulator, *sources: SourceSettings, **api: Any) -> Settings:
    return Settings(
        api=settings_for(emu, **api),
        sources=list(sources),
        state=StateSettings(
            ledger=tmp_path / "state" / "ledger.sqlite",
            work_dir=tmp_path / "state" / "work",
            lock_file=tmp_path / "state" / "csvbridge.lock",
        ),
    )


def local_source(drop: Path, name: str = "shop", **kw: Any) -> SourceSettings:
    kw.setdefault("min_age_seconds", 0)
    kw.setdefault("stable_polls", 0)
    return SourceSettings(name=name, url=drop.as_uri(), **kw)


def server_source(server: FTPTestServer | SFTPTestServer, name: str, **kw: Any) -> SourceSettings:
    kw.setdefault("min_age_seconds", 0)
    kw.setdefault("stable_polls", 0)
    kw.setdefault("timeout_seconds", 10)
    kw.setdefault("password", server.password)
    if isinstance(server, SFTPTestServer):
        kw.setdefault("known_hosts", server.known_hosts)
    return SourceSettings(name=name, url=server.url, **kw)


def write_config(path: Path, settings: Settings) -> Path:
    """The settings as a YAML file for `csvbridge run/watch --config` (secrets included)."""
    data = settings.model_dump(mode="json", exclude_none=True)
    data["api"]["token"] = settings.api.token.get_secret_value()
    for raw, src in zip(data["sources"], settings.sources, strict=True):
        if src.password is not None:
            raw["password"] = src.password.get_secret_value()
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def cli(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """`python -m csvbridge ...` as cron would start it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "csvbridge", *args], env=env, **popen)


def listing(drop: Path) -> dict[str, list[str]]:
    """What a person sees in the drop: the root's files, then each stage folder's."""
    out = {"": sorted(p.name for p in drop.iterdir() if p.is_file())}
    for stage in STAGES:
        folder = drop / stage
        out[stage] = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return out


def read_report(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text(encoding="utf-8"))
    assert_accounted(report)
    return report


def assert_accounted(report: dict[str, Any]) -> None:
    """Every row read is converted, rejected or skipped; every converted row is shipped,
    rejected by the API or not shipped; the same for objects."""
    rows, objs = report["rows"], report[report["kind"]]
    assert report["accounted"] is True
    assert rows["read"] == rows["converted"] + rows["rejected"] + rows["skipped"]
    assert rows["converted"] == rows["shipped"] + rows["rejected_by_api"] + rows["not_shipped"]
    assert objs["valid"] == objs["shipped"] + objs["rejected_by_api"] + objs["not_shipped"]


def ledger_files(settings: Settings) -> dict[str, Any]:
    with Ledger(settings.state.ledger) as ledger:
        return {e.name: e for e in ledger.files(limit=1000)}


def ledger_accepted(db: Path) -> set[str]:
    """Accepted ids as committed, read by a separate connection (safe while a pass runs)."""
    if not db.exists():
        return set()
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT conversion_id FROM conversions WHERE outcome='accepted'")
            return {r[0] for r in rows}
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return set()


def assert_received_exactly(emu: Emulator, ids: set[str]) -> None:
    stats = emu.stats
    assert set(stats.received_ids) == ids, (
        f"missing {sorted(ids - set(stats.received_ids))[:5]}, "
        f"unexpected {sorted(set(stats.received_ids) - ids)[:5]}"
    )
    assert stats.resent == set(), f"re-sent: {sorted(stats.resent)[:5]}"


def files_of(summary: PassSummary) -> dict[str, FileOutcome]:
    """The files a pass took (not those it skipped), by name, in order."""
    return {f.file: f for f in summary.files if f.state is not FileState.SKIPPED}


@pytest.fixture
def emu(emulator: Callable[..., Emulator]) -> Emulator:
    """The API emulator at test speed, with a token distinctive enough to grep for."""
    return emulator(token=TOKEN)


# --------------------------------------------------------------------------- local drop


def test_local_drop_end_to_end(tmp_path: Path, emu: Emulator) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copy(DEMO, drop / DEMO.name)
    age(drop / DEMO.name, 600)
    good, _ = write_export(drop / "orders-2026-11-22.csv", 12, first=1000)
    settings = make_settings(tmp_path, emu, local_source(drop))

    summary = run_once(settings)

    assert summary.exit_code == 1, summary.describe()  # some conversions rejected
    assert listing(drop) == {
        "": [],
        "processing": [],
        "done": ["orders-2026-11-22.csv", "orders-2026-11-22.csv.report.json"],
        "failed": [
            DEMO.name,
            f"{DEMO.name}.rejects.csv",
            f"{DEMO.name}.report.json",
        ],
    }
    # moved, not rewritten
    assert (drop / "failed" / DEMO.name).read_bytes() == DEMO.read_bytes()

    demo_valid = csv_ids(DEMO) - DEMO_INVALID
    assert len(demo_valid) == 28
    assert_received_exactly(emu, demo_valid | good)

    report = read_report(drop / "failed" / f"{DEMO.name}.report.json")
    assert report["conversions"] == {
        "valid": 28,
        "rejected": 2,
        "shipped": 28,
        "rejected_by_api": 0,
        "not_shipped": 0,
    }
    assert {i for e in report["errors"] for i in e["meta"]["ids"]} == DEMO_INVALID
    ok_report = read_report(drop / "done" / "orders-2026-11-22.csv.report.json")
    assert ok_report["conversions"]["shipped"] == 12 and ok_report["errors"] == []

    # the rejects CSV: the source header + an error column, only the rejected rows, verbatim
    with open(DEMO, encoding="utf-8", newline="") as f:
        source = list(csv.reader(f))
    with open(drop / "failed" / f"{DEMO.name}.rejects.csv", encoding="utf-8", newline="") as f:
        rejects = list(csv.reader(f))
    assert rejects[0] == [*source[0], "csvbridge_error"]
    expected_rows = [row for row in source[1:] if row[0] in DEMO_INVALID]
    assert len(expected_rows) == report["rows"]["rejected"] == 8
    assert [row[:-1] for row in rejects[1:]] == expected_rows
    assert all(row[-1].startswith("line ") for row in rejects[1:])

    entries = ledger_files(settings)
    assert entries[DEMO.name].status == "failed"
    assert entries["orders-2026-11-22.csv"].status == "done"
    assert entries["orders-2026-11-22.csv"].shipped == 12
    assert entries[DEMO.name].shipped == 28 and entries[DEMO.name].rejected == 2
    for e in entries.values():
        assert e.report_path is not None and e.report_path.endswith(".report.json")

    totals = summary.totals()
    assert totals == {
        "files": 2,
        "rows": 126 + ok_report["rows"]["read"],
        "shipped": 40,
        "rejected": 2,
        "failed_files": 1,
        "skipped_files": 0,
    }
    # a second pass finds nothing to do
    again = run_once(settings)
    assert again.exit_code == 0 and again.totals()["files"] == 0
    assert_received_exactly(emu, demo_valid | good)


def test_on_success_delete_removes_only_files_that_fully_succeeded(
    tmp_path: Path, emu: Emulator
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    good, _ = write_export(drop / "good.csv", 5)
    valid, bad = write_export(drop / "partly-bad.csv", 6, first=100, invalid={101, 104})
    settings = make_settings(tmp_path, emu, local_source(drop, on_success="delete"))

    summary = run_once(settings)

    assert summary.exit_code == 1
    assert listing(drop) == {
        "": [],
        "processing": [],
        "done": [],  # deleted
        "failed": ["partly-bad.csv", "partly-bad.csv.rejects.csv", "partly-bad.csv.report.json"],
    }
    assert files_of(summary)["good.csv"].moved_to is None
    assert_received_exactly(emu, good | valid)
    assert csv_ids(drop / "failed" / "partly-bad.csv.rejects.csv") == bad
    entries = ledger_files(settings)
    assert entries["good.csv"].status == "done" and entries["partly-bad.csv"].status == "failed"


# --------------------------------------------------------------------------- remote drops


@pytest.fixture(params=["ftp", "ftps", "sftp"])
def server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> FTPTestServer | SFTPTestServer:
    srv = request.getfixturevalue(f"{request.param}_server")
    if request.param == "ftps":
        # SourceSettings has no ca_file (filesystem_for looks for one): trust the test CA
        # the way an operator would without it, through OpenSSL's default verify paths.
        monkeypatch.setenv("SSL_CERT_FILE", str(srv.ca_file))
    return srv


def test_remote_drop_end_to_end(
    tmp_path: Path, emu: Emulator, server: FTPTestServer | SFTPTestServer
) -> None:
    drop = server.root
    shutil.copy(DEMO, drop / DEMO.name)
    age(drop / DEMO.name, 600)
    good, _ = write_export(drop / "orders-2026-11-22.csv", 8, first=500)
    inodes = {p.name: p.stat().st_ino for p in drop.iterdir()}
    settings = make_settings(tmp_path, emu, server_source(server, "remote"))

    summary = run_once(settings)

    assert summary.exit_code == 1, summary.describe()
    assert listing(drop) == {
        "": [],
        "processing": [],
        "done": ["orders-2026-11-22.csv", "orders-2026-11-22.csv.report.json"],
        "failed": [DEMO.name, f"{DEMO.name}.rejects.csv", f"{DEMO.name}.report.json"],
    }
    # claimed and filed away by renames on the server: the same files, never re-uploaded
    assert (drop / "failed" / DEMO.name).stat().st_ino == inodes[DEMO.name]
    assert (drop / "done" / "orders-2026-11-22.csv").stat().st_ino == inodes[
        "orders-2026-11-22.csv"
    ]
    assert_received_exactly(emu, (csv_ids(DEMO) - DEMO_INVALID) | good)
    report = read_report(drop / "failed" / f"{DEMO.name}.report.json")
    assert report["conversions"]["rejected"] == 2 and report["conversions"]["shipped"] == 28
    assert csv_ids(drop / "failed" / f"{DEMO.name}.rejects.csv") == DEMO_INVALID
    read_report(drop / "done" / "orders-2026-11-22.csv.report.json")
    assert {e.status for e in ledger_files(settings).values()} == {"done", "failed"}


# --------------------------------------------------------------------------- what is taken


class Appender(threading.Thread):
    """Writes an export slowly, one conversion every `pause` seconds, like a slow upload
    or a script appending with ``>>``: the file is reopened for every conversion, which
    also raises open/close events for a watcher.  Fails if the file is taken away from
    under it."""

    def __init__(self, path: Path, *, pause: float = 0.05, first: int = 9000) -> None:
        super().__init__(daemon=True, name="appender")
        self.path, self.pause, self.first = path, pause, first
        self.finish = threading.Event()
        self.ids: set[str] = set()
        self.written = threading.Event()  # the header and a first conversion are there
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            rnd = random.Random(self.first)
            with open(self.path, "w", encoding="utf-8", newline="") as f:
                csv.writer(f, lineterminator="\r\n").writerow(TEMPLATE_HEADER)
            k = self.first
            while True:
                rows = conversion_rows(k, rnd)
                try:
                    f = open(self.path, "r+", encoding="utf-8", newline="")  # noqa: SIM115
                except FileNotFoundError:
                    raise AssertionError(
                        f"{self.path.name} was taken while being written "
                        f"({len(self.ids)} conversions in)"
                    ) from None
                with f:
                    f.seek(0, os.SEEK_END)
                    csv.writer(f, lineterminator="\r\n").writerows(rows)
                self.ids.add(rows[0][0])
                self.written.set()
                k += 1
                if self.finish.wait(self.pause):
                    return
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self.written.set()

    def stop(self) -> set[str]:
        self.finish.set()
        self.join(timeout=10)
        assert self.error is None, self.error
        return self.ids


def test_a_file_still_being_written_is_not_taken(tmp_path: Path, emu: Emulator) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    ready, _ = write_export(drop / "ready.csv", 3)
    age(drop / "ready.csv", 60)
    writer = Appender(drop / "growing.csv")
    writer.start()
    writer.written.wait(10)
    # stable_polls: size and mtime must not change between two polls, which a cron pass
    # takes min(2 s, poll interval) apart
    settings = make_settings(
        tmp_path, emu, local_source(drop, stable_polls=1, poll_interval_seconds=1)
    )
    try:
        summary = run_once(settings)
        assert list(files_of(summary)) == ["ready.csv"]
        assert (drop / "growing.csv").exists()
        # min_age_seconds: a file modified within the last N seconds is not taken either
        young = make_settings(tmp_path, emu, local_source(drop, min_age_seconds=3))
        assert run_once(young).totals()["files"] == 0
    finally:
        growing = writer.stop()
    assert listing(drop)[""] == ["growing.csv"]
    assert_received_exactly(emu, ready)  # nothing of the growing file went out

    summary = run_once(settings)  # the writer is done: the file is stable now
    assert summary.exit_code == 0 and list(files_of(summary)) == ["growing.csv"]
    assert_received_exactly(emu, ready | growing)  # all of it, not a truncated prefix
    report = read_report(drop / "done" / "growing.csv.report.json")
    assert report["conversions"]["shipped"] == len(growing)


def test_done_marker_include_exclude_and_oldest_first(tmp_path: Path, emu: Emulator) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    # the same conversion in three exports: the latest status must win at the API
    ids = [
        write_export(drop / name, 1, first=7, status=status)[0]
        for name, status in [
            ("c-first.csv", "pending"),
            ("a-second.csv", "shipped"),
            ("b-third.csv", "delivered"),
        ]
    ]
    assert ids[0] == ids[1] == ids[2]
    for n, name in enumerate(["c-first.csv", "a-second.csv", "b-third.csv"]):
        age(drop / name, 300 - 60 * n)  # oldest first is c, a, b: not alphabetical
        (drop / f"{name}.done").touch()
    other, _ = write_export(drop / "UPPER.CSV", 2, first=20)
    (drop / "UPPER.done").touch()  # the <stem>.done form
    zipped, _ = write_export(drop / "zipped.csv", 2, first=30)
    with open(drop / "zipped.csv", "rb") as f, gzip.open(drop / "zipped.csv.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    (drop / "zipped.csv").unlink()
    (drop / "zipped.csv.gz.done").touch()
    for name in ["tmp-skip.csv", "notes.txt", ".hidden.csv", "upload.csv.part"]:
        write_export(drop / name, 1, first=40)
        (drop / f"{name}.done").touch()
    unannounced, _ = write_export(drop / "later.csv", 2, first=50)  # no marker yet
    settings = make_settings(tmp_path, emu, local_source(drop, done_marker=True, exclude=["tmp-*"]))

    summary = run_once(settings)

    taken = list(files_of(summary))
    assert taken[:3] == ["c-first.csv", "a-second.csv", "b-third.csv"]
    assert sorted(taken) == sorted(
        ["c-first.csv", "a-second.csv", "b-third.csv", "UPPER.CSV", "zipped.csv.gz"]
    )
    assert summary.exit_code == 0
    (cid,) = ids[0]
    assert emu.store["conversions"][cid]["status"] == "delivered"  # the newest export won
    assert emu.stats.received_ids[cid] == 3
    assert set(emu.stats.received_ids) == ids[0] | other | zipped
    # markers of taken files are consumed; the rest is untouched
    assert listing(drop)[""] == sorted(
        [
            ".hidden.csv",
            ".hidden.csv.done",
            "later.csv",
            "notes.txt",
            "notes.txt.done",
            "tmp-skip.csv",
            "tmp-skip.csv.done",
            "upload.csv.part",
            "upload.csv.part.done",
        ]
    )
    (drop / "later.done").touch()
    summary = run_once(settings)
    assert list(files_of(summary)) == ["later.csv"]
    assert set(emu.stats.received_ids) == ids[0] | other | zipped | unannounced


# --------------------------------------------------------------------------- failures


def test_ftp_cut_mid_download_then_stopped_nothing_lost(
    tmp_path: Path, emu: Emulator, ftp_server: FTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    drop = ftp_server.root
    first, _ = write_export(drop / "first.csv", 60)
    age(drop / "first.csv", 120)
    second, _ = write_export(drop / "second.csv", 3, first=100)
    assert (drop / "first.csv").stat().st_size > 150_000  # several blocks: cut mid-file
    settings = make_settings(tmp_path, emu, server_source(ftp_server, "ftp"))

    # the connection is cut mid-download, and again after the transparent reconnect
    ftp_server.drop_downloads(after_bytes=50_000, times=2)
    summary = run_once(settings)
    assert summary.exit_code == 3, summary.describe()
    error = summary.sources[0].error or ""
    assert "lost during download" in error and ftp_server.url.rstrip("/") in error
    # claimed, visibly: in processing/ on the server, nothing else moved, nothing sent
    assert listing(drop) == {
        "": ["second.csv"],
        "processing": ["first.csv"],
        "done": [],
        "failed": [],
    }
    assert emu.stats.received_ids == {}
    assert not list((tmp_path / "state" / "work").rglob("*.csv"))  # no partial download kept

    # the server is down: the pass says so, and touches nothing
    ftp_server.stop()
    summary = run_once(settings)
    assert summary.exit_code == 3
    assert "cannot connect" in (summary.sources[0].error or "")
    assert listing(drop)["processing"] == ["first.csv"] and listing(drop)[""] == ["second.csv"]

    # back up: the interrupted file is resumed first, then the rest
    ftp_server.start()
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    assert list(files_of(summary)) == ["first.csv", "second.csv"]
    assert listing(drop)["done"] == sorted(
        ["first.csv", "first.csv.report.json", "second.csv", "second.csv.report.json"]
    )
    assert_received_exactly(emu, first | second)
    assert PASSWORD not in caplog.text and PASSWORD not in repr(summary)


class DataCuttingFTPServer(FTPTestServer):
    """An FTP server whose next `cuts` downloads stop after `after_bytes` bytes while the
    control connection stays up and answers `reply`: 426 (the data connection broke) or,
    like some servers and middleboxes, a plain 226 as if the transfer were complete."""

    def __init__(self, root: Path) -> None:
        self.cuts, self.after_bytes, self.reply = 0, 50_000, "426 Connection reset."
        super().__init__(root)

    def _make_handler(self, tls_files: Any) -> Any:
        handler = super()._make_handler(tls_files)
        ctl = self

        class DTP(handler.dtp_handler):  # type: ignore[misc,name-defined]
            def send(self, data: bytes) -> int:
                sent = super().send(data)
                downloading = self.file_obj is not None and not self.receive
                if ctl.cuts and downloading and self.tot_bytes_sent >= ctl.after_bytes:
                    ctl.cuts -= 1
                    self._resp = (ctl.reply, lambda *a, **k: None)  # answer, then
                    self.close()  # close the data connection only
                return sent

        handler.dtp_handler = DTP
        return handler


@pytest.fixture
def cutting_ftp(tmp_path: Path) -> Iterator[DataCuttingFTPServer]:
    (tmp_path / "cutting-home").mkdir()
    server = DataCuttingFTPServer(tmp_path / "cutting-home")
    server.start()
    yield server
    server.stop()


def test_ftp_data_connection_failures_never_ship_a_partial_file(
    tmp_path: Path, emu: Emulator, cutting_ftp: DataCuttingFTPServer
) -> None:
    drop = cutting_ftp.root
    first, _ = write_export(drop / "first.csv", 60)
    settings = make_settings(tmp_path, emu, server_source(cutting_ftp, "ftp"))

    # 426 once: the download is retried on a fresh session, transparently
    cutting_ftp.cuts = 1
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    assert cutting_ftp.cuts == 0 and listing(drop)["done"] == ["first.csv", "first.csv.report.json"]
    assert_received_exactly(emu, first)

    # cut short but answered "226 complete": the size check catches it, nothing is sent
    # and the file waits in processing/ for the next pass
    second, _ = write_export(drop / "second.csv", 60, first=100)
    cutting_ftp.cuts, cutting_ftp.reply = 1, "226 Transfer complete."
    summary = run_once(settings)
    assert summary.exit_code == 3, summary.describe()
    assert "received 65536 of" in (summary.sources[0].error or "")
    assert listing(drop)["processing"] == ["second.csv"] and listing(drop)["failed"] == []
    assert set(emu.stats.received_ids) == first
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    assert_received_exactly(emu, first | second)
    assert "second.csv" in listing(drop)["done"]


def test_ftp_down_between_shipping_and_filing_away_resumes_without_resending(
    tmp_path: Path, emulator: Callable[..., Emulator], ftp_server: FTPTestServer
) -> None:
    slow = emulator(token=TOKEN, speed=1)  # 30 conversions/s: the shipment takes ~2 s
    drop = ftp_server.root
    ids, _ = write_export(drop / "orders.csv", 60)
    settings = make_settings(
        tmp_path, slow, server_source(ftp_server, "ftp"), max_objects_per_request=10
    )
    result: list[PassSummary] = []
    thread = threading.Thread(target=lambda: result.append(run_once(settings)))
    thread.start()
    wait_until(lambda: ledger_accepted(settings.state.ledger), what="a first accepted batch")
    ftp_server.stop()  # while the API is still taking the file's batches
    thread.join(timeout=30)
    (summary,) = result
    assert summary.exit_code == 3, summary.describe()
    assert listing(drop)["processing"] == ["orders.csv"]  # shipped, but not filed away
    assert set(slow.stats.received_ids) == ids  # the shipment itself completed
    (entry,) = ledger_files(settings).values()
    assert entry.status == "processing"

    ftp_server.start()
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    assert listing(drop)["done"] == ["orders.csv", "orders.csv.report.json"]
    assert_received_exactly(slow, ids)  # nothing sent twice
    report = read_report(drop / "done" / "orders.csv.report.json")
    assert report["conversions"]["shipped"] == 60
    assert report["shipped_by_earlier_attempts"] == 60
    (entry,) = ledger_files(settings).values()
    assert entry.status == "done" and entry.attempts == 2 and entry.shipped == 60


def test_same_content_under_another_name_is_not_sent_again(tmp_path: Path, emu: Emulator) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "orders.csv", 5)
    original = (drop / "orders.csv").read_bytes()
    settings = make_settings(tmp_path, emu, local_source(drop))
    assert run_once(settings).exit_code == 0

    (drop / "orders (copy).csv").write_bytes(original)  # another name
    (drop / "orders.csv").write_bytes(original)  # and the same name again
    summary = run_once(settings)

    assert summary.exit_code == 0
    assert summary.totals()["shipped"] == 0
    assert_received_exactly(emu, ids)  # each conversion exactly once
    done = listing(drop)["done"]
    assert len(done) == 6 and "orders (copy).csv" in done and "orders.csv" in done
    again = [n for n in done if n.startswith("orders.2") and n.endswith(".csv")]
    assert len(again) == 1  # the first done/orders.csv was not overwritten
    assert (drop / "done" / again[0]).read_bytes() == original
    report = read_report(drop / "done" / "orders (copy).csv.report.json")
    assert report["duplicate_of"].startswith("shop/orders.csv")
    assert len(ledger_files(settings)) == 1


def test_malformed_files_go_to_failed_and_never_block_the_rest(
    tmp_path: Path, emu: Emulator
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    header, _, body = DEMO.read_bytes().partition(b"\n")
    bad = {
        "binary.csv": bytes(range(256)) * 20,
        "empty.csv": b"",
        "no-header.csv": body,
        "missing-column.csv": b"user.user_email,type,status\r\nx@example.com,online,shipped\r\n",
    }
    for n, (name, data) in enumerate(bad.items()):
        (drop / name).write_bytes(data)
        age(drop / name, 600 - n)  # oldest: processed before the good file
    good, _ = write_export(drop / "good.csv", 4)
    settings = make_settings(tmp_path, emu, local_source(drop, on_success="delete"))

    summary = run_once(settings)

    assert summary.exit_code == 1, summary.describe()
    assert list(files_of(summary)) == [*bad, "good.csv"]
    assert listing(drop)["failed"] == sorted([*bad, *(f"{n}.report.json" for n in bad)])
    assert listing(drop)[""] == [] and listing(drop)["done"] == []  # good.csv: deleted
    for name, data in bad.items():
        assert (drop / "failed" / name).read_bytes() == data  # kept, unchanged
        report = json.loads((drop / "failed" / f"{name}.report.json").read_text())
        assert report["fatal"], name
    reasons = {
        n: json.loads((drop / "failed" / f"{n}.report.json").read_text())["fatal"] for n in bad
    }
    assert "binary" in reasons["binary.csv"]
    assert "empty" in reasons["empty.csv"]
    assert "required column missing" in reasons["missing-column.csv"]
    assert_received_exactly(emu, good)
    statuses = {n: e.status for n, e in ledger_files(settings).items()}
    assert statuses == {**dict.fromkeys(bad, "failed"), "good.csv": "done"}


def test_unknown_sftp_host_key_is_refused(
    tmp_path: Path, emu: Emulator, sftp_server: SFTPTestServer
) -> None:
    write_export(sftp_server.root / "orders.csv", 2)
    source = server_source(sftp_server, "sftp", known_hosts=None)
    settings = make_settings(tmp_path, emu, source)

    summary = run_once(settings)

    assert summary.exit_code == 3
    error = summary.sources[0].error or ""
    assert "unknown host key" in error and sftp_server.fingerprint in error
    assert sorted(p.name for p in sftp_server.root.iterdir()) == ["orders.csv"]  # untouched
    assert emu.stats.requests == 0
    assert PASSWORD not in error


def test_api_401_stops_the_pass_with_exit_2_and_loses_nothing(
    tmp_path: Path, emu: Emulator
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    a, _ = write_export(drop / "a.csv", 3)
    age(drop / "a.csv", 60)
    b, _ = write_export(drop / "b.csv", 3, first=10)
    wrong = "tok-WRONG-but-secret-too-42"
    settings = make_settings(tmp_path, emu, local_source(drop), token=wrong)
    config = write_config(tmp_path / "csvbridge.yaml", settings)

    proc = cli("run", "--config", str(config))
    _, err = proc.communicate(timeout=60)

    stderr = err.decode()
    assert proc.returncode == 2, stderr
    assert "refused the token" in stderr and "wrong or unknown API token" in stderr
    assert wrong not in stderr and TOKEN not in stderr
    # not failed, not lost: the file being shipped waits in processing/, the rest in the drop
    assert listing(drop) == {"": ["b.csv"], "processing": ["a.csv"], "done": [], "failed": []}
    assert emu.stats.received_ids == {}

    config = write_config(config, make_settings(tmp_path, emu, local_source(drop)))
    proc = cli("run", "--config", str(config))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert_received_exactly(emu, a | b)
    assert listing(drop)["done"] == ["a.csv", "a.csv.report.json", "b.csv", "b.csv.report.json"]


class RefusingEmulator(Emulator):
    """Hangs up without an answer on any request carrying `refuse` (a transient failure
    the client retries, then gives up on)."""

    refuse: str | None = None

    def answer_post(self, target: str, headers: Any, body: bytes) -> Any:
        if self.refuse is not None and self.refuse.encode() in body:
            return None
        return super().answer_post(target, headers, body)


def test_an_unfinished_file_is_not_overtaken_by_newer_exports(tmp_path: Path) -> None:
    emu = RefusingEmulator(token=TOKEN, speed=10).start()
    try:
        drop = tmp_path / "drop"
        drop.mkdir()
        # conversion 7 is created by the older export and updated by the newer one
        old, _ = write_export(drop / "old.csv", 2, first=7, status="pending")
        age(drop / "old.csv", 60)
        new, _ = write_export(drop / "new.csv", 1, first=7, status="delivered")
        (updated,) = new
        emu.refuse = next(iter(old - new))  # the API keeps failing old.csv's batch
        settings = make_settings(tmp_path, emu, local_source(drop), max_attempts=2)

        summary = run_once(settings)

        assert summary.exit_code == 3
        assert list(files_of(summary)) == ["old.csv"]  # new.csv waits its turn
        assert listing(drop) == {
            "": ["new.csv"],
            "processing": ["old.csv"],
            "done": [],
            "failed": [],
        }
        emu.refuse = None
        assert run_once(settings).exit_code == 0
        assert emu.store["conversions"][updated]["status"] == "delivered"
        assert set(emu.stats.received_ids) == old | new
    finally:
        emu.stop()


def test_missing_site_id_stops_the_pass_with_exit_2_and_fails_no_file(
    tmp_path: Path, emu: Emulator
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    a, _ = write_export(drop / "a.csv", 2)
    age(drop / "a.csv", 60)
    b, _ = write_export(drop / "b.csv", 2, first=10)

    summary = run_once(make_settings(tmp_path, emu, local_source(drop), site_id=""))

    assert summary.exit_code == 2
    assert summary.fatal == "no site id configured: set api.site_id or CSVBRIDGE_SITE_ID"
    assert listing(drop) == {"": ["b.csv"], "processing": ["a.csv"], "done": [], "failed": []}
    summary = run_once(make_settings(tmp_path, emu, local_source(drop)))
    assert summary.exit_code == 0
    assert_received_exactly(emu, a | b)


# --------------------------------------------------------------------------- processes


def slow_shipment(
    tmp_path: Path, emulator: Callable[..., Emulator], n: int = 300
) -> tuple[Emulator, Settings, Path, set[str]]:
    """A drop with one export of `n` conversions and settings that ship it in ~3 s
    (90 conversions/s, batches of 20), so a test can act in the middle of it."""
    emu = emulator(token=TOKEN, speed=3)
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "big.csv", n)
    settings = make_settings(
        tmp_path, emu, local_source(drop), max_objects_per_request=20, max_attempts=100
    )
    return emu, settings, write_config(tmp_path / "csvbridge.yaml", settings), ids


def test_two_cron_passes_at_once(tmp_path: Path, emulator: Callable[..., Emulator]) -> None:
    emu, settings, config, ids = slow_shipment(tmp_path, emulator, n=150)
    drop = tmp_path / "drop"
    small, _ = write_export(drop / "small.csv", 2, first=5000)
    first = cli("run", "--config", str(config))
    try:
        wait_until(lambda: ledger_accepted(settings.state.ledger), what="pass 1 shipping")
        second = cli("run", "--config", str(config))
        _, err = second.communicate(timeout=60)
        assert second.returncode == 3
        assert f"another csvbridge pass is running (pid {first.pid})" in err.decode()
        # in-process too: the lock names its holder
        elsewhere = StateSettings(
            ledger=tmp_path / "other.sqlite",
            work_dir=tmp_path / "other-work",
            lock_file=tmp_path / "other.lock",
        )
        with PassLock(elsewhere.lock_file), pytest.raises(LockedError) as info:
            run_once(settings.model_copy(update={"state": elsewhere}))
        assert f"pid {os.getpid()}" in str(info.value)
    finally:
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err.decode()
    assert_received_exactly(emu, ids | small)  # nothing processed twice
    assert listing(drop)["done"] == sorted(
        ["big.csv", "big.csv.report.json", "small.csv", "small.csv.report.json"]
    )
    assert all(e.attempts == 1 for e in ledger_files(settings).values())


def finish_after_kill(
    emu: Emulator, settings: Settings, config: Path, ids: set[str]
) -> dict[str, Any]:
    """The pass after a crash: resumes the file from processing/ and completes it."""
    drop = Path(settings.sources[0].url.removeprefix("file://"))
    assert listing(drop)["processing"] == ["big.csv"]  # the crash left it visibly there
    proc = cli("run", "--config", str(config))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert set(emu.stats.received_ids) == ids  # zero lost
    assert listing(drop) == {
        "": [],
        "processing": [],
        "done": ["big.csv", "big.csv.report.json"],
        "failed": [],
    }
    (entry,) = ledger_files(settings).values()
    assert entry.status == "done" and entry.attempts == 2 and entry.shipped == len(ids)
    return read_report(drop / "done" / "big.csv.report.json")


def test_kill_9_mid_shipment_loses_nothing_and_resends_only_unanswered_batches(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    """SIGKILL at an arbitrary moment of a shipment.

    Requests in flight when the process dies were already received by the API, which
    goes on processing and accepting them; the dead client never recorded the answer.
    Those batches (at most max_in_flight of them) are necessarily sent again on resume:
    at-least-once delivery, harmless since the API treats a known id as an update.  What
    must hold: nothing lost, and nothing the ledger recorded as accepted is sent again.
    """
    emu, settings, config, ids = slow_shipment(tmp_path, emulator)
    proc = cli("run", "--config", str(config))
    try:
        wait_until(
            lambda: len(ledger_accepted(settings.state.ledger)) >= 60,
            what="some accepted batches in the ledger",
        )
    finally:
        kill9(proc)
    recorded = ledger_accepted(settings.state.ledger)
    assert 0 < len(recorded) < len(ids)

    report = finish_after_kill(emu, settings, config, ids)

    resent = emu.stats.resent
    assert not resent & recorded  # what the ledger knew was never sent again
    # only the batches that were in flight, unanswered, at the kill went out twice
    in_flight = settings.api.max_in_flight * settings.api.max_objects_per_request
    assert len(resent) <= in_flight
    assert report["shipped_by_earlier_attempts"] == len(recorded)
    assert report["conversions"]["shipped"] == len(ids)


def test_kill_9_between_answered_batches_resends_nothing(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    """SIGKILL when every batch the API accepted has its answer in the ledger: the
    resumed pass sends exactly the conversions never accepted, each once."""
    emu, settings, config, ids = slow_shipment(tmp_path, emulator)
    proc = cli("run", "--config", str(config))
    try:
        wait_until(
            lambda: len(ledger_accepted(settings.state.ledger)) >= 60,
            what="some accepted batches in the ledger",
        )
        # From now on the emulator answers 500 to everything (the client keeps retrying)
        # so no further batch is accepted; once the requests it was already processing
        # are answered and recorded, the ledger holds everything the API has.
        # (A request counts as in flight before the emulator draws its failure, so no
        # request admitted before the switch is missed.)
        emu.fail_rate = 1.0
        wait_until(lambda: emu._in_flight == 0, what="requests in flight to be answered")
        accepted = set(emu.stats.received_ids)
        wait_until(
            lambda: ledger_accepted(settings.state.ledger) == accepted,
            what="the ledger to record every answered batch",
        )
    finally:
        kill9(proc)
    emu.fail_rate = 0.0

    report = finish_after_kill(emu, settings, config, ids)

    assert_received_exactly(emu, ids)  # zero lost, zero sent twice
    assert report["shipped_by_earlier_attempts"] == len(accepted)


# --------------------------------------------------------------------------- secrets


def test_secrets_never_appear_in_logs_reports_errors_or_state(
    tmp_path: Path,
    emu: Emulator,
    ftp_server: FTPTestServer,
    sftp_server: SFTPTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")  # caplog sees messages before any redaction: none may hold one
    wrong = "Wr0ng-Pa55word-for-ftp!"
    shutil.copy(DEMO, ftp_server.root / DEMO.name)
    write_export(sftp_server.root / "orders.csv", 3)
    sources = [
        server_source(ftp_server, "ftp"),
        server_source(sftp_server, "sftp"),
        server_source(ftp_server, "ftp-wrong", password=wrong),
    ]
    settings = make_settings(tmp_path, emu, *sources)
    settings.logging.level = "DEBUG"

    summary = run_once(settings)

    assert summary.exit_code == 3  # the source with the wrong password
    assert "ftp-wrong" in caplog.text and "csvbridge.api" in caplog.text  # logs were seen
    assert "authentication failed" in (summary.sources[2].error or "")
    assert listing(ftp_server.root)["failed"] and listing(sftp_server.root)["done"]
    # the command line, with its own logging (DEBUG) and an API that refuses the token
    write_export(sftp_server.root / "more.csv", 2, first=50)
    bad_token = make_settings(tmp_path, emu, *sources, token="tok-refused-secret-77")
    bad_token.logging.level = "DEBUG"
    proc = cli("run", "--config", str(write_config(tmp_path / "c.yaml", bad_token)))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2

    texts = {
        "logs": caplog.text,
        "summary": repr(summary) + summary.describe(),
        "cli": (out + err).decode(errors="replace"),
        "settings": repr(settings) + str(settings),
    }
    for root in (ftp_server.root, sftp_server.root):
        for p in root.rglob("*"):
            if p.is_file() and p.name.endswith((".report.json", ".rejects.csv")):
                texts[str(p)] = p.read_text(encoding="utf-8")
    for p in (tmp_path / "state").glob("ledger.sqlite*"):
        texts[str(p)] = p.read_bytes().decode("latin-1")
    assert len(texts) >= 8
    for where, text in texts.items():
        for secret in (PASSWORD, wrong, TOKEN, "tok-refused-secret-77"):
            assert secret not in text, f"{secret!r} leaked into {where}"
