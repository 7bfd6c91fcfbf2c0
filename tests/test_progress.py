"""Progress you can see, logs you can query, metrics of a cron pass.

Real processes (`csvbridge send/run` as cron or a person starts them), the real API
emulator, a real pseudo-terminal for the bars; the daemon's pickup latency measured on
a real folder.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csvbridge.config import LogSettings, MetricsSettings, RateLimits, Settings
from csvbridge.drops.daemon import watch
from csvbridge.observe import MASK, register_secret, setup_logging
from csvbridge.testing.emulator import Emulator
from tests.plugins.api import settings_for
from tests.test_runner import (
    ROOT,
    TOKEN,
    cli,
    listing,
    local_source,
    make_settings,
    wait_until,
    write_config,
    write_export,
)


def value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def test_send_off_a_terminal_logs_progress_even_while_every_request_fails(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    """The old progress line only moved on answers: 29 s of retries printed nothing."""
    emu = emulator(token=TOKEN, fail_rate=1.0)  # every request answered HTTP 500
    export = tmp_path / "orders.csv"
    write_export(export, 5)
    api = settings_for(emu, max_attempts=8, backoff_base_seconds=0.5, backoff_max_seconds=0.5)
    settings = Settings(api=api, logging=LogSettings(progress_seconds=0.25))
    config = write_config(tmp_path / "csvbridge.yaml", settings)
    proc = cli("send", str(export), "--config", str(config))
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    lines = [line for line in text.splitlines() if "csvbridge.progress" in line]
    assert len(lines) >= 2, text
    assert "shipped 0/5 objects" in lines[-1], lines
    assert "retries (last: HTTP 500)" in lines[-1], lines
    assert proc.returncode == 3  # nothing shipped: left for a retry
    assert TOKEN not in text


def test_send_on_a_terminal_draws_convert_and_ship_bars(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    emu = emulator(token=TOKEN, speed=1)  # 30 objects/s: 60 objects take ~2 s
    export = tmp_path / "orders.csv"
    write_export(export, 60)
    settings = Settings(api=settings_for(emu, max_objects_per_request=10))
    config = write_config(tmp_path / "csvbridge.yaml", settings)
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "160"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "csvbridge", "send", str(export), "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "convert orders.csv" in screen and "ship    orders.csv" in screen, screen
    assert "60/60 objects" in screen and "obj/s" in screen, screen
    assert "rows" in screen and "━" in screen  # a drawn bar
    assert "\x1b[" in screen  # drawn in place, with terminal control sequences
    assert TOKEN not in screen


def run_pass(tmp_path: Path, config: Path, level: str = "INFO") -> tuple[int, list[dict[str, Any]]]:
    proc = cli("run", "--config", str(config))
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert TOKEN not in text
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every JSON line parses
    return proc.returncode, records


def test_cron_pass_json_logs_have_fields_and_its_textfile_counts_api_traffic(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    # an emulator allowing 2 requests/s, a client pacing for 100: some answers are 429
    emu = emulator(
        token=TOKEN,
        speed=1,
        limits=RateLimits(requests_per_second=2, concurrent_connections=30, objects_per_second=500),
    )
    drop = tmp_path / "drop"
    drop.mkdir()
    ids, _ = write_export(drop / "orders.csv", 12)
    api = {
        "limits": RateLimits(requests_per_second=100, concurrent_connections=4, objects_per_second=500),
        "max_objects_per_request": 3,
        "max_attempts": 20,
    }
    settings = make_settings(tmp_path, emu, local_source(drop, stable_polls=0), **api)
    textfile = tmp_path / "textfile" / "csvbridge.prom"
    textfile.parent.mkdir()
    settings.metrics = MetricsSettings(textfile=textfile)
    settings.logging = LogSettings(format="json", level="DEBUG")
    code, records = run_pass(tmp_path, write_config(tmp_path / "csvbridge.yaml", settings))
    assert code == 0, records[-5:]
    assert "orders.csv" in listing(drop)["done"]

    # the file's line: source, file, status and counts are fields, not only text
    filed = [r for r in records if r.get("file") == "orders.csv" and r.get("status") == "done"]
    assert filed, records
    assert filed[0]["source"] == "shop" and filed[0]["shipped"] == 12
    assert filed[0]["rejected"] == 0 and filed[0]["rows"] > 12
    batches = [r for r in records if "batch" in r and r.get("status") == 202]
    assert {r["batch"] for r in batches} == {1, 2, 3, 4}
    assert sum(r["accepted"] for r in batches) == 12
    assert any(r.get("status") == 429 and "batch" in r for r in records)  # a retry's line

    # the textfile, as node_exporter reads it
    text = textfile.read_text()
    assert value(text, "csvbridge_files_processed_total", source="shop", status="done") == 1
    shipped = {"source": "shop", "kind": "conversions", "outcome": "shipped"}
    assert value(text, "csvbridge_objects_total", **shipped) == 12
    where = {"endpoint": "conversions/bulk"}
    assert value(text, "csvbridge_api_requests_total", code="202", **where) == 4
    limited = value(text, "csvbridge_api_rate_limited_total", **where)
    assert limited and limited >= 1
    assert value(text, "csvbridge_api_requests_total", code="429", **where) == limited
    assert value(text, "csvbridge_api_retries_total", **where) == limited
    assert value(text, "csvbridge_api_request_duration_seconds_count", **where) == 4 + limited
    assert (value(text, "csvbridge_last_pass_timestamp_seconds") or 0) > time.time() - 120
    assert (value(text, "csvbridge_last_success_timestamp_seconds", source="shop") or 0) > 0
    assert not any(f.name.startswith("process_") for f in text_string_to_metric_families(text))


def test_json_fields_are_top_level_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "field-secret-0xC0FFEE"
    register_secret(secret)
    setup_logging("json", "INFO")
    try:
        logging.getLogger("csvbridge.test").info(
            "file %s done",
            "a.csv",
            extra={
                "source": "shop",
                "file": "a.csv",
                "status": "done",
                "shipped": 3,
                "detail": f"Bearer {secret}",
                "nested": {"k": [secret]},
                "level": "clash",
            },
        )
    finally:
        setup_logging("text", "INFO")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "file a.csv done" and record["field_level"] == "clash"
    assert (record["source"], record["file"], record["status"], record["shipped"]) == (
        "shop",
        "a.csv",
        "done",
        3,
    )
    assert secret not in line
    assert record["detail"] == f"Bearer {MASK}" and record["nested"] == {"k": [MASK]}


def test_daemon_takes_a_dropped_file_within_min_age_plus_about_a_second(
    tmp_path: Path, emulator: Callable[..., Emulator], caplog: pytest.LogCaptureFixture
) -> None:
    """It used to wait for the next poll (30 s by default) after the first look."""
    caplog.set_level("INFO")
    emu = emulator(token=TOKEN)
    drop = tmp_path / "drop"
    drop.mkdir()
    min_age = 2.0
    source = local_source(drop, min_age_seconds=min_age, stable_polls=1, poll_interval_seconds=60)
    settings = make_settings(tmp_path, emu, source)
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(settings,), kwargs={"stop": stop, "install_signals": False})
    thread.start()
    try:
        wait_until(lambda: (drop / "processing").is_dir(), what="the first pass")
        write_export(drop / "late.csv", 3)
        written = (drop / "late.csv").stat().st_mtime
        wait_until(lambda: not (drop / "late.csv").exists(), timeout=30, what="the claim")
        taken = time.time()
        wait_until(lambda: "late.csv" in listing(drop)["done"], what="late.csv done")
    finally:
        stop.set()
        thread.join(timeout=10)
    delay = taken - written
    print(f"picked up {delay:.2f} s after it was written (min_age_seconds={min_age})")
    assert min_age <= delay <= min_age + 1.3, delay
