"""The ledger, stage naming and pass lock, including real ``kill -9`` of writer processes."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from csvbridge.drops.ledger import (
    AlreadyProcessed,
    Ledger,
    make_fingerprint,
    sha256_file,
)
from csvbridge.drops.ledger_rows import SCHEMA_VERSION
from csvbridge.drops.lock import PassLock
from csvbridge.drops.stages import Stages, rejects_name, report_name
from csvbridge.errors import LockedError, TerminalError
from tests.helpers import kill9, wait_until

ROOT = Path(__file__).resolve().parents[1]
SHA = "c" * 64


def run_child(code: str, *args: str, stdout: object = subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=stdout, stderr=subprocess.PIPE, env=env
    )


# -- hashing and fingerprint -------------------------------------------------------


def test_sha256_file_matches_hashlib_on_multi_block_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    p = tmp_path / "big.csv"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_fingerprint_recognises_same_content_under_another_name(tmp_path: Path) -> None:
    a = tmp_path / "orders.csv"
    b = tmp_path / "orders (copy).csv"
    c = tmp_path / "other.csv"
    a.write_bytes(b"id;amount\n1;10\n")
    b.write_bytes(a.read_bytes())
    c.write_bytes(b"id;amount\n2;20\n")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        entry = ledger.begin("drop", a.name, a.stat().st_size, a.stat().st_mtime, sha256_file(a))
        ledger.finish(entry.id, "done", rows=1, shipped=1)

        fp_b = make_fingerprint(sha256_file(b), b.stat().st_size)
        found = ledger.lookup(fp_b)
        assert found is not None and found.id == entry.id and found.status == "done"
        with pytest.raises(AlreadyProcessed) as exc:
            ledger.begin("other-drop", b.name, b.stat().st_size, 0.0, sha256_file(b))
        assert exc.value.entry.id == entry.id

        assert ledger.lookup(make_fingerprint(sha256_file(c), c.stat().st_size)) is None


def test_fingerprint_includes_size() -> None:
    assert make_fingerprint(SHA, 10) != make_fingerprint(SHA, 11)
    assert make_fingerprint(SHA.upper(), 10) == make_fingerprint(SHA, 10)


# -- schema ------------------------------------------------------------------------


def test_schema_created_in_wal_mode_and_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "ledger.sqlite"
    with Ledger(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
    with Ledger(path) as ledger:  # reopening does not migrate again
        assert ledger.schema_version == SCHEMA_VERSION
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "files", "batches", "conversions", "claims"} <= tables
    assert {"events", "cursors"} <= tables  # migration 3
    assert {"replicas", "leases", "source_errors"} <= tables  # migration 4
    con.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_version VALUES (99, 0)")
    con.commit()
    con.close()
    with pytest.raises(TerminalError, match="newer"):
        Ledger(path)


def test_not_a_database_is_a_terminal_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TerminalError):
        Ledger(path)


# -- files -------------------------------------------------------------------------


def test_begin_resumes_same_entry_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        first = ledger.begin("drop", "orders.csv", 100, 1.5, SHA)
        assert first.status == "processing" and first.attempts == 1
        assert first.fingerprint == make_fingerprint(SHA, 100)
        ledger.record_batch(first.id, 0, ["a", "b"], ["x"])
    # the process "crashed": a new one opens the ledger and begins the same content
    with Ledger(path) as ledger:
        again = ledger.begin("drop", "orders.csv", 100, 1.5, SHA)
        assert again.id == first.id
        assert again.attempts == 2
        assert again.status == "processing"
        assert ledger.accepted_ids(again.id) == {"a", "b"}
        assert ledger.rejected_ids(again.id) == {"x"}
        ledger.record_batch(again.id, 0, ["c"], [])
        assert [(b.attempt, b.batch_no) for b in ledger.batches(again.id)] == [(1, 0), (2, 0)]
        assert ledger.accepted_ids(again.id) == {"a", "b", "c"}


def test_failed_file_retried_keeps_progress(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        e = ledger.begin("drop", "orders.csv", 100, 1.0, SHA)
        ledger.record_batch(e.id, 0, ["a"], [])
        failed = ledger.finish(e.id, "failed", rows=2, shipped=1, not_shipped=1, report_path="r")
        assert failed.status == "failed" and failed.finished_at is not None
        retry = ledger.begin("drop", "orders-fixed-name.csv", 100, 2.0, SHA)
        assert retry.id == e.id and retry.attempts == 2 and retry.status == "processing"
        assert retry.name == "orders-fixed-name.csv"
        assert retry.finished_at is None and retry.rows is None and retry.report_path is None
        assert ledger.accepted_ids(e.id) == {"a"}


def test_finish_records_counts_and_validates(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        e = ledger.begin("drop", "orders.csv", 100, 1.0, SHA)
        with pytest.raises(ValueError):
            ledger.finish(e.id, "processing")  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            ledger.finish(12345, "done")
        done = ledger.finish(
            e.id,
            "done",
            rows=10,
            shipped=7,
            rejected=2,
            not_shipped=1,
            report_path=tmp_path / "r.json",
        )
        assert (done.rows, done.shipped, done.rejected, done.not_shipped) == (10, 7, 2, 1)
        assert done.report_path == str(tmp_path / "r.json")
        assert done.finished_at is not None and done.finished_at >= done.started_at
        with pytest.raises(ValueError, match="not processing"):
            ledger.finish(e.id, "failed")
        assert ledger.get(e.id) == done


def test_record_batch_accepted_is_never_downgraded(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        e = ledger.begin("drop", "orders.csv", 100, 1.0, SHA)
        ledger.record_batch(e.id, 0, ["1", "2", "2"], ["3", "4"])
        ledger.record_batch(e.id, 1, ["3"], ["1"])  # 3 accepted on retry; 1 "duplicate"
        assert ledger.accepted_ids(e.id) == {"1", "2", "3"}
        assert ledger.rejected_ids(e.id) == {"4"}
        with pytest.raises(KeyError):
            ledger.record_batch(999, 0, ["z"], [])
        assert ledger.accepted_ids(999) == set()


def test_files_newest_first_and_stats(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ids = []
        for i in range(5):
            e = ledger.begin("drop", f"f{i}.csv", 10 + i, 0.0, f"{i:064x}")
            ids.append(e.id)
        ledger.finish(ids[0], "done", rows=3, shipped=3)
        ledger.finish(ids[1], "failed", rows=2, rejected=2)
        ledger.finish(ids[2], "done", rows=4, shipped=3, not_shipped=1)
        ledger.begin("drop", "f3.csv", 13, 0.0, f"{3:064x}")  # resumed
        ledger.record_batch(ids[4], 0, ["a"], [])

        assert [f.id for f in ledger.files()] == [ids[3], ids[4], ids[2], ids[1], ids[0]]
        assert [f.id for f in ledger.files(status="done")] == [ids[2], ids[0]]
        assert len(ledger.files(limit=2)) == 2
        with pytest.raises(ValueError):
            ledger.files(status="bogus")  # type: ignore[arg-type]

        s = ledger.stats()
        assert s["files"] == {"processing": 2, "done": 2, "failed": 1}
        assert s["files_total"] == 5 and s["files_resumed"] == 1
        assert (s["rows"], s["shipped"], s["rejected"], s["not_shipped"]) == (9, 6, 2, 1)
        assert s["batches_recorded"] == 1 and s["schema_version"] == SCHEMA_VERSION
        assert s["last_done_at"] == ledger.get(ids[2]).finished_at


# -- crash safety with real processes ----------------------------------------------

WRITER = r"""
import sys
from csvbridge.drops.ledger import Ledger
ledger = Ledger(sys.argv[1])
entry = ledger.begin("drop", "orders.csv", 123, 0.0, "c" * 64)
n = 0
while True:
    ledger.record_batch(
        entry.id, n, [f"a{n}-{k}" for k in range(300)], [f"r{n}-{k}" for k in range(30)]
    )
    print("committed", n, flush=True)
    n += 1
"""


def test_kill9_while_writing_batches_loses_no_committed_batch(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    out = tmp_path / "child.out"
    fp = make_fingerprint("c" * 64, 123)
    with out.open("w") as stdout:
        proc = run_child(WRITER, str(db), stdout=stdout)
    try:
        wait_until(db.exists, what="ledger file")
        with Ledger(db) as watcher:  # a second process reading while the child writes
            entry = wait_until(lambda: watcher.lookup(fp), what="file entry")
            wait_until(lambda: len(watcher.batches(entry.id)) >= 30, what="30 batches")
        kill9(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # whole "committed N" lines only: the kill may cut the last one short
    lines = out.read_text().splitlines()
    printed = [int(m[1]) for m in map(re.compile(r"committed (\d+)$").match, lines) if m]
    assert len(printed) >= 29  # the child may die between commit and print

    with Ledger(db) as ledger:
        assert ledger._read("PRAGMA integrity_check")[0][0] == "ok"
        entry = ledger.lookup(fp)
        assert entry is not None and entry.status == "processing"
        batch_nos = [b.batch_no for b in ledger.batches(entry.id)]
        # every printed batch is there; at most one more (committed, not yet printed)
        assert batch_nos == list(range(len(batch_nos)))
        assert set(printed) <= set(batch_nos)
        assert len(batch_nos) - len(printed) in (0, 1)
        # no partial batch: the ids are exactly those of the recorded batches
        expected_acc = {f"a{n}-{k}" for n in batch_nos for k in range(300)}
        expected_rej = {f"r{n}-{k}" for n in batch_nos for k in range(30)}
        assert ledger.accepted_ids(entry.id) == expected_acc
        assert ledger.rejected_ids(entry.id) == expected_rej
        assert all(b.accepted == 300 and b.rejected == 30 for b in ledger.batches(entry.id))

        resumed = ledger.begin("drop", "orders.csv", 123, 0.0, "c" * 64)
        assert resumed.id == entry.id and resumed.attempts == 2


DIES_INSIDE_TRANSACTION = r"""
import os, signal, sys
from csvbridge.drops.ledger import Ledger
ledger = Ledger(sys.argv[1])
entry = ledger.begin("drop", "orders.csv", 123, 0.0, "c" * 64)
ledger.record_batch(entry.id, 0, ["a0", "a1"], ["r0"])
print("committed 0", flush=True)

def bomb(sql):
    # fires after the batch's ids were inserted, before the transaction commits
    if sql.startswith("INSERT INTO batches"):
        os.kill(os.getpid(), signal.SIGKILL)

ledger._conn.set_trace_callback(bomb)
ledger.record_batch(entry.id, 1, [f"b{k}" for k in range(5000)], ["r1"])
print("committed 1", flush=True)
"""


def test_kill9_inside_record_batch_leaves_no_partial_batch(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    proc = run_child(DIES_INSIDE_TRANSACTION, str(db))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    assert stdout.decode().splitlines() == ["committed 0"]

    with Ledger(db) as ledger:  # the dead writer's lock and WAL frames are recovered
        entry = ledger.lookup(make_fingerprint("c" * 64, 123))
        assert entry is not None
        assert [b.batch_no for b in ledger.batches(entry.id)] == [0]
        assert ledger.accepted_ids(entry.id) == {"a0", "a1"}
        assert ledger.rejected_ids(entry.id) == {"r0"}
        resumed = ledger.begin("drop", "orders.csv", 123, 0.0, "c" * 64)
        ledger.record_batch(resumed.id, 1, ["b0"], [])
        assert ledger.accepted_ids(entry.id) == {"a0", "a1", "b0"}


PARALLEL_WRITER = r"""
import sys
from csvbridge.drops.ledger import Ledger
with Ledger(sys.argv[1]) as ledger:
    me = int(sys.argv[2])
    entry = ledger.begin(f"src{me}", "orders.csv", 10, 0.0, f"{me:064x}")
    for n in range(40):
        ledger.record_batch(entry.id, n, [f"{me}-{n}-{k}" for k in range(20)], [])
    ledger.finish(entry.id, "done", rows=800, shipped=800)
"""


def test_several_processes_write_the_same_ledger(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    procs = [run_child(PARALLEL_WRITER, str(db), str(i)) for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with Ledger(db) as ledger:
        assert ledger.stats()["files"]["done"] == 4
        for i in range(4):
            e = ledger.lookup(make_fingerprint(f"{i:064x}", 10))
            assert e is not None and len(ledger.accepted_ids(e.id)) == 800


# -- stages ------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 7, 45, 12, tzinfo=UTC)


def test_stage_path_free_name_is_kept() -> None:
    assert Stages().stage_path("done", "orders.csv", set(), NOW) == "done/orders.csv"
    assert Stages().stage_path("processing", "orders.csv", {"other.csv"}) == (
        "processing/orders.csv"
    )


def test_stage_path_never_overwrites() -> None:
    st = Stages()
    assert st.stage_path("done", "orders.csv", {"orders.csv"}, NOW) == (
        "done/orders.20261122T074512Z.csv"
    )
    taken = {"orders.csv", "orders.20261122T074512Z.csv", "orders.20261122T074512Z-1.csv"}
    assert st.stage_path("done", "orders.csv", taken, NOW) == "done/orders.20261122T074512Z-2.csv"
    # existing given as relative paths of the drop works too; other folders do not count
    assert st.stage_path("failed", "orders.csv", {"failed/orders.csv"}, NOW) == (
        "failed/orders.20261122T074512Z.csv"
    )
    assert st.stage_path("failed", "orders.csv", {"done/orders.csv"}, NOW) == "failed/orders.csv"


def test_stage_path_keeps_compound_extension_and_uses_utc() -> None:
    paris = NOW.astimezone(datetime.now().astimezone().tzinfo)
    got = Stages().stage_path("done", "orders.csv.gz", {"orders.csv.gz"}, paris)
    assert got == "done/orders.20261122T074512Z.csv.gz"
    assert Stages().stage_path("done", "README", {"README"}, NOW) == "done/README.20261122T074512Z"
    assert Stages().stage_path("done", "a.b.csv", {"a.b.csv"}, NOW) == (
        "done/a.b.20261122T074512Z.csv"
    )


def test_stage_paths_keep_file_report_and_rejects_together() -> None:
    st = Stages("incoming")
    # the file itself is free but a report with its name already exists
    got = st.stage_paths("done", "orders.csv", {"incoming/done/orders.csv.report.json"}, NOW)
    assert got == (
        "incoming/done/orders.20261122T074512Z.csv",
        "incoming/done/orders.20261122T074512Z.csv.report.json",
        "incoming/done/orders.20261122T074512Z.csv.rejects.csv",
    )
    assert st.stage_paths("done", "x.csv", set(), NOW) == (
        "incoming/done/x.csv",
        "incoming/done/x.csv.report.json",
        "incoming/done/x.csv.rejects.csv",
    )


def test_stage_names_and_validation() -> None:
    assert report_name("orders.csv") == "orders.csv.report.json"
    assert rejects_name("orders.csv") == "orders.csv.rejects.csv"
    st = Stages("/drop/")
    assert st.folders == ["drop/processing", "drop/done", "drop/failed"]
    assert st.is_staged("drop/done/orders.csv") and not st.is_staged("drop/orders.csv")
    assert Stages().folders == ["processing", "done", "failed"]
    with pytest.raises(ValueError):
        st.stage_path("archive", "orders.csv", set())
    for bad in ("", "..", "sub/orders.csv"):
        with pytest.raises(ValueError):
            st.stage_path("done", bad, set())


# -- pass lock ---------------------------------------------------------------------

TRY_LOCK = r"""
import sys
from csvbridge.errors import LockedError
from csvbridge.drops.lock import PassLock
try:
    PassLock(sys.argv[1]).acquire()
except LockedError as exc:
    print(exc.context.get("pid"))
    print(exc)
    sys.exit(3)
print("acquired")
"""

HOLD_LOCK = r"""
import sys, time
from csvbridge.drops.lock import PassLock
lock = PassLock(sys.argv[1]).acquire()
while True:
    time.sleep(60)
"""


def test_second_pass_lock_in_another_process_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sub" / "csvbridge.lock"
    with PassLock(path) as lock:
        assert lock.held
        assert f"pid={os.getpid()}" in path.read_text()
        proc = run_child(TRY_LOCK, str(path))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err.decode()
        pid_line, message = out.decode().splitlines()
        assert int(pid_line) == os.getpid()
        assert str(os.getpid()) in message and "another csvbridge pass" in message
    assert not lock.held
    assert path.exists()  # never deleted: see PassLock's docstring
    proc = run_child(TRY_LOCK, str(path))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.decode().strip() == "acquired"


def test_pass_lock_in_same_process_and_reacquire(tmp_path: Path) -> None:
    path = tmp_path / "csvbridge.lock"
    first = PassLock(path).acquire()
    with pytest.raises(RuntimeError):
        first.acquire()
    with pytest.raises(LockedError) as exc:
        PassLock(path).acquire()
    assert exc.value.context["pid"] == os.getpid()
    assert exc.value.exit_code == 3
    first.release()
    first.release()  # idempotent
    with PassLock(path):
        pass


def test_pass_lock_is_free_after_holder_is_killed_with_9(tmp_path: Path) -> None:
    path = tmp_path / "csvbridge.lock"
    proc = run_child(HOLD_LOCK, str(path))
    try:
        wait_until(
            lambda: path.exists() and f"pid={proc.pid} " in path.read_text(), what="child lock"
        )
        with pytest.raises(LockedError) as exc:
            PassLock(path).acquire()
        assert exc.value.context["pid"] == proc.pid
        assert str(proc.pid) in str(exc.value)
        kill9(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
    with PassLock(path):
        assert f"pid={os.getpid()} " in path.read_text()


# -- claims ------------------------------------------------------------------------


def test_a_claim_is_ours_until_its_owner_is_gone(tmp_path: Path) -> None:
    from csvbridge.drops.lock import Owner, _current, me

    proc = run_child("import time; time.sleep(60)")
    try:
        other = _current(proc.pid)
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            assert ledger.claim("shop", "processing/a.csv", other) is None  # theirs now
            assert ledger.claim("shop", "processing/a.csv") == other  # alive: refused
            assert ledger.claim("shop", "processing/a.csv", other) is None  # still theirs
            kill9(proc)
            assert ledger.claim("shop", "processing/a.csv") is None  # gone: taken over
            assert ledger.claim("shop", "processing/a.csv", other) == me()  # ours now
            ledger.release("shop", "processing/a.csv")
            assert ledger.claim("shop", "processing/a.csv", other) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # another host cannot be checked from here: its claims are respected
    stranger = Owner("elsewhere.example", "boot", 1, "1")
    assert stranger.alive()
    assert Owner.parse(stranger.token) == stranger and Owner.parse("garbage") is None


def test_a_replica_whose_heartbeat_came_too_late_stops_itself(tmp_path: Path) -> None:
    """Its claims and leases may have been taken over meanwhile: it must not go on."""
    import threading

    from csvbridge.config import StateSettings
    from csvbridge.drops.lock import me
    from csvbridge.drops.replicas import Replica

    stop = threading.Event()
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        replica = Replica(ledger, StateSettings(lease_seconds=1), stop=stop).start()
        try:
            assert replica.hold("token:x") is None
            assert replica.hold("token:x") is None  # re-entrant
            assert not stop.wait(1.0)  # renewed every third of a second: all is well
            assert {lease.name for lease in ledger.leases() if lease.alive} == {"token:x"}
            ledger.register_replica(me(), -1)  # as if this process had stalled past expiry
            assert stop.wait(5), "the replica did not stop"
            assert replica.lost
        finally:
            replica.close()
        # a lost replica leaves its rows to whoever took over
        assert [r.owner for r in ledger.replicas()] == [me().token]
