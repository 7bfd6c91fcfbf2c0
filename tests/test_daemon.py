"""`csvbridge watch`, the daemon: watchdog pickup, resilience, /healthz and /metrics,
SIGTERM and resume.  Real drops, the real emulator, a real process for the signals."""

from __future__ import annotations

import json
import re
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csvbridge.config import Settings
from csvbridge.drops.daemon import watch
from csvbridge.testing.emulator import Emulator
from tests.plugins.servers import FTPTestServer
from tests.test_runner import (
    TOKEN,
    Appender,
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
    wait_until,
    write_export,
)


@pytest.fixture
def emu(emulator: Callable[..., Emulator]) -> Emulator:
    return emulator(token=TOKEN)


@contextmanager
def daemon(settings: Settings, caplog: pytest.LogCaptureFixture) -> Iterator[dict[str, Any]]:
    """`watch` in a thread until the block ends; yields {"url": metrics base URL or None}.

    The metrics server binds port 0; its address is read from the daemon's own log line.
    """
    caplog.set_level("INFO")
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(watch(settings, stop=stop, install_signals=False)),
        name="csvbridge-watch",
        daemon=True,
    )
    seen = len(caplog.records)
    thread.start()
    info: dict[str, Any] = {"url": None, "codes": codes}
    try:
        if settings.metrics.port is not None:

            def announced() -> str | None:
                for record in caplog.records[seen:]:
                    m = re.search(r"metrics on (http://\S+)/metrics", record.getMessage())
                    if m:
                        return m.group(1)
                return None

            info["url"] = wait_until(announced, what="the metrics endpoint")
        yield info
    finally:
        stop.set()
        thread.join(timeout=10)  # well under the poll intervals used: stop wakes it up
    assert not thread.is_alive(), "watch did not stop when asked"
    assert codes == [0]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text, read with prometheus_client's parser (0 when
    absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"csvbridge_{name}" and s.labels == labels:
                return s.value
    return 0.0


def test_daemon_picks_up_files_survives_bad_ones_and_serves_metrics(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    # polling once a minute: a file picked up in seconds was noticed by watchdog
    settings = make_settings(tmp_path, emu, local_source(drop, poll_interval_seconds=60))
    settings.metrics.port = 0
    with daemon(settings, caplog) as d:
        status, body = get(d["url"] + "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        wait_until(lambda: (drop / "processing").is_dir(), what="the first pass")

        first, _ = write_export(drop / "first.csv", 4)
        wait_until(lambda: "first.csv" in listing(drop)["done"], what="first.csv in done/")
        (drop / "garbage.csv").write_bytes(b"\x00\x01 not a csv \xff" * 100)
        wait_until(lambda: "garbage.csv" in listing(drop)["failed"], what="garbage in failed/")
        second, _ = write_export(drop / "second.csv", 3, first=100)
        wait_until(lambda: "second.csv" in listing(drop)["done"], what="second.csv in done/")

        assert_received_exactly(emu, first | second)
        status, body = get(d["url"] + "/healthz")
        assert status == 200, body  # a bad file is not an unhealthy daemon

        # the counters move just after the file is filed away: wait for them, don't race
        def scraped_after_second() -> str | None:
            status, text = get(d["url"] + "/metrics")
            assert status == 200
            done = metric(text, "files_processed_total", source="shop", status="done")
            return text if done == 2 else None

        text = wait_until(scraped_after_second, what="the metrics to count second.csv")
        assert metric(text, "files_processed_total", source="shop", status="done") == 2
        assert metric(text, "files_processed_total", source="shop", status="failed") == 1
        assert metric(text, "objects_total", source="shop", kind="conversions", outcome="shipped") == 7
        assert metric(text, "last_success_timestamp_seconds", source="shop") > 0
        assert metric(text, "up") == 1
    assert listing(drop)[""] == []
    assert json.loads((drop / "failed" / "garbage.csv.report.json").read_text())["fatal"]


def test_daemon_waits_until_a_file_is_complete(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Every append wakes the daemon (watchdog), but wake-ups are not stability polls."""
    drop = tmp_path / "drop"
    drop.mkdir()
    source = local_source(drop, stable_polls=1, poll_interval_seconds=0.5)
    with daemon(make_settings(tmp_path, emu, source), caplog):
        writer = Appender(drop / "growing.csv", pause=0.1)
        writer.start()
        wait_until(lambda: len(writer.ids) >= 20 or writer.error, what="20 conversions written")
        ids = writer.stop()
        wait_until(lambda: "growing.csv" in listing(drop)["done"], what="growing.csv done")
    assert_received_exactly(emu, ids)
    assert read_report(drop / "done" / "growing.csv.report.json")["conversions"]["shipped"] == 20


def test_healthz_reports_a_failing_source_until_it_recovers(
    tmp_path: Path, emu: Emulator, ftp_server: FTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = make_settings(
        tmp_path,
        emu,
        local_source(drop, poll_interval_seconds=60),
        server_source(ftp_server, "remote", poll_interval_seconds=0.2),
    )
    settings.metrics.port = 0
    ftp_server.stop()
    with daemon(settings, caplog) as d:
        status, body = wait_until(
            lambda: (r := get(d["url"] + "/healthz"))[0] == 503 and r, what="503"
        )
        assert "remote" in json.loads(body)["last_error"]
        # the healthy local source working does not hide the failing one
        ids, _ = write_export(drop / "local.csv", 2)
        wait_until(lambda: "local.csv" in listing(drop)["done"], what="local.csv done")
        status, body = get(d["url"] + "/healthz")
        assert status == 503, body
        status, text = get(d["url"] + "/metrics")
        assert metric(text, "up") == 0
        assert metric(text, "errors_total", source="remote", kind="SourceUnavailable") >= 1

        remote_ids, _ = write_export(ftp_server.root / "remote.csv", 2, first=50)
        ftp_server.start()
        wait_until(lambda: get(d["url"] + "/healthz")[0] == 200, what="healthy again")
        wait_until(lambda: "remote.csv" in listing(ftp_server.root)["done"], what="remote done")
    assert_received_exactly(emu, ids | remote_ids)


def test_sigterm_stops_cleanly_mid_shipment_and_the_next_start_resumes(
    tmp_path: Path, emulator: Callable[..., Emulator], caplog: pytest.LogCaptureFixture
) -> None:
    emu, settings, config, ids = slow_shipment(tmp_path, emulator)
    drop = tmp_path / "drop"
    with open(tmp_path / "watch.log", "wb") as log:
        proc = cli("watch", "--config", str(config), stdout=log, stderr=log)
        try:
            wait_until(
                lambda: len(ledger_accepted(settings.state.ledger)) >= 60,
                what="the daemon shipping",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    output = (tmp_path / "watch.log").read_text()
    assert proc.returncode == 0, output
    assert "finishing the batch in flight" in output
    # stopped mid-file: the batches in flight were answered and recorded, the rest waits
    assert listing(drop)["processing"] == ["big.csv"]
    recorded = ledger_accepted(settings.state.ledger)
    assert set(emu.stats.received_ids) == recorded  # every answer made it to the ledger
    assert 0 < len(recorded) < len(ids)
    (entry,) = ledger_files(settings).values()
    assert entry.status == "processing"

    with daemon(settings, caplog):
        wait_until(lambda: "big.csv" in listing(drop)["done"], what="big.csv done")

    assert_received_exactly(emu, ids)  # the rest, and nothing twice
    report = read_report(drop / "done" / "big.csv.report.json")
    assert report["shipped_by_earlier_attempts"] == len(recorded)
    (entry,) = ledger_files(settings).values()
    assert entry.status == "done" and entry.attempts == 2


def test_healthz_names_a_source_whose_stage_folder_is_a_file_and_others_go_on(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    good.mkdir()
    (bad / "processing").write_text("not a folder\n")
    settings = make_settings(
        tmp_path,
        emu,
        local_source(bad, name="bad", poll_interval_seconds=0.2),
        local_source(good, name="good", poll_interval_seconds=60),
    )
    settings.metrics.port = 0
    with daemon(settings, caplog) as d:
        status, body = wait_until(
            lambda: (r := get(d["url"] + "/healthz"))[0] == 503 and r, what="503"
        )
        assert "bad: stage folder 'processing' is a regular file" in json.loads(body)["last_error"]
        ids, _ = write_export(good / "orders.csv", 2)
        wait_until(lambda: "orders.csv" in listing(good)["done"], what="the good source")
        _, text = get(d["url"] + "/metrics")
        assert metric(text, "errors_total", source="bad", kind="StageFolderError") >= 1

        (bad / "processing").unlink()  # fixed: healthy again
        wait_until(lambda: get(d["url"] + "/healthz")[0] == 200, what="healthy again")
    assert_received_exactly(emu, ids)
    assert "Traceback" not in caplog.text
