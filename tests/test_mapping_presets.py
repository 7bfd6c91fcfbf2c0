"""The shipped presets, end to end on sample exports made as each platform makes them:
amounts, statuses, items and dates of specific orders against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csvbridge.config import ConvertSettings
from csvbridge.errors import ConfigError
from csvbridge.fold.engine import convert
from csvbridge.read.mapping import (
    load_mapping,
    load_preset,
    parse_mapping,
    preset_names,
    preset_text,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def run(tmp_path: Path, name: str, mapping=None, **settings):
    done = convert(
        FIXTURES / "presets" / name,
        tmp_path / "work",
        mapping=parse_mapping(mapping, "test") if isinstance(mapping, dict) else mapping,
        settings=ConvertSettings(workers=1, **settings),
    )
    objs = {o["id"]: o for o in map(json.loads, done.ndjson.read_bytes().splitlines())}
    return objs, done.report


def test_every_platform_has_a_preset():
    assert set(preset_names()) >= {"shopify", "woocommerce", "magento", "prestashop", "commercehq"}
    for name in preset_names():
        assert load_preset(name).targets()
        assert "Source" in preset_text(name) or "Sources" in preset_text(name)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="no preset named 'shopfy' — did you mean shopify"):
        load_preset("shopfy")
    assert load_preset("Adobe Commerce").targets() == load_preset("magento").targets()


def test_shopify(tmp_path):
    objs, report = run(tmp_path, "shopify_orders_export.csv", preset="shopify")
    assert report.objects_valid == 4 and report.objects_rejected == 0 and report.accounted
    assert report.rows_read == 7 and report.rows_converted == 6 and report.rows_skipped == 1
    (skip,) = report.problems.warnings
    assert skip["detail"] == "row skipped: tip line" and skip["meta"]["line_numbers"] == [5]
    o = objs["#1001"]
    assert o["status"] == "shipped" and o["currency"] == "EUR"
    assert o["created"] == "2025-10-07T09:50:26.000+02:00"
    assert (o["original_amount"], o["final_amount"], o["discount_amount"]) == (117.23, 117.23, 12.37)
    assert o["user"] == {"email": "sophie.gallas@example.com"}
    assert o["shipping_address"]["street_address"] == "13-15 rue de Berri, 3e étage"
    assert o["billing_address"]["postal_code"] == "75008"  # '75008 in the export
    # 3 x 34.90 - 10.47 line discount = 94.23 -> 31.41 each; 19.00 - 1.90 = 17.10
    assert [(i["id"], i["product"]["id"], i["original_quantity"], i["price"], i["final_amount"]) for i in o["conversion_items"]] == [
        ("1", "MBC-50", 3, 31.41, 94.23),
        ("2", "SER-30", 1, 17.1, 17.1),
    ]
    o = objs["#1002"]  # partially refunded: 58.90 - 10.00; the tip is no item
    assert (o["status"], o["final_amount"], len(o["conversion_items"])) == ("partially_returned", 48.9, 1)
    assert o["payment_method"] == "online_payment_system"
    o = objs["#1003"]  # refunded and cancelled before shipping
    assert (o["status"], o["original_amount"], o["final_amount"]) == ("canceled", 12.9, 0)
    o = objs["#1004"]  # one SKU on two lines stays two items
    assert [i["id"] for i in o["conversion_items"]] == ["1", "2"]
    assert (o["status"], o["currency"], o["payment_method"]) == ("pending_shipment", "USD", "other")
    assert o["billing_address"]["postal_code"] == "01002"
    assert o["created"] == "2025-11-05T10:59:12.000-05:00"


def test_woocommerce(tmp_path):
    objs, report = run(
        tmp_path, "woocommerce_orders.csv", {"base": "woocommerce", "options": {"timezone": "Europe/Paris"}}
    )
    assert report.objects_valid == 4 and report.accounted and not report.problems.errors
    o = objs["1001"]
    assert (o["status"], o["original_amount"], o["final_amount"], o["discount_amount"]) == ("shipped", 95, 95, 10)
    assert [(i["id"], i["product"]["id"], i["price"]) for i in o["conversion_items"]] == [
        ("31", "HD-GRY-L", 36),  # 72.00 after the coupon / 2
        ("32", "CAP", 18),
    ]
    assert o["custom"] == {"coupon": "SPRING10"}
    # 02:30 on 2025-03-30 does not exist in Paris: +01:00 taken, flagged on its lines
    assert o["created"] == "2025-03-30T02:30:00.000+01:00"
    warn = {w["code"]: w for w in report.problems.warnings}
    assert warn["DST_GAP"]["meta"]["line_numbers"] == [2, 3]
    assert "+01:00" in warn["DST_GAP"]["detail"] and "03:30 after the change" in warn["DST_GAP"]["detail"]
    o = objs["1002"]  # one of two caps refunded: 41.00 - 18.00
    assert (o["status"], o["final_amount"], o["returned_amount"]) == ("partially_returned", 23, 18)
    (item,) = o["conversion_items"]
    assert (item["returned_quantity"], item["returned_amount"], item["final_amount"]) == (1, 18, 18)
    assert o["created"] == "2025-10-26T02:30:00.000+02:00"
    assert warn["DST_AMBIGUOUS"]["meta"]["line_numbers"] == [4]
    assert objs["1003"]["status"] == "pending_shipment"
    assert objs["1003"]["conversion_items"][0]["product"]["id"] == "95"  # no SKU: product id
    assert (objs["1004"]["status"], objs["1004"]["final_amount"]) == ("canceled", 0)


def test_woocommerce_without_a_zone_rejects_rather_than_guesses(tmp_path):
    objs, report = run(tmp_path, "woocommerce_orders.csv", preset="woocommerce")
    assert objs == {} and report.objects_rejected == 4
    assert "set options.timezone" in report.problems.errors[0]["detail"]


def test_magento_order_grid_with_its_synthetic_item(tmp_path):
    objs, report = run(
        tmp_path, "magento_sales_order_grid.csv", {"base": "magento", "options": {"timezone": "America/New_York"}}
    )
    assert report.objects_valid == 3 and report.accounted and not report.problems.errors
    o = objs["000000101"]
    assert (o["status"], o["currency"], o["original_amount"], o["final_amount"]) == ("shipped", "USD", 1234.5, 1234.5)
    assert o["created"] == "2025-10-07T09:50:26.000-04:00"
    assert o["conversion_items"] == [
        {"id": "order", "original_quantity": 1, "price": 1234.5, "product": {"id": "ORDER", "name": "Order total"}}
    ]
    assert o["custom"]["purchase_point"] == "Main Website / Main Website Store / Default Store View"
    o = objs["000000102"]  # Closed = refunded by credit memo
    assert (o["status"], o["final_amount"], o["returned_amount"]) == ("canceled", 0, 89)
    assert o["user"]["email"] == "john.smith@example.com"
    assert o["created"] == "2025-11-02T01:30:00.000-04:00"  # 1:30 AM happened twice
    (w,) = report.problems.warnings
    assert w["code"] == "DST_AMBIGUOUS" and w["meta"]["line_numbers"] == [5]
    assert objs["000000103"]["created"] == "2025-11-03T16:05:00.000-05:00"


def test_prestashop_french_amounts(tmp_path):
    mapping = {"base": "prestashop", "options": {"timezone": "Europe/Paris", "locale": "fr_FR"}}
    objs, report = run(tmp_path, "prestashop_orders.csv", mapping)
    assert report.objects_valid == 3 and report.accounted and not report.problems.errors
    assert objs["XKBKNABJK"]["original_amount"] == 53.91 and objs["XKBKNABJK"]["status"] == "delivered"
    o = objs["OHSATSERP"]  # "1 234,50 €" with a narrow no-break space
    assert (o["original_amount"], o["status"], o["currency"]) == (1234.5, "pending", "EUR")
    assert o["payment_method"] == "by_bank_transfer_in_advance"
    o = objs["FFATNOMMJ"]
    assert (o["status"], o["original_amount"], o["final_amount"]) == ("canceled", 19.9, 0)
    assert o["created"] == "2025-11-04T18:12:00.000+01:00"


def test_prestashop_amounts_in_the_wrong_locale_are_errors_naming_the_value(tmp_path):
    objs, report = run(tmp_path, "prestashop_orders.csv", {"base": "prestashop", "options": {"timezone": "Europe/Paris"}})
    assert objs == {}
    err = next(e for e in report.problems.errors if e["code"] == "INVALID_NUMBER")
    assert err["meta"]["column"] == "Total" and "53,91" in err["meta"]["values"][0]


def test_commercehq_preset_and_the_old_path(tmp_path):
    old = load_mapping(FIXTURES / "commercehq" / "mapping.yaml")
    assert old.targets() == load_preset("commercehq").targets()
    done = convert(FIXTURES / "commercehq" / "orders.csv", tmp_path, settings=ConvertSettings(workers=1, preset="commercehq"))
    assert done.report.objects_valid == 25 and done.report.accounted
    o = next(json.loads(x) for x in done.ndjson.read_bytes().splitlines() if json.loads(x)["id"] == "4050")
    assert o["final_amount"] == 99.87 and o["created"] == "2024-06-02T06:23:22.000Z"


def test_a_mapping_built_on_a_preset_overrides_fields():
    m = parse_mapping({"base": "shopify", "fields": {"type": {"value": "pos"}}}, "m")
    assert m.fields["type"][0].value == "pos" and "final_amount" in m.fields
