"""``csvbridge status`` and ledger retention, on both backends (real SQLite, real PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from csvbridge.config import Settings, SourceSettings, StateSettings
from csvbridge.drops.ledger import LedgerStore, open_ledger
from csvbridge.drops.lock import Owner, me
from csvbridge.drops.replicas import Replica
from csvbridge.report import FileState
from csvbridge.status import ledger_status

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    if request.param == "sqlite":
        yield str(tmp_path / "state" / "ledger.sqlite"), None
    else:
        yield request.getfixturevalue("pg_url"), request.getfixturevalue("pg_server").password


def settings_for(tmp_path: Path, ledger: str) -> Settings:
    return Settings(
        sources=[
            SourceSettings(name="shop", url=(tmp_path / "drop").as_uri()),
            SourceSettings(name="quiet", url=(tmp_path / "quiet").as_uri()),
        ],
        state=StateSettings(ledger=ledger),
    )


def populate(ledger: LedgerStore) -> Owner:
    done = ledger.begin("shop", "monday.csv", 1000, 0, "01" * 32)
    ledger.record_batch(done.id, 0, [f"m{i}" for i in range(100)], [])
    ledger.finish(done.id, FileState.DONE, rows=100, shipped=100)
    busy = ledger.begin("shop", "tuesday.csv", 2000, 0, "02" * 32)  # ~200 conversions
    ledger.record_batch(busy.id, 0, [f"t{i}" for i in range(50)], [])
    time.sleep(0.05)
    ledger.record_batch(busy.id, 1, [f"t{i}" for i in range(50, 100)], ["t100"])
    elsewhere = Owner("replica-b.example", "boot", 4242, "7")
    ledger.register_replica(elsewhere, 60)
    ledger.claim("shop", "processing/tuesday.csv", elsewhere)
    ledger.acquire_lease("token:0123456789abcdef", elsewhere, 60)
    ledger.note_error("shop", "cannot list the drop: Connection refused")
    return elsewhere


def test_status_shows_files_progress_errors_replicas_and_leases(
    tmp_path: Path, target: tuple[str, str | None]
) -> None:
    url, password = target
    with open_ledger(url, password=password) as ledger:  # type: ignore[attr-defined]
        elsewhere = populate(ledger)
        status = ledger_status(settings_for(tmp_path, url), ledger)
    assert [(s.source, s.files) for s in status.sources] == [
        ("shop", {"processing": 1, "done": 1, "failed": 0}),
        ("quiet", {"processing": 0, "done": 0, "failed": 0}),  # configured, nothing yet
    ]
    (f,) = status.in_progress
    assert (f.name, f.shipped, f.rejected, f.owner) == ("tuesday.csv", 100, 1, elsewhere.token)
    assert f.estimated_total == 200 and f.remaining == 99  # 0.1 conversion per byte
    assert f.rate_per_second is not None and f.rate_per_second > 0
    assert f.eta_seconds == pytest.approx(99 / f.rate_per_second)
    assert [e.message for e in status.errors] == ["cannot list the drop: Connection refused"]
    assert [(r.host, r.pid, r.alive) for r in status.replicas] == [
        ("replica-b.example", 4242, True)
    ]
    assert [(lease.name, lease.owner) for lease in status.leases] == [
        ("token:0123456789abcdef", elsewhere.token)
    ]
    text = status.describe()
    for part in (
        "shop: 1 processing, 1 done, 0 failed",
        "shop/tuesday.csv",
        "100 shipped, ~99 remaining",
        "held by pid 4242 on replica-b.example",
        "Connection refused",
        "replicas (1 alive)",
        "token:0123456789abcdef: held by pid 4242",
    ):
        assert part in text, text
    assert json.loads(json.dumps(status.as_dict()))["in_progress"][0]["remaining"] == 99


def test_status_command_prints_json_and_never_the_password(
    tmp_path: Path, target: tuple[str, str | None]
) -> None:
    url, password = target
    with open_ledger(url, password=password) as ledger:  # type: ignore[attr-defined]
        populate(ledger)
    config = tmp_path / "csvbridge.yaml"
    data = settings_for(tmp_path, url).model_dump(mode="json", exclude_none=True)
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if password:
        env["CSVBRIDGE_LEDGER_PASSWORD"] = password
    out = subprocess.run(
        [sys.executable, "-m", "csvbridge", "status", "--config", str(config), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["sources"][0] == {
        "source": "shop",
        "files": {"processing": 1, "done": 1, "failed": 0},
    }
    assert doc["in_progress"][0]["name"] == "tuesday.csv"
    assert doc["replicas"][0]["host"] == "replica-b.example"
    text = subprocess.run(
        [sys.executable, "-m", "csvbridge", "status", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0 and "in progress (1):" in text.stdout
    if password:
        assert password not in out.stdout + out.stderr + text.stdout + text.stderr
        assert doc["ledger"].startswith("postgresql://csvbridge@127.0.0.1:")


def test_a_wrong_database_password_is_an_error_without_the_password(
    tmp_path: Path, pg_url: str
) -> None:
    config = tmp_path / "csvbridge.yaml"
    data = settings_for(tmp_path, pg_url).model_dump(mode="json", exclude_none=True)
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    wrong = "Wr0ng-ledger-passw0rd-xyz"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CSVBRIDGE_LEDGER_PASSWORD": wrong}
    env.pop("PGPASSWORD", None)
    out = subprocess.run(
        [sys.executable, "-m", "csvbridge", "status", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3, out.stderr  # transient: the environment, not a file
    assert "cannot connect to the ledger database" in out.stderr
    assert wrong not in out.stdout + out.stderr


def test_retention_prunes_ids_of_files_done_long_enough_ago(
    tmp_path: Path, target: tuple[str, str | None]
) -> None:
    url, password = target
    with open_ledger(url, password=password) as ledger:  # type: ignore[attr-defined]
        old = ledger.begin("shop", "old.csv", 10, 0, "0a" * 32)
        ledger.record_batch(old.id, 0, ["A", "B"], [])
        ledger.finish(old.id, FileState.DONE, rows=2, shipped=2)
        busy = ledger.begin("shop", "busy.csv", 10, 0, "0b" * 32)
        ledger.record_batch(busy.id, 0, ["C"], [])
        time.sleep(0.2)
        state = StateSettings(ledger=url, retention_days=0.1 / 86400)  # 0.1 s
        replica = Replica(ledger, state, owner=me()).start()  # prunes when it starts
        replica.close()
        assert ledger.accepted_ids(old.id) == set()
        assert ledger.accepted_ids(busy.id) == {"C"}  # unfinished: kept for its resume
        assert ledger.get(old.id).status is FileState.DONE
        kept = StateSettings(ledger=url, retention_days=30)
        done = ledger.begin("shop", "new.csv", 10, 0, "0c" * 32)
        ledger.record_batch(done.id, 0, ["D"], [])
        ledger.finish(done.id, FileState.DONE)
        Replica(ledger, kept, owner=me()).start().close()
        assert ledger.accepted_ids(done.id) == {"D"}  # not old enough
