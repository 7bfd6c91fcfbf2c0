"""The product catalog both ways, and the feed route end to end (issue 5)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from csvbridge.cli import main
from csvbridge.config import FeedSettings, Settings
from csvbridge.fold.engine import convert_file
from csvbridge.pipeline import send_file
from csvbridge.schema.models import PRODUCT_HEADER, TEMPLATE_HEADER, Conversion, Product
from tests.plugins.api import settings_for

ROOT = Path(__file__).resolve().parent.parent
PRODUCTS = ROOT / "fixtures" / "products.csv"
DEMO = ROOT / "csvbridge" / "data" / "demo" / "orders-2026-11-21.csv"
# a copy of shared/reference/commandersact-conversions-csv-template.csv, kept in the repo so
# the round trip runs everywhere (it was always skipped outside the lead's machine)
TEMPLATE = ROOT / "fixtures" / "commandersact-conversions-csv-template.csv"


def _ndjson(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_products_csv_validates_against_the_product_model(tmp_path: Path) -> None:
    out = tmp_path / "products.ndjson"
    report = convert_file(PRODUCTS, out, kind="products")
    objects = _ndjson(out)
    assert report.objects_valid == len(objects) == 5
    for obj in objects:
        Product.model_validate(obj)  # every emitted product passes the pydantic model
    shirt = next(o for o in objects if o["id"] == "SKU-0002")
    assert shirt["gtin"] == "03000000000024"  # leading zero kept: never a number
    assert shirt["description"].endswith("\nMachine washable.")
    assert shirt["custom"] == {"warehouse": "building B"}
    assert shirt["tags"] == ["cotton", "eco"]


def test_products_ship_to_products_bulk(emulator, tmp_path: Path) -> None:
    emu = emulator()
    settings = Settings(api=settings_for(emu))
    outcome = send_file(PRODUCTS, settings, kind="products", sinks=["api"])
    assert outcome.state == "done"
    assert outcome.report.objects_shipped == 5
    assert set(emu.store["products"]) == {f"SKU-{i:04d}" for i in range(1, 6)}
    assert emu.stats.accepted.get("conversions", 0) == 0


def test_products_from_conversions_are_distinct(tmp_path: Path) -> None:
    out = tmp_path / "catalog.ndjson"
    report = convert_file(DEMO, out, products_from_conversions=True)
    products = _ndjson(out)
    ids = [p["id"] for p in products]
    assert len(ids) == len(set(ids)) > 1
    with open(DEMO, encoding="utf-8", newline="") as f:
        expected = {row["conversion_items.product.id"] for row in csv.DictReader(f)}
    assert set(ids) == expected
    assert report.accounted
    assert report.rows_converted + report.rows_skipped == report.rows_read


def test_catalog_feed_has_the_product_header(tmp_path: Path) -> None:
    out = tmp_path / "catalog.csv"
    assert (
        main(["convert", str(PRODUCTS), "--kind", "products", "--to", "feed", "-o", str(out), "-q"])
        == 0
    )
    header = next(csv.reader(out.open(encoding="utf-8")))
    assert header[: len(PRODUCT_HEADER)] == list(PRODUCT_HEADER)
    assert header[len(PRODUCT_HEADER) :] == ["custom.warehouse"]


def test_feed_convert_feed_round_trip_is_byte_identical(tmp_path: Path) -> None:
    first = tmp_path / "feed1.csv"
    second = tmp_path / "feed2.csv"
    main(["convert", str(DEMO), "--to", "feed", "-o", str(first), "-q"])
    assert main(["convert", str(first), "--to", "feed", "-o", str(second), "-q"]) == 0
    assert first.read_bytes() == second.read_bytes()
    header = next(csv.reader(first.open(encoding="utf-8")))
    assert header == list(TEMPLATE_HEADER)


def test_official_template_round_trips_through_ndjson_and_feed(tmp_path: Path) -> None:
    nd1, feed, nd2 = tmp_path / "a.ndjson", tmp_path / "feed.csv", tmp_path / "b.ndjson"
    main(["convert", str(TEMPLATE), "--conflict", "first", "-o", str(nd1), "-q"])
    main(["convert", str(TEMPLATE), "--conflict", "first", "--to", "feed", "-o", str(feed), "-q"])
    assert main(["convert", str(feed), "-o", str(nd2), "-q"]) == 0
    assert _ndjson(nd1) == _ndjson(nd2)
    for obj in _ndjson(nd2):
        Conversion.model_validate(obj)
    header = next(csv.reader(feed.open(encoding="utf-8")))
    assert header == list(TEMPLATE_HEADER)


def test_send_to_a_feed_sink_uploads_atomically_to_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "feeds"
    settings = Settings(feed=FeedSettings(target=target.as_uri()))
    outcome = send_file(DEMO, settings, sinks=["feed"])
    files = list(target.iterdir())
    assert len(files) == 1 and files[0].name.startswith("conversions_")
    assert not [f for f in files if f.name.endswith(".part")]
    with files[0].open(encoding="utf-8", newline="") as f:
        ids = {row["id"] for row in csv.DictReader(f)}
    assert len(ids) == outcome.report.objects_valid == outcome.report.objects_shipped
    assert outcome.state == "failed"  # the demo file holds two invalid conversions
    assert outcome.rejects is not None
