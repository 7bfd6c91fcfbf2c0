"""The Commerce HQ source against the orders-API stand-in, over loopback HTTP.

Every test checks what ends up in the written CSV files against the stand-in's store:
no order skipped, every change taken by the next pass at the latest, duplicates bounded.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from csvbridge.errors import SourceAuthError, SourceUnavailable, TerminalError, TransientError
from csvbridge.files import write_bytes
from csvbridge.fold.engine import convert
from csvbridge.sources.commercehq import (
    COLUMNS,
    CommerceHQClient,
    CommerceHQSettings,
    Cursor,
    PullResult,
    api_base_url,
    order_rows,
)
from csvbridge.testing.commercehq import CommerceHQStandIn
from tests.helpers import kill9, wait_until

DATA = Path(__file__).resolve().parents[1] / "csvbridge" / "data" / "commercehq"


@pytest.fixture
def standin() -> Iterator[Callable[..., CommerceHQStandIn]]:
    """Factory: ``standin(**kwargs)`` starts one on an ephemeral port; all stopped after."""
    started: list[CommerceHQStandIn] = []

    def start(**kwargs: Any) -> CommerceHQStandIn:
        chq = CommerceHQStandIn(**kwargs).start()
        started.append(chq)
        return chq

    yield start
    for chq in started:
        chq.stop()


def client_for(chq: CommerceHQStandIn, **overrides: Any) -> CommerceHQClient:
    values: dict[str, Any] = {
        "base_url": chq.url,
        "api_key": chq.api_key,
        "api_password": chq.api_password,
        "page_size": 50,
        "timeout_seconds": 5,
        "backoff_base_seconds": 0.005,
        "backoff_max_seconds": 0.05,
        "max_attempts": 12,
    }
    values.update(overrides)
    return CommerceHQClient(CommerceHQSettings.model_validate(values))


def rows_of(files: list[Path]) -> list[dict[str, str]]:
    """All rows of `files`, in the order they were written."""
    rows = []
    for f in files:
        with open(f, encoding="utf-8", newline="") as fh:
            rows.extend(csv.DictReader(fh))
    return rows


def latest(files: list[Path]) -> dict[int, dict[str, str]]:
    """Each order's last written state (its first row): what the platform ends up with."""
    state: dict[int, dict[str, str]] = {}
    for f in files:
        seen_here: set[int] = set()
        for row in rows_of([f]):
            oid = int(row["Order ID"])
            if oid not in seen_here:
                seen_here.add(oid)
                state[oid] = row
    return state


def writes(files: list[Path]) -> Counter[int]:
    """How many files hold each order (a file holds an order once)."""
    return Counter(oid for f in files for oid in latest([f]))


def assert_no_duplicates(files: list[Path], chq: CommerceHQStandIn) -> None:
    """No order written more often than it had states: each version at most once."""
    extra = {i: n for i, n in writes(files).items() if n > chq.versions[i]}
    assert extra == {}


def assert_matches_store(files: list[Path], chq: CommerceHQStandIn) -> None:
    """Every order with items was written, and its last written state is the store's."""
    state = latest(files)
    store = {i: o for i, o in chq.snapshot().items() if o["items"]}
    assert set(state) == set(store)
    for oid, order in store.items():
        row = state[oid]
        got = (row["Paid"], row["Fulfilment Status"], row["Total"], row["Notes"])
        want = (str(order["paid"]), str(order["status"]), order_rows(order, "USD")[0][29])
        assert got[:3] == want, oid
        assert got[3] == (order["notes"] or "")


def test_columns_are_the_shipped_export_header():
    with open(DATA / "orders.csv", encoding="utf-8", newline="") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS


def test_store_url_becomes_the_api_base():
    assert api_base_url("commercehq://mystore.commercehq.com") == (
        "https://mystore.commercehq.com/api/v1"
    )
    assert api_base_url("commercehq+http://127.0.0.1:8080/") == "http://127.0.0.1:8080/api/v1"
    with pytest.raises(TerminalError):
        api_base_url("commercehq://key:secret@mystore.commercehq.com")
    with pytest.raises(TerminalError):
        api_base_url("https://mystore.commercehq.com")


def test_cursor_round_trips_and_refuses_garbage():
    cur = Cursor(
        1700000000, 3, ((4001, 0, 1699999990),), 1700000500, "updated", 7, (1700000400, 4002)
    )
    assert Cursor.from_json(cur.to_json()) == cur
    assert Cursor.from_json(None) == Cursor()
    with pytest.raises(TerminalError):
        Cursor.from_json('{"watermark": "soon"}')


# --------------------------------------------------------------------------- paging


def test_pages_through_1050_orders_each_written_once(standin, tmp_path):
    chq = standin(orders=1050, seed=3)
    with client_for(chq) as client:
        result = client.pull(tmp_path)
    assert result.complete and result.accounted
    rows = rows_of(result.files)
    ids = Counter(int(r["Order ID"]) for r in rows)
    store = chq.snapshot()
    assert set(ids) == set(store)
    # one row per line item, each order once
    assert sum(ids.values()) == result.rows == sum(len(o["items"]) for o in store.values())
    for oid, n in ids.items():
        assert n == len(store[oid]["items"])
    assert result.written == 1050 and result.no_items == []
    assert result.pages >= 21 and chq.stats.pages_served == result.pages
    assert len(result.files) == 21  # the created list: 1050 / 50; no update is new
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in result.files)
    # a second pass with nothing new writes nothing and reads only a first page per list
    with client_for(chq) as client:
        again = client.pull(tmp_path, result.cursor)
    assert again.complete and again.accounted
    assert again.written == 0 and again.files == [] and again.pages == 2


def test_page_past_the_end_is_not_read_twice(standin, tmp_path):
    """The stand-in answers the last page again past the end (Yii2): the client must
    stop on _meta.pageCount, or it would loop / duplicate."""
    chq = standin(orders=120, seed=4)
    with client_for(chq, page_size=50) as client:
        result = client.pull(tmp_path)
    assert result.written == 120 and result.duplicates == 0
    assert chq.stats.pages_served == result.pages == 3 + 1  # 3 created pages, 1 updated


# --------------------------------------------------------------------------- changes


def test_orders_changing_during_a_pass_are_never_skipped(standin, tmp_path):
    listed = Counter[str]()

    def meddle(chq: CommerceHQStandIn, query: dict[str, str]) -> None:
        listed[query["sort"]] += 1
        if query["sort"] == "!order_date,!id" and listed[query["sort"]] == 6:
            for oid in range(5040, 5050):  # already read (newest first)
                chq.update_order(oid, paid=-2, status=5)
            for oid in range(4000, 4010):  # not read yet
                chq.update_order(oid, paid=-1)
            for _ in range(5):  # new orders land in front of the pages read
                chq.add_order()
        if query["sort"] == "!updated_at,!id" and listed[query["sort"]] == 1:
            chq.update_order(4500, notes="changed while the update list is read")

    chq = standin(orders=1050, seed=5, on_request=meddle)
    files: list[Path] = []
    with client_for(chq) as client:
        first = client.pull(tmp_path / "p1")
        files += first.files
        taken = set(latest(files))
        assert set(range(4000, 5050)) <= taken  # nothing present at the start is missed
        assert first.accounted
        assert latest(files)[4005]["Paid"] == "-1"  # changed before it was read
        chq.advance(60)
        second = client.pull(tmp_path / "p2", first.cursor)
        files += second.files
    assert second.accounted and second.complete
    assert_matches_store(files, chq)
    # orders changed after they were read are written again (by this pass's update list
    # or the next pass), new orders by the next pass; the store is not read again whole
    assert all(latest(files)[oid]["Paid"] == "-2" for oid in range(5040, 5050))
    assert all(writes(files)[oid] == 2 for oid in range(5040, 5050))
    assert "changed while" in latest(files)[4500]["Notes"]
    assert set(latest(second.files)) >= set(range(5050, 5055))
    assert second.written <= 10 + 10 + 5 + 1
    assert_no_duplicates(files, chq)


def test_updates_while_the_update_list_is_paged(standin, tmp_path):
    """The update list shifts under the client: changed orders jump to its front."""
    state = {"armed": False, "n": 0}

    def meddle(chq: CommerceHQStandIn, query: dict[str, str]) -> None:
        if state["armed"] and query["sort"] == "!updated_at,!id":
            state["n"] += 1
            if state["n"] == 2:  # page 1 read; reshuffle the list under the client
                for oid in range(4100, 4300, 4):  # on page 1 (most recent updates)
                    chq.update_order(oid, paid=0)
                for oid in range(4301, 4600, 6):  # further back, not read yet
                    chq.update_order(oid, paid=1, status=3)

    chq = standin(orders=800, seed=6, on_request=meddle)
    files: list[Path] = []
    with client_for(chq) as client:
        result = client.pull(tmp_path / "p0")
        files += result.files
        chq.advance(3600)
        for oid in range(4000, 4600, 2):  # 300 updates: 6 pages of the update list
            chq.update_order(oid, status=4)
        chq.advance(5)
        for oid in range(4100, 4300, 4):  # the most recent updates: page 1
            chq.update_order(oid, status=5)
        state["armed"] = True
        for k in range(1, 3):
            chq.advance(30)
            result = client.pull(tmp_path / f"p{k}", result.cursor)
            files += result.files
            assert result.accounted and result.complete
    assert_matches_store(files, chq)
    assert_no_duplicates(files, chq)


def test_changes_that_become_visible_late_are_taken_by_the_overlap(standin, tmp_path):
    """A change stamped before the previous pass began, but committed (visible) after it
    read that part of the list: the overlap window re-reads it, `seen` dedupes the rest.

    The stand-in's clock is frozen (moved only by `advance`): on a loaded machine the
    pass used to straddle a second, so `now()` read after it was one past the watermark."""
    frozen = time.time()
    chq = standin(orders=300, seed=12, clock=lambda: frozen)
    with client_for(chq, overlap_seconds=120) as client:
        first = client.pull(tmp_path / "p1")
        watermark = first.cursor.watermark
        assert watermark == int(chq.now())  # the server's clock, from the Date header
        chq.advance(600)
        chq.update_order(4010, at=watermark - 30, paid=-2)
        late = chq.add_order(at=watermark - 60)
        chq.update_order(4020, at=watermark - 500, paid=-2)  # beyond the overlap: missed
        second = client.pull(tmp_path / "p2", first.cursor)
    got = latest(second.files)
    assert set(got) == {4010, late["id"]} and got[4010]["Paid"] == "-2"
    assert second.accounted


# --------------------------------------------------------------------------- restart


class Crash(Exception):
    pass


def test_restart_mid_pull_loses_nothing(standin, tmp_path):
    chq = standin(orders=1050, seed=7)
    cursor_file = tmp_path / "cursor.json"
    commits = 0

    def persist_then_crash(cursor: Cursor) -> None:
        nonlocal commits
        commits += 1
        if commits == 8:  # page 8's file is written, its cursor is not: a crash
            raise Crash
        write_bytes(cursor_file, cursor.to_json().encode())

    with client_for(chq) as client, pytest.raises(Crash):
        client.pull(tmp_path / "drop", None, persist_then_crash)
    before = sorted((tmp_path / "drop").iterdir())
    assert len(before) == 8
    saved = Cursor.from_json(cursor_file.read_bytes())
    assert (saved.stream, saved.page) == ("created", 8)
    # while csvbridge was down: new orders (the pages shift) and changes
    for _ in range(30):
        chq.add_order()
    for oid in range(4700, 4720):
        chq.update_order(oid, paid=-2)
    # the files already written were taken by the runner: keep them aside
    taken = tmp_path / "taken"
    taken.mkdir()
    kept = [f.rename(taken / f.name) for f in before[:7]]
    with client_for(chq) as client:
        rest = client.pull(tmp_path / "drop", Cursor.from_json(cursor_file.read_bytes()))
    assert rest.accounted and rest.complete
    # page 8 is written again under the same name: it replaces, never adds, a file
    assert rest.files[0].name == before[7].name
    files = kept + rest.files
    assert set(latest(files)) >= set(range(4000, 5050))
    assert_no_duplicates(files, chq)  # the resumed pages skip what was taken
    with client_for(chq) as client:
        last = client.pull(tmp_path / "drop2", rest.cursor)
    assert_matches_store(files + last.files, chq)
    assert_no_duplicates(files + last.files, chq)


PULLER = """
import sys
from csvbridge.files import write_bytes
from csvbridge.sources.commercehq import CommerceHQClient, CommerceHQSettings, Cursor
url, drop, cursor_file = sys.argv[1:4]
settings = CommerceHQSettings(base_url=url, api_key="chq-key", api_password="chq-password",
                              page_size=50)
def persist(cursor):
    write_bytes(cursor_file, cursor.to_json().encode())
CommerceHQClient(settings).pull(drop, None, persist)
"""


def test_kill9_mid_pull_then_resume(standin, tmp_path):
    """A real crash: the puller process is killed -9 in the middle of the first pass; a
    new client resumes from the persisted cursor; nothing lost, nothing twice."""
    chq = standin(orders=1050, seed=13, slow_rate=1.0, slow_seconds=0.05)
    drop, cursor_file = tmp_path / "drop", tmp_path / "cursor.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", PULLER, chq.url, str(drop), str(cursor_file)], env=env
    )
    try:
        wait_until(
            lambda: cursor_file.exists() and Cursor.from_json(cursor_file.read_bytes()).page >= 6,
            timeout=60,
            what="the puller to commit page 5",
        )
    finally:
        kill9(proc)
    saved = Cursor.from_json(cursor_file.read_bytes())
    assert saved.pass_started is not None  # killed mid-pass
    visible = sorted(f for f in drop.iterdir() if not f.name.startswith("."))
    chq.slow_rate = 0.0
    for _ in range(12):  # the store moves on while csvbridge is down
        chq.add_order()
    with client_for(chq) as client:
        rest = client.pull(drop, saved)
        assert rest.complete and rest.accounted
        last = client.pull(tmp_path / "drop2", rest.cursor)
    files = sorted({*visible, *rest.files}) + last.files
    assert_matches_store(files, chq)
    assert_no_duplicates(files, chq)


# --------------------------------------------------------------------------- faults


def test_5xx_storm_is_retried_to_success(standin, tmp_path):
    chq = standin(orders=400, seed=8, fail_rate=0.3)
    chq.fail_next(6, status=503)
    with client_for(chq) as client:
        result = client.pull(tmp_path)
        retries = client.retries
    assert result.complete and result.written == 400
    stats = chq.stats
    assert stats.status_counts[503] >= 6 and retries == sum(
        n for s, n in stats.status_counts.items() if s >= 500
    )
    assert_matches_store(result.files, chq)


def test_429_waits_as_long_as_retry_after_says(standin, tmp_path):
    chq = standin(orders=60, seed=9)
    chq.throttle_next(2, retry_after=0.4)
    started = time.monotonic()
    with client_for(chq, backoff_base_seconds=0.001, backoff_max_seconds=0.001) as client:
        result = client.pull(tmp_path)
    assert time.monotonic() - started >= 0.8
    assert chq.stats.status_counts[429] == 2 and result.written == 60


def test_slow_answer_times_out_and_is_retried(standin, tmp_path):
    chq = standin(orders=60, seed=10)
    chq.slow_next(1, seconds=3)
    with client_for(chq, timeout_seconds=0.3) as client:
        result = client.pull(tmp_path)
        assert client.retries == 1
    assert result.written == 60


def test_a_server_that_stays_down_is_a_transient_error(standin, tmp_path):
    chq = standin(orders=10, fail_rate=1.0)
    with client_for(chq, max_attempts=3) as client, pytest.raises(SourceUnavailable) as info:
        client.pull(tmp_path)
    assert isinstance(info.value, TransientError) and "after 3 attempts" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_password_is_terminal_and_secret(standin, tmp_path, caplog):
    chq = standin(orders=10)
    wrong = "hunter2-wrong-password"
    caplog.set_level(logging.DEBUG)
    with client_for(chq, api_password=wrong, max_attempts=5) as client:
        with pytest.raises(SourceAuthError) as info:
            client.pull(tmp_path)
        text = f"{info.value} {info.value.context} {client!r} {client.settings!r}"
    assert "401" in str(info.value) and "api_password" in str(info.value)
    assert wrong not in text and wrong not in caplog.text
    assert chq.stats.requests == 1  # not retried
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- end to end


def test_pulled_orders_convert_with_the_shipped_mapping(standin, tmp_path):
    chq = standin(orders=200, seed=11)
    empty = chq.add_order(items=0)
    with client_for(chq, currency="EUR") as client:
        result = client.pull(tmp_path / "drop")
    assert result.no_items == [empty["id"]]
    assert result.written == 200 and result.accounted
    store = chq.snapshot()
    got: dict[str, dict[str, Any]] = {}
    for n, f in enumerate(result.files):
        done = convert(f, tmp_path / f"work{n}", mapping=DATA / "mapping.yaml")
        report = done.report
        assert report.accounted and report.objects_rejected == 0, report.problems.errors
        assert report.rows_read == report.rows_converted
        for line in done.ndjson.read_bytes().splitlines():
            conv = orjson.loads(line)
            got[conv["id"]] = conv
    assert set(got) == {str(i) for i, o in store.items() if o["items"]}
    status_of = {0: "pending", 1: "in_progress", 2: "partially_shipped", 3: "in_progress",
                 4: "partially_shipped", 5: "shipped"}  # fmt: skip
    for cid, conv in got.items():
        order = store[int(cid)]
        assert conv["final_amount"] == pytest.approx(order["total"])
        assert conv["tax_amount"] == pytest.approx(order["tax"])
        assert conv["shipping_amount"] == pytest.approx(float(order["shipping"]["price"]))
        assert conv["currency"] == "EUR"
        assert conv["user"]["email"] == order["email"]
        want = {-2: "canceled", -1: "partially_returned"}.get(order["paid"])
        assert conv["status"] == (want or status_of[order["status"]])
        assert conv["billing_address"]["postal_code"] == order["address"]["billing"]["zip"]
        items = order["items"]
        assert [i["product"]["id"] for i in conv["conversion_items"]] == [
            i["data"]["sku"] for i in items
        ]
        assert [i["original_quantity"] for i in conv["conversion_items"]] == [
            i["status"]["quantity"] for i in items
        ]
        assert conv["created"].startswith(
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(order["order_date"]))
        )


def test_pull_result_accounts_for_every_order_received():
    r = PullResult(received=10, written=6, duplicates=2, older=1, no_items=[7])
    assert r.accounted
    r.written = 5
    assert not r.accounted
