"""The CSV feed sink: header, values, order, gzip, products, file names and delivery."""

from __future__ import annotations

import copy
import csv
import gzip
import io
import os
import random
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from csvbridge.config import FeedSettings
from csvbridge.errors import ConfigError
from csvbridge.schema.models import (
    HEADER_ALIASES,
    PRODUCT_HEADER,
    TEMPLATE_HEADER,
    Conversion,
    Product,
    field_rules,
)
from csvbridge.sinks.feed import (
    FeedError,
    deliver_feed,
    feed_filename,
    format_number,
    write_feed,
)

TEMPLATE = Path("/work/shared/reference/commandersact-conversions-csv-template.csv")


# --------------------------------------------------------------------------- helpers


def conversion(cid: str = "c1", items: int = 1, **extra: Any) -> dict[str, Any]:
    """A small valid conversion with `items` items."""
    obj: dict[str, Any] = {
        "id": cid,
        "user": {"user_email": "user@example.com"},
        "type": "offline",
        "status": "in_progress",
        "created": "2018-01-01T20:00:00.000+01:00",
        "currency": "EUR",
        "final_amount": 10,
        "conversion_items": [
            {"id": f"{cid}-i{n}", "original_quantity": n + 1, "product": {"id": f"p{n}"}}
            for n in range(items)
        ],
    }
    obj.update(extra)
    Conversion.model_validate(obj)  # the helper itself must build what the API accepts
    return obj


def read_feed(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))


def header_of(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return next(csv.reader(f))


def template_objects(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The template's rows as bulk-API conversion objects (numbers as pydantic gives them).

    Column types come from the models' rules, so ``gtin`` stays text (``1.35E+17``) while
    amounts become floats (``30.0``) that the feed must write back as ``30``.  Conversion
    values are taken from the first row of each conversion.
    """
    rules = field_rules(Conversion)

    def typed(path: str, text: str) -> Any:
        kind = rules[path].kind if path in rules else "text"
        if kind == "number":
            return float(text)
        if kind == "bool":
            return {"true": True, "false": False}[text]
        if kind == "list":
            return text.split("|")
        return text

    def put(obj: dict[str, Any], path: str, value: Any) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            obj = obj.setdefault(key, {})
        obj[leaf] = value

    objects: dict[str, dict[str, Any]] = {}
    for row in rows:
        head: dict[str, Any] = {}
        item: dict[str, Any] = {}
        for column, text in row.items():
            if text == "":
                continue
            path = HEADER_ALIASES.get(column, column)
            if path.startswith("conversion_items."):
                put(item, path.removeprefix("conversion_items."), typed(path, text))
            else:
                put(head, path, typed(path, text))
        conv = objects.setdefault(row["id"], {**head, "conversion_items": []})
        conv["conversion_items"].append(item)
    return list(objects.values())


# --------------------------------------------------------------------------- header


def test_header_is_the_official_template_header(tmp_path: Path) -> None:
    stats = write_feed([conversion()], tmp_path / "f.csv")
    assert stats.columns == TEMPLATE_HEADER
    assert header_of(tmp_path / "f.csv") == list(TEMPLATE_HEADER)
    # byte for byte the template's first line; lower case, no spaces
    template_header = TEMPLATE.read_text(encoding="utf-8").splitlines()[0]
    assert (tmp_path / "f.csv").read_bytes().split(b"\r\n")[0] == template_header.encode()
    assert all(c == c.lower() and " " not in c for c in stats.columns)


def test_empty_feed_still_has_the_header(tmp_path: Path) -> None:
    stats = write_feed([], tmp_path / "f.csv")
    assert (stats.rows, stats.objects) == (0, 0)
    assert (tmp_path / "f.csv").read_bytes() == (",".join(TEMPLATE_HEADER) + "\r\n").encode()


def test_extra_columns_follow_in_a_stable_order(tmp_path: Path) -> None:
    a = conversion("a", items=2, custom={"zeta": 1, "alpha": "x"})
    a["user"] = {"email": "a@example.com", "loyalty": "gold", "consent_categories": ["1"]}
    a["conversion_items"][0]["custom"] = {"campaign": "xmas"}
    a["conversion_items"][1]["product"]["gender"] = "unisex"
    b = conversion("b", payment_provider="stripe", custom={"beta": True})
    b["user"]["account"] = "42"
    b["conversion_items"][0]["product"]["custom"] = {"warehouse": "B", "aisle": 3}
    expected = TEMPLATE_HEADER + (
        "user.email",  # documented properties the template lacks, in documented order
        "payment_provider",
        "conversion_items.product.gender",
        "user.account",  # then each open-ended family, keys sorted
        "user.loyalty",
        "custom.alpha",
        "custom.beta",
        "custom.zeta",
        "conversion_items.custom.campaign",
        "conversion_items.product.custom.aisle",
        "conversion_items.product.custom.warehouse",
    )
    first = write_feed([a, b], tmp_path / "1.csv")
    second = write_feed([b, a], tmp_path / "2.csv")
    assert first.columns == second.columns == expected
    assert header_of(tmp_path / "1.csv") == list(expected)
    assert (tmp_path / "1.csv").read_bytes() == (tmp_path / "2.csv").read_bytes()
    rows = read_feed(tmp_path / "1.csv")
    assert [r["consent_categories"] for r in rows] == ["1", "1", ""]
    assert [r["user.email"] for r in rows] == ["a@example.com", "a@example.com", ""]
    assert [r["conversion_items.custom.campaign"] for r in rows] == ["xmas", "", ""]
    assert [r["conversion_items.product.gender"] for r in rows] == ["", "unisex", ""]
    assert [r["conversion_items.product.custom.aisle"] for r in rows] == ["", "", "3"]


def test_nested_custom_objects_become_dot_paths(tmp_path: Path) -> None:
    stats = write_feed([conversion(custom={"ab": {"group": "B", "n": 2}})], tmp_path / "f.csv")
    assert stats.columns[len(TEMPLATE_HEADER) :] == ("custom.ab.group", "custom.ab.n")
    assert read_feed(tmp_path / "f.csv")[0]["custom.ab.group"] == "B"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(original_quantity=3),  # read-only at conversion level
        lambda c: c.update(unknown_field="x"),
        lambda c: c.update(billing_address={"planet": "Mars"}),
        lambda c: c["conversion_items"][0].update(colour="red"),
        lambda c: c.update(conversion_items=[]),
        lambda c: c.pop("id"),
        lambda c: c.update(custom={"rows": [{"a": 1}]}),
        lambda c: c.update(final_amount=float("nan")),
    ],
)
def test_objects_the_feed_cannot_hold_are_refused(tmp_path: Path, mutate: Any) -> None:
    bad = conversion("bad")
    mutate(bad)
    with pytest.raises(FeedError):
        write_feed([conversion("ok"), bad], tmp_path / "f.csv")
    assert list(tmp_path.iterdir()) == []  # neither the feed nor a partial file is left


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (10, "10"),
        (10.0, "10"),
        (6.4, "6.4"),
        (-0.0, "0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e-5, "0.00001"),
        (2.5e-8, "2.5e-8"),
        (1.35e17, "135000000000000000"),
        (1e21, "1e+21"),
        (12345678901234567890, "12345678901234567890"),
    ],
)
def test_numbers_are_written_as_json_stringify_would(value: float, text: str) -> None:
    assert format_number(value) == text
    assert float(text) == value or isinstance(value, int)


def test_values_read_back_the_same(tmp_path: Path) -> None:
    comment = 'Say "hi", then\nleave; naïve café €'
    conv = conversion(
        "q",
        comment=comment,
        acknowledged=False,
        discount_amount=2.5,
        tax_amount=5.0,
        billing_address={"recipient": "Doe, Jane", "coordinates": {"latitude": 48.857764}},
    )
    conv["user"]["consent_categories"] = ["1", 3]
    conv["conversion_items"][0].update(original_item=True, price=19.99)
    conv["conversion_items"][0]["product"].update(
        tags=["mugs", "white, red", 'say "x"'], colors=["white", "red"], width=6.4, gtin="1.35E+17"
    )
    stats = write_feed([conv], tmp_path / "f.csv")
    raw = (tmp_path / "f.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == 2  # header + 1 line (+ none inside)
    (row,) = read_feed(tmp_path / "f.csv")
    assert stats.rows == 1
    assert row["comment"] == comment
    assert row["acknowledged"] == "false"
    assert row["conversion_items.original_item"] == "true"
    assert (row["discount_amount"], row["tax_amount"], row["final_amount"]) == ("2.5", "5", "10")
    assert row["conversion_items.price"] == "19.99"
    assert row["conversion_items.original_quantity"] == "1"
    assert row["billing_address.recipient"] == "Doe, Jane"
    assert row["billing_address.coordinates.latitude"] == "48.857764"
    assert row["consent_categories"] == "1|3"
    assert row["conversion_items.product.tags"] == 'mugs|white, red|say "x"'
    assert row["conversion_items.product.colors"] == "white|red"
    assert row["conversion_items.product.gtin"] == "1.35E+17"
    assert row["updated"] == "" and row["shipping_address.country"] == ""
    # quoting only where needed (RFC 4180): plain cells stay bare
    assert b",in_progress," in raw and b',"Doe, Jane",' in raw
    assert b'"Say ""hi"", then\nleave; na\xc3\xafve caf\xc3\xa9 \xe2\x82\xac"' in raw


# --------------------------------------------------------------------------- order


def test_one_line_per_item_with_conversion_values_repeated(tmp_path: Path) -> None:
    conv = conversion("multi", items=3, comment="gift", shipping_amount=4.9)
    stats = write_feed([conv], tmp_path / "f.csv")
    rows = read_feed(tmp_path / "f.csv")
    assert (stats.rows, stats.objects) == (3, 1)
    assert [r["conversion_items.id"] for r in rows] == ["multi-i0", "multi-i1", "multi-i2"]
    assert [r["conversion_items.product.id"] for r in rows] == ["p0", "p1", "p2"]
    assert [r["conversion_items.original_quantity"] for r in rows] == ["1", "2", "3"]
    for r in rows:
        assert (r["id"], r["comment"], r["shipping_amount"]) == ("multi", "gift", "4.9")
        assert r["user.user_email"] == "user@example.com"


def test_unsorted_input_is_grouped_and_sorted_by_id(tmp_path: Path) -> None:
    rng = random.Random(7)
    ids = [f"order-{n:05d}" for n in range(3000)]
    objects = [conversion(cid, items=rng.randint(1, 4)) for cid in ids]
    rng.shuffle(objects)
    stats = write_feed(iter(objects), tmp_path / "f.csv")  # a one-shot iterator is enough
    rows = read_feed(tmp_path / "f.csv")
    assert stats.objects == 3000 and stats.rows == len(rows)
    seen = [r["id"] for r in rows]
    assert seen == sorted(seen)
    by_id: dict[str, list[str]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r["conversion_items.id"])
    for obj in objects:  # every item, in the object's own item order
        assert by_id[obj["id"]] == [i["id"] for i in obj["conversion_items"]]


def test_sort_is_by_code_point_and_keeps_arrival_order_within_an_id(tmp_path: Path) -> None:
    first, second = conversion("b"), conversion("b")
    second["conversion_items"][0]["id"] = "b-late"
    objects = [conversion("é"), first, conversion("B"), conversion("a"), second, conversion("10")]
    write_feed(objects, tmp_path / "f.csv")
    rows = read_feed(tmp_path / "f.csv")
    assert [r["id"] for r in rows] == ["10", "B", "a", "b", "b", "é"]
    assert [r["conversion_items.id"] for r in rows if r["id"] == "b"] == ["b-i0", "b-late"]


def test_input_objects_are_not_modified(tmp_path: Path) -> None:
    conv = conversion("x", items=2, custom={"a": {"b": 1}})
    before = copy.deepcopy(conv)
    write_feed([conv], tmp_path / "f.csv")
    assert conv == before


# --------------------------------------------------------------------------- gzip, products


def test_gzip_feed_is_readable(tmp_path: Path) -> None:
    dest = tmp_path / feed_filename("{kind}.csv", "conversions", gzip=True)
    assert dest.name == "conversions.csv.gz"
    stats = write_feed([conversion("b", items=2), conversion("a")], dest, gzip=True)
    assert dest.read_bytes()[:2] == b"\x1f\x8b"
    rows = read_feed(dest)
    assert [r["id"] for r in rows] == ["a", "b", "b"] and stats.rows == 3
    # same objects, same content whatever their order
    again = write_feed(
        [conversion("a"), conversion("b", items=2)], tmp_path / "2.csv.gz", gzip=True
    )
    assert gzip.decompress(again.path.read_bytes()) == gzip.decompress(dest.read_bytes())


def test_product_feed(tmp_path: Path) -> None:
    products = [
        {"id": "p2", "name": "Mug", "price": 10.0, "tags": ["a", "b"], "gender": "unisex"},
        {"id": "p1", "name": "Cup, small", "width": 6.4, "custom": {"warehouse": "B", "bin": 4}},
        {"id": "p3", "colors": ["white"], "gtin": "1.35E+17"},
    ]
    for p in products:
        Product.model_validate(p)
    stats = write_feed(products, tmp_path / "p.csv", "products")
    assert stats.columns == PRODUCT_HEADER + ("custom.bin", "custom.warehouse")
    assert stats.rows == stats.objects == 3
    rows = read_feed(tmp_path / "p.csv")
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"]
    assert rows[0]["name"] == "Cup, small" and rows[0]["width"] == "6.4"
    assert rows[0]["custom.bin"] == "4" and rows[1]["custom.bin"] == ""
    assert (rows[1]["price"], rows[1]["tags"], rows[1]["gender"]) == ("10", "a|b", "unisex")
    assert rows[2]["gtin"] == "1.35E+17"
    with pytest.raises(FeedError):
        write_feed([{"id": "p", "shop": "x"}], tmp_path / "bad.csv", "products")


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_feed([], tmp_path / "f.csv", "orders")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the template


def test_official_template_round_trips(tmp_path: Path) -> None:
    with TEMPLATE.open(encoding="utf-8", newline="") as f:
        template_rows = list(csv.DictReader(f))
    objects = template_objects(template_rows)
    assert len(objects) == 5
    for obj in objects:
        Conversion.model_validate(obj)
    random.Random(3).shuffle(objects)

    stats = write_feed(objects, tmp_path / "f.csv")

    assert stats.columns == TEMPLATE_HEADER and len(stats.columns) == 97
    written = read_feed(tmp_path / "f.csv")
    assert len(written) == len(template_rows) == stats.rows == 9
    first_of: dict[str, dict[str, str]] = {}
    for want, got in zip(template_rows, written, strict=True):
        first_of.setdefault(want["id"], want)
        # The template's consent_categories differs between rows of one conversion
        # ("3", "1", "2"), but consent is a property of the conversion's user: the
        # object holds the first row's value and every line repeats it.
        assert got["consent_categories"] == first_of[want["id"]]["consent_categories"]
        assert {k: v for k, v in got.items() if k != "consent_categories"} == {
            k: v for k, v in want.items() if k != "consent_categories"
        }
    assert {r["conversion_items.product.gtin"] for r in written} == {"1.35E+17"}


# --------------------------------------------------------------------------- file names


def test_feed_filename() -> None:
    now = datetime(2024, 1, 31, 23, 59, 58, tzinfo=UTC)
    assert feed_filename("{kind}_{timestamp}.csv", "conversions", now) == (
        "conversions_20240131T235958Z.csv"
    )
    assert feed_filename("{kind}_{timestamp}.csv", "products", now, gzip=True) == (
        "products_20240131T235958Z.csv.gz"
    )
    assert feed_filename("orders-{date}.csv", "conversions", now) == "orders-20240131.csv"
    assert feed_filename("x.csv.gz", "conversions", now, gzip=True) == "x.csv.gz"
    paris = datetime(2024, 2, 1, 0, 59, 58, tzinfo=timezone(timedelta(hours=1)))
    assert feed_filename("{timestamp}", "conversions", paris) == "20240131T235958Z"
    assert feed_filename("{kind}_{timestamp}.csv", "conversions").startswith("conversions_2")
    for bad in ("{kind}_{when}.csv", "{kind", "../{kind}.csv", "sub/{kind}.csv", ""):
        with pytest.raises(ConfigError):
            feed_filename(bad, "conversions", now)


# --------------------------------------------------------------------------- delivery


def test_empty_feed_is_not_uploaded(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    stats = write_feed([], tmp_path / "conversions_empty.csv")
    settings = FeedSettings(target=target.as_uri())
    assert deliver_feed(stats.path, settings, rows=stats.rows) is None
    assert list(target.iterdir()) == []

    settings = FeedSettings(target=target.as_uri(), upload_empty=True)
    assert deliver_feed(stats.path, settings, rows=stats.rows) == "conversions_empty.csv"
    assert [p.name for p in target.iterdir()] == ["conversions_empty.csv"]
    assert (target / "conversions_empty.csv").read_bytes() == stats.path.read_bytes()


def test_feed_replaces_a_file_of_the_same_name(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "conversions.csv").write_text("old")
    stats = write_feed([conversion()], tmp_path / "conversions.csv")
    assert deliver_feed(stats.path, FeedSettings(target=target.as_uri()), rows=stats.rows)
    assert [p.name for p in target.iterdir()] == ["conversions.csv"]
    assert (target / "conversions.csv").read_bytes() == stats.path.read_bytes()


def _big_feed(tmp_path: Path) -> Path:
    """A feed of a few MB, so the upload takes long enough to be watched."""
    objects = (conversion(f"order-{n:06d}", items=3, comment="x" * 200) for n in range(4000))
    stats = write_feed(objects, tmp_path / "conversions_20240131T235958Z.csv")
    assert stats.path.stat().st_size > 4_000_000
    return stats.path


def _upload_while_watching(local: Path, settings: FeedSettings, remote_dir: Path) -> None:
    """Upload `local` while a thread lists `remote_dir`; check what it could ever see."""
    expected = local.read_bytes()
    final = remote_dir / local.name
    stop = threading.Event()
    observations: list[set[str]] = []
    partial_finals: list[int] = []

    def poll() -> None:
        while not stop.is_set():
            names = set(os.listdir(remote_dir))
            observations.append(names)
            if local.name in names:
                try:
                    size = final.stat().st_size
                except FileNotFoundError:
                    continue
                if size != len(expected):
                    partial_finals.append(size)
            time.sleep(0.001)

    before = set(os.listdir(remote_dir))
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        assert deliver_feed(local, settings, rows=1) == local.name
    finally:
        stop.set()
        watcher.join(5)

    assert partial_finals == []  # the final name never showed partial content
    assert final.read_bytes() == expected
    assert set(os.listdir(remote_dir)) - before == {local.name}  # no temporary file left
    during = set().union(*observations) - before - {local.name}
    assert during, "the poller never saw the upload in progress (under a temporary name)"
    assert len(observations) >= 2  # it looked more than once (few times on a loaded machine)


def test_upload_to_ftp_is_atomic(tmp_path: Path, ftp_server: Any) -> None:
    server = ftp_server
    settings = FeedSettings(target=server.url, username=server.username, password=server.password)
    _upload_while_watching(_big_feed(tmp_path), settings, Path(server.root))


def test_upload_to_sftp_is_atomic(tmp_path: Path, sftp_server: Any) -> None:
    server = sftp_server
    settings = FeedSettings(
        target=server.url,
        username=server.username,
        password=server.password,
        known_hosts=server.known_hosts,
    )
    _upload_while_watching(_big_feed(tmp_path), settings, Path(server.root))
