"""`csvbridge send` as a person runs it: SIGTERM and Ctrl-C mid-shipment, standard input,
products from conversions, the dry-run plan naming its endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from csvbridge.testing.emulator import Emulator
from csvbridge.testing.samples import generate
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "csvbridge" / "data" / "demo" / "orders-2026-11-21.csv"


def config_for(tmp_path: Path, emu: Emulator) -> Path:
    cfg = tmp_path / "csvbridge.yaml"
    cfg.write_text(
        f"api:\n  base_url: {emu.url}\n  site_id: '{emu.site_id}'\n  token: {emu.token}\n"
        f"  limits: {{requests_per_second: 30, concurrent_connections: 30, "
        f"objects_per_second: {30 * emu.speed}}}\n",
        encoding="utf-8",
    )
    return cfg


def send(*args: str, tmp: Path, **popen: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "csvbridge", "send", *args], env=env, **popen)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_shipment_writes_the_report_and_cleans_up(
    tmp_path: Path, emulator: Any, sig: signal.Signals
) -> None:
    emu = emulator(speed=1)  # 30 objects/s: 400 conversions take ~13 s
    src = tmp_path / "orders.csv"
    generate(src, 1600)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    report = tmp_path / "report.json"
    proc = send(
        str(src), "--config", str(config_for(tmp_path, emu)), "--report", str(report),
        "--workers", "1", tmp=scratch,
    )  # fmt: skip
    wait_until(lambda: emu.stats.accepted.get("conversions", 0) >= 60, 60, "shipping started")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    body = json.loads(report.read_bytes())
    shipped, not_shipped = body["conversions"]["shipped"], body["conversions"]["not_shipped"]
    assert shipped == sum(emu.stats.accepted.values())  # what the API took, no more
    assert shipped + not_shipped == body["conversions"]["valid"] and not_shipped > 0
    assert list(scratch.iterdir()) == []  # the temporary work folder is gone
    assert b"stopping after the batches in flight" in err


def test_standard_input_and_a_dry_run_naming_the_products_endpoint(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    cfg = config_for(tmp_path, emu)
    proc = send(
        "-", "--config", str(cfg), "--products-from-conversions", "--dry-run",
        tmp=tmp_path, stdin=DEMO.open("rb"),
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert f"/v2/{emu.site_id}/products/bulk" in err.decode(), err.decode()
    assert emu.stats.requests == 0  # a dry run sends nothing


def test_products_from_conversions_go_to_the_products_endpoint(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    proc = send(
        str(DEMO), "--config", str(config_for(tmp_path, emu)), "--products-from-conversions",
        tmp=tmp_path,
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1), err.decode()
    assert emu.stats.accepted.get("products", 0) > 0
    assert not emu.stats.accepted.get("conversions")
