"""The mapping workbench (`csvbridge mapping check`) and `csvbridge mapping show`."""

from __future__ import annotations

from pathlib import Path

import yaml

from csvbridge.cli import main
from csvbridge.read.mapping import preset_text
from csvbridge.read.mapping.check import check_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SHOPIFY = FIXTURES / "presets" / "shopify_orders_export.csv"


def test_check_shows_how_each_field_was_filled():
    bench = check_file(SHOPIFY, preset="shopify", orders=2)
    assert bench.ok and [o.id for o in bench.orders] == ["#1001", "#1002"]
    first = {f.path: f for f in bench.orders[0].fields}
    assert first["final_amount"].value == 117.23
    assert first["final_amount"].rule == "=dec(c['Total']) - dec(c['Refunded Amount'])"
    assert first["billing_address.region"].value is None  # empty: left out
    assert bench.orders[0].lines == (2, 3) and bench.orders[1].lines == (4,)
    item = {f.path: f.value for f in bench.orders[0].items[0]}
    assert item["conversion_items.price"] == 31.41
    assert "Subtotal" in bench.unmapped_columns and "Total" not in bench.unmapped_columns
    assert "Lineitem name" not in bench.unmapped_columns  # read by a role
    assert bench.counts["rows_skipped"] == 1


def test_check_lists_unfilled_recommended_fields_and_the_errors(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text(
        yaml.safe_dump(
            {
                "fields": {
                    "id": "Name",
                    "user.email": "Email",
                    "type": {"value": "online"},
                    "status": {"column": "Financial Status", "map": {"paid": "delivered"}},
                    "created": {"column": "Created at", "date": "%Y-%m-%d %H:%M:%S %z"},
                    "currency": "Currency",
                    "conversion_items.id": {"line_index": True},
                    "conversion_items.original_quantity": "Lineitem quantity",
                    "conversion_items.product.id": "Lineitem sku",
                }
            }
        ),
        encoding="utf-8",
    )
    bench = check_file(SHOPIFY, mapping=m, orders=5)
    assert "final_amount (not mapped)" in bench.unfilled
    assert "conversion_items.price (not mapped)" in bench.unfilled
    codes = {e["code"] for e in bench.errors}
    assert "UNMAPPED_VALUE" in codes  # partially_refunded, refunded are not in the map
    assert not bench.ok
    text = bench.as_text()
    assert "error UNMAPPED_VALUE" in text and "recommended fields left unfilled" in text


def test_cli_mapping_check_and_show(tmp_path, capsys):
    assert main(["mapping", "check", str(SHOPIFY), "--preset", "shopify", "--orders", "1", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "order #1001 (lines 2, 3)" in out and "order #1002" not in out
    assert "warning ROW_SKIPPED: row skipped: tip line" in out
    assert main(["mapping", "show", "woocommerce"]) == 0
    shown = capsys.readouterr().out
    assert shown == preset_text("woocommerce")
    # what `show` writes is a mapping: edit it and use it
    edited = tmp_path / "shop.yaml"
    edited.write_text(shown + "\n", encoding="utf-8")
    assert main(["mapping", "check", str(SHOPIFY), "--mapping", str(edited), "--workers", "1"]) == 2
    assert "not in the file's header" in capsys.readouterr().err


def test_cli_unknown_preset_is_a_usage_error(capsys):
    assert main(["mapping", "show", "shopfy"]) == 2
    assert "did you mean shopify" in capsys.readouterr().err
