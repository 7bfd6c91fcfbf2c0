"""The ledger contract: every backend (SQLite, PostgreSQL) passes the same tests.

The ``store`` fixture is parametrised over both backends and hands out a factory: each
call opens one more ledger on the same storage, the way several processes or replicas
do.  PostgreSQL is a real server (tests/plugins/postgres.py), never a mock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csvbridge.drops.ledger import AlreadyProcessed, LedgerStore, make_fingerprint, open_ledger
from csvbridge.drops.lock import Owner, me
from csvbridge.report import FileState

Open = Callable[[], LedgerStore]
SHA = "ab" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    opened: list[LedgerStore] = []
    if request.param == "sqlite":
        target: str | Path = tmp_path / "ledger.sqlite"
        password = None
    else:
        target = request.getfixturevalue("pg_url")
        password = request.getfixturevalue("pg_server").password

    def open_one() -> LedgerStore:
        ledger = open_ledger(target, password=password)
        opened.append(ledger)
        return ledger

    yield open_one
    for ledger in opened:
        ledger.close()


def other(n: int = 1, host: str = "elsewhere.example") -> Owner:
    """A process on another machine: it cannot be checked, only its heartbeat counts."""
    return Owner(host, "boot", 1000 + n, "42")


def test_both_backends_implement_the_interface(store: Open) -> None:
    ledger = store()
    assert isinstance(ledger, LedgerStore)
    assert ledger.schema_version == 4
    assert "password" not in ledger.location and ledger.location


def test_begin_resume_finish_and_never_twice(store: Open) -> None:
    ledger = store()
    entry = ledger.begin("shop", "orders.csv", 10, 1.5, SHA.upper())
    assert (entry.status, entry.attempts, entry.sha256) == (FileState.PROCESSING, 1, SHA)
    again = store().begin("shop2", "renamed.csv", 10, 2.5, SHA)  # another process
    assert (again.id, again.attempts, again.source, again.name) == (
        entry.id,
        2,
        "shop2",
        "renamed.csv",
    )
    with pytest.raises(ValueError):
        ledger.finish(entry.id, FileState.PROCESSING)
    done = ledger.finish(
        entry.id, FileState.DONE, rows=5, shipped=4, rejected=1, report_path="r.json"
    )
    assert (done.status, done.rows, done.shipped, done.report_path) == (
        FileState.DONE,
        5,
        4,
        "r.json",
    )
    assert done.finished_at is not None
    with pytest.raises(ValueError):
        ledger.finish(entry.id, FileState.DONE)
    with pytest.raises(AlreadyProcessed):
        ledger.begin("shop", "orders.csv", 10, 1.5, SHA)
    with pytest.raises(KeyError):
        ledger.get(99999)
    assert ledger.lookup(make_fingerprint(SHA, 10)) == ledger.get(entry.id)
    assert ledger.lookup(make_fingerprint(SHA, 11)) is None


def test_failed_file_retried_keeps_its_progress(store: Open) -> None:
    ledger = store()
    entry = ledger.begin("shop", "a.csv", 3, 0, SHA)
    ledger.record_batch(entry.id, 0, ["A", "B"], ["C"])
    ledger.finish(entry.id, FileState.FAILED)
    retried = ledger.begin("shop", "a.csv", 3, 0, SHA)
    assert retried.attempts == 2 and retried.finished_at is None
    assert ledger.accepted_ids(entry.id) == {"A", "B"}


def test_an_accepted_id_is_never_downgraded(store: Open) -> None:
    ledger = store()
    entry = ledger.begin("shop", "a.csv", 3, 0, SHA)
    ledger.record_batch(entry.id, 0, ["A", "A", "B"], ["C", "A"])  # A both: accepted wins
    ledger.record_batch(entry.id, 1, ["C"], ["B"])  # a later duplicate rejection of B
    assert ledger.accepted_ids(entry.id) == {"A", "B", "C"}
    assert ledger.rejected_ids(entry.id) == set()
    ledger.record_batch(entry.id, 2, [], ["D"])
    ledger.record_batch(entry.id, 2, ["E"], ["D"])  # the same batch again replaces its row
    assert ledger.rejected_ids(entry.id) == {"D"}
    assert [(b.batch_no, b.accepted, b.rejected) for b in ledger.batches(entry.id)] == [
        (0, 2, 1),
        (1, 1, 1),  # the answer as given; B stays accepted
        (2, 1, 1),
    ]
    with pytest.raises(KeyError):
        ledger.record_batch(99999, 0, ["X"], [])


def test_events_and_cursors(store: Open) -> None:
    ledger = store()
    entry = ledger.begin("shop", "a.csv", 3, 0, SHA)
    ledger.record_events(entry.id, 0, ["A"], ["B"])
    ledger.record_events(entry.id, 1, ["B"], ["A"])
    assert ledger.sent_event_ids(entry.id) == {"A", "B"}
    assert ledger.accepted_ids(entry.id) == set()  # one sink never marks the other's ids
    assert ledger.get_cursor("chq") is None
    ledger.set_cursor("chq", '{"page": 1}')
    store().set_cursor("chq", '{"page": 2}')
    assert ledger.get_cursor("chq") == '{"page": 2}'


def test_a_claim_is_respected_while_its_owner_lives(store: Open) -> None:
    ledger = store()
    a, b = other(1), other(2)
    ledger.register_replica(a, 60)
    assert ledger.claim("shop", "processing/x.csv", a) is None
    assert ledger.claim("shop", "processing/x.csv", a) is None  # ours already
    assert store().claim("shop", "processing/x.csv", b) == a  # a is alive: leave it
    ledger.release("shop", "processing/x.csv")
    assert ledger.claim("shop", "processing/x.csv", b) is None
    assert [(c.path, c.owner) for c in ledger.claims()] == [("processing/x.csv", b.token)]


def test_a_claim_of_an_expired_replica_is_taken_over(store: Open) -> None:
    ledger = store()
    dead = other(1)
    ledger.register_replica(dead, -1)  # its heartbeat already expired: killed, machine gone
    assert ledger.claim("shop", "processing/x.csv", dead) is None
    assert ledger.claim("shop", "processing/x.csv", other(2)) is None
    # no heartbeat row at all, on another machine: cannot be checked, counts as alive
    legacy = other(3)
    assert ledger.claim("shop", "processing/y.csv", legacy) is None
    assert ledger.claim("shop", "processing/y.csv", other(4)) == legacy


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over(store: Open) -> None:
    ledger = store()
    mine = me()
    gone = Owner(mine.host, mine.boot, mine.pid, "1")  # the pid, started at another time
    ledger.register_replica(gone, 60)  # even with a fresh heartbeat row
    assert ledger.claim("shop", "processing/x.csv", gone) is None
    assert ledger.claim("shop", "processing/x.csv") is None


def test_only_one_of_many_racing_claimants_wins(store: Open) -> None:
    ledgers = [store() for _ in range(6)]
    owners = [other(n) for n in range(6)]
    for ledger, owner in zip(ledgers, owners, strict=True):
        ledger.register_replica(owner, 60)
    results: list[Owner | None] = [other(99)] * 6
    barrier = threading.Barrier(6)

    def claim(n: int) -> None:
        barrier.wait()
        results[n] = ledgers[n].claim("shop", "processing/race.csv", owners[n])

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, r in enumerate(results) if r is None]
    assert len(winners) == 1, results
    assert all(r == owners[winners[0]] for r in results if r is not None)


def test_a_lease_has_one_holder_until_it_expires(store: Open) -> None:
    ledger = store()
    a, b = other(1), other(2)
    ledger.register_replica(a, 60)
    ledger.register_replica(b, 60)
    assert ledger.acquire_lease("token:x", a, 60) is None
    assert store().acquire_lease("token:x", b, 60) == a.token
    assert ledger.acquire_lease("token:x", a, 60) is None  # renewal
    assert ledger.acquire_lease("token:y", b, 60) is None  # another token: independent
    ledger.release_lease("token:x", b)  # not b's: nothing happens
    assert ledger.acquire_lease("token:x", b, 60) == a.token
    ledger.release_lease("token:x", a)
    assert ledger.acquire_lease("token:x", b, 60) is None
    # an expired lease is taken over, and its old holder learns it at its next heartbeat
    assert ledger.acquire_lease("token:z", a, -1) is None
    assert ledger.acquire_lease("token:z", b, 60) is None
    in_time, held = ledger.heartbeat(a, 60)
    assert in_time and held == {"token:x"} - {"token:x"}  # a holds nothing any more
    assert {(lease.name, lease.owner) for lease in ledger.leases()} == {
        ("token:x", b.token),
        ("token:y", b.token),
        ("token:z", b.token),
    }


def test_heartbeat_renews_and_reports_a_late_renewal(store: Open) -> None:
    ledger = store()
    a = other(1)
    ledger.register_replica(a, 60)
    assert ledger.acquire_lease("token:x", a, 60) is None
    in_time, held = ledger.heartbeat(a, 60)
    assert in_time and held == {"token:x"}
    ledger.register_replica(a, -1)  # as if the heartbeat stalled past its expiry
    replica = {r.owner: r for r in ledger.replicas()}[a.token]
    assert not replica.alive
    in_time, _ = ledger.heartbeat(a, 60)
    assert not in_time  # the replica must stop: its files may have been taken over
    assert {r.owner: r for r in ledger.replicas()}[a.token].alive


def test_unregister_frees_claims_and_leases(store: Open) -> None:
    ledger = store()
    a = other(1)
    ledger.register_replica(a, 60)
    ledger.claim("shop", "processing/x.csv", a)
    ledger.acquire_lease("token:x", a, 60)
    ledger.unregister_replica(a)
    assert ledger.claims() == [] and ledger.leases() == [] and ledger.replicas() == []
    assert ledger.claim("shop", "processing/x.csv", other(2)) is None


def test_status_queries_and_retention(store: Open) -> None:
    ledger = store()
    done = ledger.begin("shop", "old.csv", 1, 0, "01" * 32)
    ledger.record_batch(done.id, 0, ["A", "B"], ["C"])
    ledger.record_events(done.id, 0, ["A"], [])
    ledger.finish(done.id, FileState.DONE, rows=3, shipped=2, rejected=1)
    failed = ledger.begin("shop", "bad.csv", 1, 0, "02" * 32)
    ledger.record_batch(failed.id, 0, ["F"], [])
    ledger.finish(failed.id, FileState.FAILED)
    busy = ledger.begin("other", "big.csv", 1, 0, "03" * 32)
    ledger.record_batch(busy.id, 0, ["X", "Y"], ["Z"])
    ledger.record_batch(busy.id, 1, ["W"], [])
    assert ledger.counts_by_source() == {
        "shop": {"processing": 0, "done": 1, "failed": 1},
        "other": {"processing": 1, "done": 0, "failed": 0},
    }
    [progress] = ledger.in_progress()
    assert (progress.file.id, progress.accepted, progress.rejected, progress.batches) == (
        busy.id,
        3,
        1,
        2,
    )
    assert progress.batch_accepted == 3 and progress.last_batch_at is not None
    for n in range(25):
        ledger.note_error("shop", f"unreachable {n}")
        time.sleep(0.001)  # distinct timestamps keep the order
    ledger.note_error("other", "refused")
    errors = ledger.last_errors(per_source=2)
    assert [(e.source, e.message) for e in errors] == [
        ("other", "refused"),
        ("shop", "unreachable 24"),
        ("shop", "unreachable 23"),
    ]
    assert len(ledger.last_errors(per_source=100)) == 21  # 20 kept per source
    stats = ledger.stats()
    assert stats["files"] == {"processing": 1, "done": 1, "failed": 1}
    assert stats["shipped"] == 2 and stats["batches_recorded"] == 4
    # retention: only the done file's ids go; its row stays (a re-upload is still known)
    assert ledger.prune(time.time() - 3600) == 0
    assert ledger.prune(time.time() + 1) == 3
    assert ledger.accepted_ids(done.id) == set() and ledger.sent_event_ids(done.id) == set()
    assert ledger.accepted_ids(failed.id) == {"F"}
    assert ledger.accepted_ids(busy.id) == {"X", "Y", "W"}
    with pytest.raises(AlreadyProcessed):
        ledger.begin("shop", "old.csv", 1, 0, "01" * 32)
    assert [f.name for f in ledger.files(limit=2)] == ["big.csv", "bad.csv"]
    assert [f.name for f in ledger.files(FileState.DONE)] == ["old.csv"]
