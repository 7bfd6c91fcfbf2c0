"""Row roles, continuation rows, first-row-only order fields, line-index item ids,
numbers as shops write them, orders without item rows, local dates at DST changes and
the checks made when a mapping loads — end to end through convert()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csvbridge.config import ConvertSettings
from csvbridge.errors import ConfigError, InputError
from csvbridge.fold.engine import convert
from csvbridge.read.mapping import Mapping, parse_mapping


def run(tmp_path: Path, text: str, mapping: dict, *, workers: int = 1, chunk_bytes: int | None = None):
    src = tmp_path / "in.csv"
    src.write_text(text, encoding="utf-8")
    kw = {"chunk_bytes": chunk_bytes} if chunk_bytes else {}
    done = convert(
        src,
        tmp_path / f"work{workers}{chunk_bytes}",
        mapping=parse_mapping(mapping, "test"),
        settings=ConvertSettings(workers=workers),
        **kw,
    )
    objs = {o["id"]: o for o in map(json.loads, done.ndjson.read_bytes().splitlines())}
    return objs, done.report


BASE = {
    "id": "Order",
    "user.email": "Email",
    "type": {"value": "online"},
    "status": {"column": "Status", "map": {"paid": "delivered", "refunded": "canceled"}, "default": "pending"},
    "created": {"column": "Date", "date": "%Y-%m-%d %H:%M:%S %z"},
    "currency": "Currency",
    "final_amount": {"expr": "dec(c['Total']) - dec(c['Refunded'])"},
    "conversion_items.id": {"line_index": True},
    "conversion_items.original_quantity": "Qty",
    "conversion_items.price": {"column": "Price", "number": True},
    "conversion_items.product.id": "Sku",
    "conversion_items.product.name": "Item",
}
HEAD = "Order,Email,Status,Date,Currency,Total,Refunded,Qty,Price,Sku,Item\n"
# Shopify-like: order fields on the first row only; a tip line; the same SKU twice
SHOPIFY_LIKE = HEAD + (
    "#1,a@x.org,paid,2025-10-07 09:50:26 +0200,EUR,120.00,20.00,1,50.00,TEE,Tee\n"
    "#1,,,,,,,1,50.00,TEE,Tee\n"
    "#1,,,,,,,1,5.00,,Tip\n"
    "#2,b@x.org,refunded,2025-10-08 10:00:00 +0200,EUR,30.00,30.00,2,15.00,CAP,Cap\n"
)
ROWS = {
    "order_fields_when": "Total",
    "roles": [{"skip": "tip line", "when": "c['Item'] == 'Tip' and not c['Sku']"}],
}


def test_first_row_only_order_fields_tip_skipped_and_line_index(tmp_path):
    objs, report = run(tmp_path, SHOPIFY_LIKE, {"rows": ROWS, "fields": BASE})
    one = objs["#1"]
    assert one["final_amount"] == 100  # 120.00 - 20.00
    assert one["status"] == "delivered" and one["type"] == "online"  # no false conflict
    assert [(i["id"], i["product"]["id"], i["price"]) for i in one["conversion_items"]] == [
        ("1", "TEE", 50),
        ("2", "TEE", 50),
    ]  # two lines of one SKU stay two items; the tip is not an item
    assert objs["#2"]["status"] == "canceled" and objs["#2"]["final_amount"] == 0
    assert report.objects_valid == 2 and report.objects_rejected == 0
    assert report.rows_skipped == 1 and report.accounted
    skipped = [w for w in report.problems.warnings if w["code"] == "ROW_SKIPPED"]
    assert skipped == [
        {
            "code": "ROW_SKIPPED",
            "detail": "row skipped: tip line",
            "meta": {"line_numbers": [4], "error_count": 1, "ids": []},
        }
    ]


def test_defaults_and_fallthrough_constants_on_blank_rows_do_not_conflict(tmp_path):
    """Without order_fields_when, the status default ('pending') and a fallthrough to a
    constant would fill blank continuation rows and disagree with the first row's
    value; they apply once per order instead, only when no row has a value."""
    fields = {
        **BASE,
        "payment_method": [
            {"column": "Status", "map": {"paid": "card"}, "fallthrough": True},
            {"value": "other"},
        ],
    }
    rows = {"roles": ROWS["roles"]}
    objs, report = run(tmp_path, SHOPIFY_LIKE, {"rows": rows, "fields": fields})
    assert not report.problems.errors
    assert objs["#1"]["status"] == "delivered" and objs["#1"]["payment_method"] == "card"
    assert objs["#2"]["payment_method"] == "other"
    single = HEAD + "#3,c@x.org,,2025-10-07 09:50:26 +0200,EUR,1,0,1,1,S,S\n"
    objs, _ = run(tmp_path, single, {"rows": rows, "fields": fields})
    assert objs["#3"]["status"] == "pending" and objs["#3"]["payment_method"] == "other"


def test_order_only_rows_merge_into_their_order(tmp_path):
    text = HEAD + (
        "#1,a@x.org,paid,2025-10-07 09:50:26 +0200,EUR,90.00,0,1,100.00,TEE,Tee\n"
        "#1,,,,,,,,,,Coupon WELCOME10\n"
    )
    fields = {**BASE, "discount_amount": {"expr": "10 if 'Coupon' in c['Item'] else ''"}}
    rows = {"roles": [{"order": True, "when": "c['Item'].startswith('Coupon')"}]}
    objs, report = run(tmp_path, text, {"rows": rows, "fields": fields})
    one = objs["#1"]
    assert one["discount_amount"] == 10
    assert len(one["conversion_items"]) == 1 and report.rows_converted == 2 and report.accounted


# continuation rows: the order key and the order fields on the first row only
CONT_HEAD = "Order,Email,Date,Total,Qty,Price,Sku\n"
CONT_MAPPING = {
    "rows": {"fill_down": True},
    "fields": {
        "id": "Order",
        "user.email": "Email",
        "type": {"value": "online"},
        "status": {"value": "delivered"},
        "currency": {"value": "EUR"},
        "created": {"column": "Date", "date": "%d.%m.%Y %H:%M"},
        "final_amount": {"column": "Total", "number": "de_DE"},
        "conversion_items.id": {"line_index": True},
        "conversion_items.original_quantity": "Qty",
        "conversion_items.price": {"column": "Price", "number": "de_DE"},
        "conversion_items.product.id": "Sku",
    },
    "options": {"timezone": "Europe/Berlin"},
}


def continuation_file(orders: int) -> str:
    lines = [CONT_HEAD]
    for n in range(1, orders + 1):
        lines.append(f"W{n},k{n}@x.de,07.10.2025 09:50,\"1.234,50\",1,\"1.000,00\",A{n}\n")
        lines.append(",,,,2,\"117,25\",B\n")
        lines.append(",,,,1,\"0,00\",C\n")
    return "".join(lines)


def test_continuation_rows_fill_down(tmp_path):
    objs, report = run(tmp_path, continuation_file(2), CONT_MAPPING)
    w1 = objs["W1"]
    assert w1["final_amount"] == 1234.5
    assert w1["created"] == "2025-10-07T09:50:00.000+02:00"
    assert [(i["id"], i["product"]["id"], i["price"]) for i in w1["conversion_items"]] == [
        ("1", "A1", 1000),
        ("2", "B", 117.25),
        ("3", "C", 0),
    ]
    assert report.objects_valid == 2 and report.rows_converted == 6 and report.accounted


@pytest.mark.parametrize("workers", [1, 2])
def test_fill_down_across_chunk_boundaries_gives_the_same_orders(tmp_path, workers):
    text = continuation_file(400)
    whole, _ = run(tmp_path, text, CONT_MAPPING)
    chunked, report = run(tmp_path, text, CONT_MAPPING, workers=workers, chunk_bytes=700)
    assert chunked == whole and len(whole) == 400
    assert report.rows_converted == 1200 and report.accounted


def test_a_row_without_order_key_and_no_fill_down_stops_the_file_once(tmp_path):
    mapping = {**CONT_MAPPING, "rows": {}}
    with pytest.raises(InputError) as exc:
        run(tmp_path, continuation_file(3), mapping)
    text = str(exc.value)
    assert "line 3: the row has no order key (Order)" in text and "rows.fill_down: true" in text


def test_unreadable_number_names_column_line_and_value(tmp_path):
    text = CONT_HEAD + "W1,k@x.de,07.10.2025 09:50,\"1,234.50\",1,\"1,00\",A\n"
    objs, report = run(tmp_path, text, CONT_MAPPING)
    assert objs == {}
    (err,) = report.problems.errors
    assert err["code"] == "INVALID_NUMBER" and err["meta"]["column"] == "Total"
    assert err["meta"]["line_numbers"] == [2] and err["meta"]["values"] == ["1,234.50"]


def test_orders_without_item_rows_are_refused_with_one_message(tmp_path):
    fields = {k: v for k, v in BASE.items() if not k.startswith("conversion_items.")}
    with pytest.raises(InputError, match="one row per order and no item rows.*synthetic_item"):
        run(tmp_path, SHOPIFY_LIKE, {"fields": fields})


def test_a_declared_synthetic_item_makes_one_item_per_order(tmp_path):
    fields = {k: v for k, v in BASE.items() if not k.startswith("conversion_items.")}
    item = {
        "id": {"value": "order"},
        "product.id": {"value": "ORDER"},
        "original_quantity": {"value": "1"},
        "price": {"expr": "dec(c['Total'])"},
    }
    text = HEAD + "#9,a@x.org,paid,2025-10-07 09:50:26 +0200,EUR,120.00,0,,,,\n"
    objs, report = run(tmp_path, text, {"fields": fields, "synthetic_item": item})
    assert objs["#9"]["conversion_items"] == [
        {"id": "order", "original_quantity": 1, "price": 120, "product": {"id": "ORDER"}}
    ]
    with pytest.raises(ConfigError, match="synthetic_item declares"):
        parse_mapping({"fields": BASE, "synthetic_item": item}, "m")


@pytest.mark.parametrize(
    ("local", "code", "iso", "said"),
    [
        ("30.03.2025 02:30", "DST_GAP", "2025-03-30T02:30:00.000+01:00", "does not exist in Europe/Berlin"),
        ("26.10.2025 02:30", "DST_AMBIGUOUS", "2025-10-26T02:30:00.000+02:00", "took the first, +02:00, not +01:00"),
    ],
)
def test_local_times_at_dst_changes_are_flagged_with_their_line(tmp_path, local, code, iso, said):
    text = CONT_HEAD + f"W1,k@x.de,{local},\"10,00\",1,\"10,00\",A\n"
    objs, report = run(tmp_path, text, CONT_MAPPING)
    assert objs["W1"]["created"] == iso
    (w,) = [w for w in report.problems.warnings if w["code"] == code]
    assert said in w["detail"] and w["meta"]["line_numbers"] == [2]
    assert w["meta"]["property"] == "created" and w["meta"]["values"] == [local]


def test_an_ordinary_local_time_is_not_flagged(tmp_path):
    text = CONT_HEAD + "W1,k@x.de,01.07.2025 12:00,\"10,00\",1,\"10,00\",A\n"
    objs, report = run(tmp_path, text, CONT_MAPPING)
    assert objs["W1"]["created"] == "2025-07-01T12:00:00.000+02:00"
    assert not report.problems.warnings


# ------------------------------------------------------------------ checked at load


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"billing_adress.locality": "City"}, "billing_adress.locality' — did you mean billing_address.locality?"),
        ({"curency": "Currency"}, "unknown target 'curency' — did you mean currency?"),
        ({"status": {"column": "S", "map": {"x": "shiped"}}}, "'shiped' is not one of .* did you mean shipped?"),
        ({"payment_method": {"value": "credit_card"}}, "'credit_card' is not one of"),
        ({"conversion_items.prodcut.id": "Sku"}, "did you mean conversion_items.product.id?"),
    ],
)
def test_mapping_checked_at_load_with_suggestions(fields, message):
    with pytest.raises(ConfigError, match=message):
        parse_mapping({"fields": fields}, "m")


def test_misspelt_column_is_named_as_such(tmp_path):
    fields = {**BASE, "currency": "Currancy"}
    with pytest.raises(InputError, match="column 'Currancy' .* did you mean Currency"):
        run(tmp_path, SHOPIFY_LIKE, {"fields": fields})


def test_bad_locale_and_zone_are_config_errors():
    with pytest.raises(ConfigError, match="unknown locale"):
        parse_mapping({"options": {"locale": "xx_QQ"}, "fields": {}}, "m")
    with pytest.raises(ConfigError, match="unknown time zone"):
        parse_mapping({"options": {"timezone": "Europe/Pariss"}, "fields": {}}, "m")


def test_custom_and_user_paths_are_known():
    m = parse_mapping({"fields": {"custom.anything": "X", "user.loyalty_id": "Y"}}, "m")
    assert isinstance(m, Mapping)


@pytest.mark.parametrize(
    ("text", "how", "expected"),
    [
        ("2025-10-07 09:50:26 +0200", "%Y-%m-%d %H:%M:%S %z", "2025-10-07T09:50:26.000+02:00"),
        ("2025-11-05 10:59:12 -0500", "%Y-%m-%d %H:%M:%S %z", "2025-11-05T10:59:12.000-05:00"),
        ("2025-07-01 12:00:00", "%Y-%m-%d %H:%M:%S", "2025-07-01T12:00:00.000+02:00"),
        ("2025-10-07 09:50:26", "%Y-%m-%d %H:%M:%S %z", None),  # the format wants an offset
        ("2025-10-07 09:50:26 +0200", "%Y-%m-%d %H:%M:%S", None),  # and this one none
        ("2025-02-30 09:50:26 +0200", "%Y-%m-%d %H:%M:%S %z", None),
    ],
)
def test_the_fast_date_path_reads_exactly_what_strptime_reads(text, how, expected):
    from zoneinfo import ZoneInfo

    from csvbridge.read.mapping import convert_date
    from csvbridge.schema.codecs import CellError

    if expected is None:
        with pytest.raises(CellError, match="does not match the date format"):
            convert_date(text, how, ZoneInfo("Europe/Paris"))
    else:
        assert convert_date(text, how, ZoneInfo("Europe/Paris")) == expected


def test_a_products_export_row_without_id_is_rejected_alone(tmp_path):
    """The file-shape stop is for orders; a product row without id is one rejected row."""
    src = tmp_path / "p.csv"
    src.write_text("Sku,Title\nA1,Tee\n,Cap\nB2,Mug\n", encoding="utf-8")
    done = convert(
        src,
        tmp_path / "w",
        kind="products",
        mapping=parse_mapping({"fields": {"id": "Sku", "name": "Title"}}, "m"),
        settings=ConvertSettings(workers=1),
    )
    assert done.report.objects_valid == 2 and done.report.rows_rejected == 1 and done.report.accounted
