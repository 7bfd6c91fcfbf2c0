"""The three new ends wired into the runner, over loopback: a Commerce HQ source, the
events sink (tracking API) and the embedded FTP drop, beside local, FTP and SFTP drops.
Real servers (stand-ins, pyftpdlib, asyncssh), real files, a real SQLite ledger."""

from __future__ import annotations

import ftplib
import io
import json
import logging
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pydantic import SecretStr

from csvbridge.config import EventsSettings, Settings, SourceSettings, load_settings
from csvbridge.drops.daemon import watch
from csvbridge.drops.ftpserver import FtpDropSettings, hash_password
from csvbridge.drops.ledger import Ledger
from csvbridge.drops.runner import run_once
from csvbridge.fold.engine import convert, read_records
from csvbridge.report import FileState
from csvbridge.sinks.events import encode
from csvbridge.testing.commercehq import CommerceHQStandIn
from csvbridge.testing.emulator import Emulator
from csvbridge.testing.tracking import TrackingStandIn
from tests.helpers import kill9, wait_until
from tests.plugins.servers import FTPTestServer, SFTPTestServer
from tests.test_runner import (
    TOKEN,
    cli,
    csv_ids,
    listing,
    local_source,
    make_settings,
    read_report,
    server_source,
    write_export,
)

pytestmark = pytest.mark.timeout(180)

FTP_USER, FTP_PASSWORD = "erp", "erp-Upload-pw-42"
TRACK_TOKEN, TRACK_SITE = "tr4ck-Source-Key-xyz", "1234"


@pytest.fixture
def emu(emulator: Callable[..., Emulator]) -> Emulator:
    return emulator(token=TOKEN)


@pytest.fixture
def shop() -> Iterator[CommerceHQStandIn]:
    chq = CommerceHQStandIn(orders=120, seed=3).start()
    yield chq
    chq.stop()


@pytest.fixture
def tracking() -> Iterator[TrackingStandIn]:
    stand_in = TrackingStandIn(token=TRACK_TOKEN, site_id=TRACK_SITE).start()
    yield stand_in
    stand_in.stop()


def chq_source(chq: CommerceHQStandIn, **kw: Any) -> SourceSettings:
    return SourceSettings(
        name="chq",
        url=f"commercehq+http://{chq.host}:{chq.port}",
        api_key=chq.api_key,
        api_password=chq.api_password,
        page_size=25,
        timeout_seconds=10,
        **kw,
    )


def ftp_drop_source(root: Path, port: int = 0, **kw: Any) -> SourceSettings:
    section = FtpDropSettings(
        root=root,
        users=[{"name": FTP_USER, "password_hash": hash_password(FTP_PASSWORD, iterations=1000)}],
        allow_plain_ftp=True,
        confirm_seconds=0,
    )
    return SourceSettings(
        name="ftpdrop", url=f"ftpserver://127.0.0.1:{port}/", ftpserver=section, **kw
    )


def events_settings(stand_in: TrackingStandIn, **kw: Any) -> EventsSettings:
    values: dict[str, Any] = {
        "base_url": stand_in.url,
        "site_id": TRACK_SITE,
        "token": TRACK_TOKEN,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "requests_per_second": 400,
    }
    values.update(kw)
    return EventsSettings.model_validate(values)


def orders_with_items(chq: CommerceHQStandIn) -> set[str]:
    return {str(i) for i, o in chq.snapshot().items() if o.get("items")}


# --------------------------------------------------------------------------- every kind


def test_one_pass_takes_a_source_of_each_kind(
    tmp_path: Path,
    emu: Emulator,
    shop: CommerceHQStandIn,
    ftp_server: FTPTestServer,
    sftp_server: SFTPTestServer,
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    ids, _ = write_export(local / "local.csv", 3, first=0)
    more, _ = write_export(ftp_server.root / "ftp.csv", 3, first=100)
    ids |= more
    more, _ = write_export(sftp_server.root / "sftp.csv", 3, first=200)
    ids |= more
    home = tmp_path / "ftp-drop" / FTP_USER
    home.mkdir(parents=True)
    more, _ = write_export(home / "pushed.csv", 3, first=300)
    ids |= more
    (home / ".half.csv.Zx8.upload").write_text("id\n1")  # an upload still in progress
    settings = make_settings(
        tmp_path,
        emu,
        local_source(local, name="local"),
        server_source(ftp_server, "ftp"),
        server_source(sftp_server, "sftp"),
        chq_source(shop),
        ftp_drop_source(tmp_path / "ftp-drop"),
    )

    summary = run_once(settings)

    assert summary.exit_code == 0, summary.describe()
    pulled = {s.name: s.pulled for s in summary.sources}["chq"]
    assert pulled is not None and pulled.complete and pulled.written == 120
    assert pulled.received == pulled.written + pulled.duplicates + pulled.older + pulled.no_items
    expected = ids | orders_with_items(shop)
    assert set(emu.stats.received_ids) == expected and emu.stats.resent == set()
    by_source = {f.source for f in summary.files if f.state is FileState.DONE}
    assert by_source == {"local", "ftp", "sftp", "chq", f"ftpdrop/{FTP_USER}"}
    assert (home / ".half.csv.Zx8.upload").exists()  # never taken
    assert listing(home)["done"] == ["pushed.csv", "pushed.csv.report.json"]
    assert f"pulled {pulled.received} orders" in summary.describe()
    with Ledger(settings.state.ledger) as ledger:
        cursor = json.loads(ledger.get_cursor("chq") or "{}")
    assert cursor["passes"] == 1 and cursor["pass_started"] is None

    # the next pass takes only what changed since: one updated order, one new one
    shop.advance(60)
    updated = next(iter(sorted(orders_with_items(shop))))
    shop.update_order(int(updated), paid=-2)
    new = shop.add_order(items=2)
    summary = run_once(settings)
    assert summary.exit_code == 0, summary.describe()
    again = summary.sources[3].pulled
    assert again is not None and again.written == 2, again
    assert emu.stats.received_ids[updated] == 2  # the update, sent as an update
    assert emu.stats.received_ids[str(new["id"])] == 1


def test_a_refused_commerce_hq_key_stops_that_source_only(
    tmp_path: Path, emu: Emulator, shop: CommerceHQStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    ids, _ = write_export(local / "orders.csv", 2)
    bad = chq_source(shop)
    bad.api_password = SecretStr("not-the-Password-123")
    settings = make_settings(tmp_path, emu, bad, local_source(local, name="local"))
    summary = run_once(settings)
    assert summary.exit_code == 3
    errors = {s.name: s.error for s in summary.sources}
    assert errors["local"] is None and "refused" in (errors["chq"] or "").lower()
    assert set(emu.stats.received_ids) == ids
    assert "not-the-Password-123" not in caplog.text + summary.describe()


# --------------------------------------------------------------------------- events sink


def test_the_events_sink_in_a_pass_apart_from_the_bulk_api(
    tmp_path: Path, emu: Emulator, tracking: TrackingStandIn
) -> None:
    """Events owed to the tracking API are not skipped because the bulk API has the ids,
    and the bulk API is not sent again because events were owed; an over-size event is
    rejected by name and the others go on."""
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "orders.csv", 40)
    done = convert(drop / "orders.csv", tmp_path / "probe", kind="conversions", name="probe")
    sizes = {r.id: len(encode(r, TRACK_SITE).data) for r in read_records(done.ndjson, done.index)}
    biggest = max(sizes, key=sizes.__getitem__)
    limit = sizes[biggest] - 1
    assert sum(1 for s in sizes.values() if s > limit) == 1
    settings = make_settings(tmp_path, emu, local_source(drop, sinks=["api", "events"]))
    settings.events = events_settings(tracking, max_event_bytes=limit, max_attempts=2)
    tracking.storm(1000)  # the tracking API is down for the first pass

    first = run_once(settings)
    assert first.exit_code == 3, first.describe()
    assert set(emu.stats.received_ids) == ids  # the bulk API has everything
    assert listing(drop)["processing"] == ["orders.csv"]  # events still owed

    tracking.storm(0)
    second = run_once(settings)
    assert second.exit_code == 1, second.describe()  # one event rejected
    assert emu.stats.resent == set()  # the bulk API was not sent anything again
    stats = tracking.stats
    assert set(stats.transaction_ids) == ids - {biggest} and stats.resent == set()
    (f,) = second.files
    assert f.state is FileState.FAILED and "EVENT_TOO_LARGE" in (f.reason or "")
    report = read_report(drop / "failed" / "orders.csv.report.json")
    assert report["events"]["sent"] == len(ids) - 1 and report["events"]["rejected"] == 1
    assert report["conversions"]["shipped"] == len(ids)  # by the bulk API
    assert [e["code"] for e in report["errors"]] == ["EVENT_TOO_LARGE"]
    assert csv_ids(drop / "failed" / "orders.csv.rejects.csv") == {biggest}
    with Ledger(settings.state.ledger) as ledger:
        (entry,) = ledger.files()
        assert ledger.sent_event_ids(entry.id) == ids - {biggest}
        assert ledger.accepted_ids(entry.id) == ids


def test_kill_9_mid_events_send_resumes_with_nothing_lost(
    tmp_path: Path, emu: Emulator, tracking: TrackingStandIn
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "orders.csv", 300)
    per_request = 10
    settings = make_settings(tmp_path, emu, local_source(drop, sinks=["events"]))
    settings.events = events_settings(
        tracking, max_events_per_batch=per_request, requests_per_second=20
    )
    config = write_config(tmp_path / "csvbridge.yaml", settings)
    proc = cli("run", "--config", str(config))
    try:
        wait_until(lambda: tracking.stats.events >= 60, timeout=60, what="some events sent")
    finally:
        kill9(proc)
    before = tracking.stats
    assert 0 < before.events < len(ids)

    summary = run_once(load_settings(config))

    assert summary.exit_code == 0, summary.describe()
    stats = tracking.stats
    assert set(stats.transaction_ids) == ids  # nothing lost
    assert len(stats.resent) <= per_request  # at most the request in flight, again
    report = read_report(drop / "done" / "orders.csv.report.json")
    assert report["events"]["sent"] == len(ids)
    assert report["events"]["sent_by_earlier_attempts"] >= before.events - per_request
    assert emu.stats.received_ids == {}  # events only: the bulk API is not a sink here


def write_config(path: Path, settings: Settings) -> Path:
    data = settings.model_dump(mode="json", exclude_none=True)
    data["api"]["token"] = settings.api.token.get_secret_value()
    data["events"]["token"] = settings.events.token.get_secret_value()
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- FTP drop


def test_watch_hosts_the_ftp_drop_and_takes_an_upload_at_once(
    tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    export = tmp_path / "export.csv"
    ids, _ = write_export(export, 4)
    # polled once an hour: only the upload's completion can wake the loop in time
    source = ftp_drop_source(tmp_path / "ftp-drop", poll_interval_seconds=3600)
    settings = make_settings(tmp_path, emu, source)
    stop = threading.Event()
    done: list[int] = []
    thread = threading.Thread(
        target=lambda: done.append(watch(settings, stop=stop, install_signals=False)),
        daemon=True,
    )
    thread.start()
    try:
        record = wait_until(
            lambda: next(
                (r for r in caplog.records if r.getMessage().startswith("ftp drop listening")),
                None,
            ),
            what="the FTP drop to listen",
        )
        port = int(record.args[1])  # type: ignore[index]
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login(FTP_USER, FTP_PASSWORD)
        ftp.storbinary("STOR orders.csv", io.BytesIO(export.read_bytes()))
        ftp.quit()
        home = tmp_path / "ftp-drop" / FTP_USER
        wait_until(lambda: (home / "done" / "orders.csv").exists(), what="the upload processed")
    finally:
        stop.set()
        thread.join(30)
    assert done == [0]
    assert set(emu.stats.received_ids) == ids


# --------------------------------------------------------------------------- CLI


def test_the_demo_shows_all_three_and_finishes_ok(tmp_path: Path) -> None:
    proc = cli("demo", "--dir", str(tmp_path / "demo"))
    out, err = proc.communicate(timeout=120)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert text.rstrip().endswith("demo finished: OK")
    assert "commercehq: 40 shipped" in text and "tracking API got 40 events" in text
    assert "ftpdrop: 5 shipped" in text
    assert len(text.splitlines()) <= 12  # short
    assert b"FTP session" not in err  # no per-command server chatter


def test_hash_password_prints_a_hash_the_drop_accepts() -> None:
    from csvbridge.drops.ftpserver import check_password

    proc = cli("hash-password", stdin=subprocess.PIPE)
    out, err = proc.communicate(b"s3cret-Pw\ns3cret-Pw\n", timeout=60)
    assert proc.returncode == 0, err.decode()
    (line,) = out.decode().splitlines()
    assert check_password("s3cret-Pw", line) and "s3cret-Pw" not in out.decode()


def test_the_emulator_command_also_serves_both_stand_ins() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli("emulator", "--port", str(port), "--orders", "7")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().decode() for _ in range(2)]
        tracking_url = lines[0].split(" on ", 1)[1].split()[0]
        chq_url = lines[1].split(" on ", 1)[1].split()[0]
        assert "api_key: chq-key" in lines[1] and "api_password: chq-password" in lines[1]
        answer = requests.get(f"{chq_url}/orders", auth=("chq-key", "chq-password"), timeout=10)
        assert answer.status_code == 200 and answer.json()["_meta"]["totalCount"] == 7
        sent = requests.post(f"{tracking_url}/events?tc_s=1234&token=x", data=b"{}", timeout=10)
        assert sent.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_the_events_sink_is_configured_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "csvbridge.yaml"
    config.write_text("sinks: [api, events]\n", encoding="utf-8")
    env = {
        "CSVBRIDGE_EVENTS_URL": "http://127.0.0.1:9/",
        "CSVBRIDGE_EVENTS_SITE_ID": "77",
        "CSVBRIDGE_EVENTS_TOKEN": "  env-Source-Key-99\n",
    }
    settings = load_settings(config, env=env)
    assert settings.sinks == ["api", "events"]
    assert settings.events.base_url == "http://127.0.0.1:9" and settings.events.site_id == "77"
    assert settings.events.token.get_secret_value() == "env-Source-Key-99"  # stripped
    assert "env-Source-Key-99" not in repr(settings)
