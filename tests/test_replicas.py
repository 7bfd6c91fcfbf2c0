"""Several `csvbridge watch` replicas sharing drops and a real PostgreSQL ledger.

Each replica is a real subprocess with its own work folder and lock file, as on its own
machine.  Where the system allows it (root and ``unshare``), each also gets its own host
name (a UTS namespace): the replicas then cannot see each other's processes, and a
killed replica is known to be gone only because its heartbeat lease expired, exactly as
with a machine that disappeared.  The API is the emulator; every id it received is
counted, so a file processed twice, or a batch sent twice, shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from csvbridge.config import Settings, StateSettings
from csvbridge.drops.ledger import LedgerStore, open_ledger
from csvbridge.report import FileState
from csvbridge.testing.emulator import Emulator
from tests.helpers import kill9, wait_until
from tests.plugins.api import settings_for
from tests.plugins.postgres import PgServer
from tests.test_runner import (
    ROOT,
    TOKEN,
    assert_received_exactly,
    listing,
    local_source,
    write_export,
)

LEASE_SECONDS = 2.0


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True)
    return probe.returncode == 0


UNSHARE = _can_unshare()


class Replicas:
    """Starts `csvbridge watch` replicas on one config and ledger; stops them at the end."""

    def __init__(self, tmp_path: Path, settings: Settings, server: PgServer) -> None:
        self.tmp_path, self.settings, self.server = tmp_path, settings, server
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        state = StateSettings(
            ledger=self.settings.state.ledger,
            work_dir=self.tmp_path / name / "work",
            lock_file=self.tmp_path / name / "csvbridge.lock",
            lease_seconds=LEASE_SECONDS,
        )
        settings = self.settings.model_copy(update={"state": state})
        data = settings.model_dump(mode="json", exclude_none=True)
        data["api"]["token"] = TOKEN
        config = self.tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "CSVBRIDGE_LEDGER_PASSWORD": self.server.password,
        }
        command = [sys.executable, "-m", "csvbridge", "watch", "--config", str(config)]
        if UNSHARE:  # its own host name, as on its own machine
            command = [
                "unshare",
                "--uts",
                "sh",
                "-c",
                f'hostname {name} && exec "$0" "$@"',
                *command,
            ]
        log = open(self.tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (closed by the child)
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, pg_server: PgServer) -> Iterator[Callable[..., Replicas]]:
    made: list[Replicas] = []

    def make(settings: Settings) -> Replicas:
        r = Replicas(tmp_path, settings, pg_server)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop_all()
        for name in r.procs:
            print(f"--- {name} log ---\n{r.log(name)[-4000:]}")


@pytest.fixture
def ledger(pg_url: str, pg_server: PgServer) -> Iterator[LedgerStore]:
    store = open_ledger(pg_url, password=pg_server.password)
    yield store
    store.close()


def pg_settings(
    tmp_path: Path, emu: Emulator, pg_url: str, drops: list[Path], **api: Any
) -> Settings:
    sources = [local_source(drop, name=drop.name, poll_interval_seconds=0.3) for drop in drops]
    return Settings(
        api=settings_for(emu, **api),
        sources=sources,
        state=StateSettings(ledger=pg_url),
    )


def done_files(drops: list[Path]) -> int:
    return sum(1 for d in drops for n in listing(d)["done"] if not n.endswith(".report.json"))


def test_two_replicas_share_two_drops_each_file_once_within_one_token_budget(
    tmp_path: Path,
    emulator: Callable[..., Emulator],
    pg_url: str,
    replicas: Callable[..., Replicas],
    ledger: LedgerStore,
) -> None:
    """Both replicas start at once on two drops of files: every file is processed by
    one replica, once; every id reaches the API once; and the two replicas together stay
    within the one token's limits (the emulator answers no 429: each replica alone
    paces at the full limit, so two shipping at once would be refused)."""
    emu = emulator(token=TOKEN, speed=3)  # 90 objects/s
    drops = [tmp_path / "shop-a", tmp_path / "shop-b"]
    ids: set[str] = set()
    for k, drop in enumerate(drops):
        drop.mkdir()
        for n in range(4):
            got, _ = write_export(drop / f"orders-{n}.csv", 40, first=(k * 10 + n) * 1000)
            ids |= got
    # one object per request: each replica alone paces at the request limit
    settings = pg_settings(tmp_path, emu, pg_url, drops, max_objects_per_request=1)
    r = replicas(settings)
    r.start("replica-a")
    r.start("replica-b")
    wait_until(lambda: done_files(drops) == 8, timeout=120, what="all 8 files done")
    r.stop_all()

    assert_received_exactly(emu, ids)  # nothing lost, nothing processed or sent twice
    assert emu.stats.status_counts[429] == 0, emu.stats.status_counts
    entries = ledger.files(limit=100)
    assert len(entries) == 8
    assert all(e.status is FileState.DONE and e.attempts == 1 for e in entries)
    for drop in drops:
        assert listing(drop)["processing"] == [] and listing(drop)["failed"] == []
    assert ledger.claims() == [] and ledger.leases() == []  # clean stops gave them back


def test_kill_9_of_a_replica_mid_file_the_other_finishes_it(
    tmp_path: Path,
    emulator: Callable[..., Emulator],
    pg_url: str,
    replicas: Callable[..., Replicas],
    ledger: LedgerStore,
) -> None:
    """Replica A dies (kill -9) in the middle of a file; replica B, running all along,
    waits while A's claim and token lease are alive, then resumes the file from the
    ledger's per-batch progress once they expired: nothing lost, and only what A had in
    flight is sent again."""
    emu = emulator(token=TOKEN, speed=3)
    drop = tmp_path / "shop"
    drop.mkdir()
    ids, _ = write_export(drop / "big.csv", 400)
    settings = pg_settings(
        tmp_path, emu, pg_url, [drop], max_objects_per_request=20, max_attempts=100
    )
    r = replicas(settings)
    a = r.start("replica-a")

    def accepted() -> int:
        entries = ledger.files()
        return len(ledger.accepted_ids(entries[0].id)) if entries else 0

    wait_until(lambda: accepted() >= 60, timeout=60, what="replica A shipping")
    b = r.start("replica-b")
    wait_until(lambda: len(ledger.replicas()) == 2, timeout=60, what="replica B registered")
    kill9(a)
    recorded = ledger.accepted_ids(ledger.files()[0].id)
    assert 0 < len(recorded) < len(ids)
    assert listing(drop)["processing"] == ["big.csv"]

    wait_until(lambda: "big.csv" in listing(drop)["done"], timeout=120, what="B finishing it")
    assert b.poll() is None  # B is still running
    (entry,) = ledger.files()
    assert entry.status is FileState.DONE and entry.attempts == 2
    assert set(emu.stats.received_ids) == ids  # zero lost
    resent = emu.stats.resent
    assert not resent & recorded  # what the ledger knew was never sent again
    window = settings.api.max_in_flight * settings.api.max_objects_per_request
    assert len(resent) <= window, f"{len(resent)} re-sent, window {window}"
