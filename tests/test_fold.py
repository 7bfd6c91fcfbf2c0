"""Folding item rows into conversions: nesting, levels, conflicts, items, requirements."""

from __future__ import annotations

import json
import traceback
from typing import Any

import pytest

from csvbridge.errors import InputError
from csvbridge.fold.assemble import Built, CellError, ColumnPlan, normalize_header
from csvbridge.read.csvfile import Row
from csvbridge.schema.codecs import CodecOptions
from csvbridge.schema.models import TEMPLATE_HEADER, Conversion

BASE = {
    "id": "c1",
    "user.email": "user@example.com",
    "type": "online",
    "status": "pending",
    "created": "2019-04-29T13:47:47Z",
    "currency": "EUR",
    "conversion_items.id": "i1",
    "conversion_items.original_quantity": "1",
    "conversion_items.product.id": "p1",
}


def plan_for(header: list[str], **kw: Any) -> ColumnPlan:
    return ColumnPlan([normalize_header(h) for h in header], list(header), **kw)


def fold(rows: list[dict[str, str]], *, header: list[str] | None = None, **kw: Any) -> Built:
    """Build one conversion from rows given as {column: cell} (missing columns empty)."""
    header = header or list(dict.fromkeys(k for r in [BASE, *rows] for k in r))
    plan = plan_for(header, **kw)
    return plan.build([Row(n + 2, [r.get(h, "") for h in header]) for n, r in enumerate(rows)])


def obj(built: Built) -> dict[str, Any]:
    assert built.record is not None, [p.as_text() for p in built.problems]
    return json.loads(built.record.json)


def codes(built: Built) -> list[str]:
    return [p.code for p in built.problems if not p.warning]


# --------------------------------------------------------------------------- nesting


def test_dot_paths_nest_and_item_columns_are_per_row():
    head = {
        **BASE,
        "billing_address.coordinates.latitude": "48.85",
        "billing_address.locality": "Paris",
    }
    built = fold(
        [
            head,
            {
                **head,
                "conversion_items.id": "i2",
                "conversion_items.product.id": "p2",
                "conversion_items.price": "3",
            },
        ]
    )
    o = obj(built)
    assert o["billing_address"] == {"coordinates": {"latitude": 48.85}, "locality": "Paris"}
    assert o["user"] == {"email": "user@example.com"}
    assert o["conversion_items"] == [
        {"id": "i1", "original_quantity": 1, "product": {"id": "p1"}},
        {"id": "i2", "original_quantity": 1, "product": {"id": "p2"}, "price": 3},
    ]
    assert built.record.lines == (2, 3)
    Conversion.model_validate(o)


def test_lists_are_split_on_pipes():
    o = obj(
        fold(
            [
                {
                    **BASE,
                    "conversion_items.product.tags": "mugs|handle",
                    "conversion_items.product.colors": "white|red",
                    "consent_categories": "1|3",
                }
            ]
        )
    )
    product = o["conversion_items"][0]["product"]
    assert product["tags"] == ["mugs", "handle"] and product["colors"] == ["white", "red"]
    assert o["user"]["consent_categories"] == ["1", "3"]  # bare template name -> user.*
    Conversion.model_validate(o)


def test_custom_objects_at_every_level():
    o = obj(
        fold(
            [
                {
                    **BASE,
                    "custom.referer": "newsletter",
                    "conversion_items.custom.gift": "yes",
                    "conversion_items.product.custom.warehouse": "B",
                    "user.user_email": "u@example.com",
                }
            ]
        )
    )
    assert o["custom"] == {"referer": "newsletter"}
    assert o["conversion_items"][0]["custom"] == {"gift": "yes"}
    assert o["conversion_items"][0]["product"]["custom"] == {"warehouse": "B"}
    assert o["user"] == {"email": "user@example.com", "user_email": "u@example.com"}
    Conversion.model_validate(o)


def test_header_matching_ignores_case_and_surrounding_spaces():
    header = [" ID ", "User.Email", "TYPE", " status", "Created ", "currency",
              "Conversion_Items.ID", "conversion_items.Original_Quantity", " conversion_items.product.id "]  # fmt: skip
    plan = plan_for(header)
    built = plan.build([Row(2, [BASE[normalize_header(h)] for h in header])])
    assert obj(built)["id"] == "c1"
    assert normalize_header(" Consent_Categories ") == "user.consent_categories"


def test_bare_custom_object_columns_are_ignored():
    header = [*BASE, "custom", "conversion_items.custom", "conversion_items.product.custom"]
    plan = plan_for(header)
    assert [plan.paths[i] for i, _ in plan.ignored] == header[-3:]
    built = plan.build([Row(2, [*BASE.values(), "a", "b", "c"])])
    assert "custom" not in obj(built)
    Conversion.model_validate(obj(built))


def test_unknown_and_read_only_columns_are_ignored_with_a_reason():
    plan = plan_for([*BASE, "original_quantity", "final_quantity", "colour", ""])
    reasons = {plan.paths[i]: r for i, r in plan.ignored}
    assert "read-only" in reasons["original_quantity"] and "read-only" in reasons["final_quantity"]
    assert "colour" in reasons
    row = Row(2, [*BASE.values(), "3", "1", "red", "x"])
    o = obj(plan.build([row]))
    assert "original_quantity" not in o and "final_quantity" not in o and "colour" not in o


def test_empty_cells_are_omitted_never_empty_or_null():
    header = list(TEMPLATE_HEADER)
    plan = plan_for(header)
    cells = {h: "" for h in header}
    cells.update({normalize_header(k): v for k, v in BASE.items()})
    cells["user.user_email"] = cells.pop("user.email")
    cells["consent_categories"] = ""
    built = plan.build([Row(2, [cells.get(h, "") for h in header])])
    text = built.record.json.decode()
    assert '""' not in text and "null" not in text and "{}" not in text and "[]" not in text
    o = json.loads(text)
    assert "billing_address" not in o and "custom" not in o
    assert o["conversion_items"] == [{"id": "i1", "original_quantity": 1, "product": {"id": "p1"}}]


def test_values_keep_their_text():
    o = obj(
        fold(
            [
                {
                    **BASE,
                    "billing_address.postal_code": "01000",
                    "conversion_items.product.id": "0170301",
                }
            ]
        )
    )
    assert o["billing_address"]["postal_code"] == "01000"
    assert o["conversion_items"][0]["product"]["id"] == "0170301"


# --------------------------------------------------------------------------- conflicts


def rows_with_conflict() -> list[dict[str, str]]:
    return [
        {**BASE, "comment": "leave at door"},
        {**BASE, "comment": "ring twice", "conversion_items.id": "i2"},
        {**BASE, "comment": "leave at door", "conversion_items.id": "i3"},
    ]


def test_conflicting_conversion_values_are_reported_and_rejected_by_default():
    built = fold(rows_with_conflict())
    assert built.record is None
    (p,) = built.problems
    assert p.code == "CONFLICTING_VALUES" and not p.warning
    assert p.property == "comment" and p.column == "comment"
    assert p.lines == (2, 3, 4)
    assert p.value == "leave at door | ring twice"


@pytest.mark.parametrize(("how", "kept"), [("first", "leave at door"), ("last", "leave at door")])
def test_conflict_first_or_last_keeps_one_value(how, kept):
    built = fold(rows_with_conflict(), conflict=how)
    assert obj(built)["comment"] == kept
    assert [p.code for p in built.problems] == ["CONFLICTING_VALUES"]
    assert built.problems[0].warning


def test_conflict_last_takes_the_last_row():
    rows = [{**BASE, "comment": "a"}, {**BASE, "comment": "b", "conversion_items.id": "i2"}]
    assert obj(fold(rows, conflict="last"))["comment"] == "b"
    assert obj(fold(rows, conflict="first"))["comment"] == "a"


def test_item_columns_never_conflict():
    rows = [
        {**BASE, "conversion_items.price": "1"},
        {**BASE, "conversion_items.id": "i2", "conversion_items.price": "2"},
    ]
    assert [i["price"] for i in obj(fold(rows))["conversion_items"]] == [1, 2]


# --------------------------------------------------------------------------- items


def test_duplicate_item_ids_are_rejected_with_both_lines():
    built = fold([BASE, {**BASE, "conversion_items.product.id": "p2"}])
    assert codes(built) == ["DUPLICATE_ITEM_ID"]
    assert built.problems[0].lines == (2, 3)


def items(n: int) -> list[dict[str, str]]:
    return [
        {**BASE, "conversion_items.id": f"i{k}", "conversion_items.product.id": f"p{k}"}
        for k in range(n)
    ]


def test_150_items_are_accepted_151_rejected():
    assert len(obj(fold(items(150)))["conversion_items"]) == 150
    built = fold(items(151))
    assert codes(built) == ["TOO_MANY_ITEMS"]
    assert len(built.problems[0].lines) == 151


def test_item_id_falls_back_to_the_product_id_when_the_column_is_absent():
    header = [h for h in BASE if h != "conversion_items.id"]
    rows = [BASE, {**BASE, "conversion_items.product.id": "p2"}]
    o = obj(fold(rows, header=header))
    assert [(i["id"], i["product"]["id"]) for i in o["conversion_items"]] == [
        ("p1", "p1"),
        ("p2", "p2"),
    ]
    Conversion.model_validate(o)
    # the same product twice then needs item ids
    assert codes(fold([BASE, BASE], header=header)) == ["DUPLICATE_ITEM_ID"]


def test_empty_item_id_is_missing_even_with_a_product_id():
    built = fold([{**BASE, "conversion_items.id": ""}])
    assert codes(built) == ["MISSING_REQUIRED_PROPERTY"]
    assert built.problems[0].property == "conversion_items.id"


# --------------------------------------------------------------------------- requirements


@pytest.mark.parametrize(
    "column",
    ["user.email", "type", "status", "created", "currency", "conversion_items.id",
     "conversion_items.original_quantity", "conversion_items.product.id"],
)  # fmt: skip
def test_missing_required_values_are_reported_with_their_line(column):
    rows = [BASE, {**BASE, "conversion_items.id": "i2", "conversion_items.product.id": "p2"}]
    if column.startswith("conversion_items."):
        rows[1] = {**rows[1], column: ""}  # one item
    else:
        rows = [{**r, column: ""} for r in rows]  # the conversion, on every row
    built = fold(rows)
    assert built.record is None
    (p,) = built.problems
    assert p.code == "MISSING_REQUIRED_PROPERTY"
    assert p.property == ("user" if column == "user.email" else column)
    assert p.lines == ((3,) if column.startswith("conversion_items.") else (2,))
    assert p.id == "c1"


@pytest.mark.parametrize(
    "column",
    ["id", "type", "status", "created", "currency", "user.email",
     "conversion_items.original_quantity", "conversion_items.product.id"],
)  # fmt: skip
def test_missing_required_column_is_an_input_error_naming_it(column):
    with pytest.raises(InputError) as info:
        plan_for([h for h in BASE if h != column])
    assert column.split(" ")[0] in str(info.value)


def test_two_columns_for_one_field_is_an_input_error():
    with pytest.raises(InputError, match="both fill"):
        plan_for([*BASE, "User.Email"])


def test_invalid_cells_are_reported_with_column_line_value_and_id():
    built = fold([{**BASE, "currency": "eur", "conversion_items.price": "cheap"}])
    assert built.record is None
    by_prop = {p.property: p for p in built.problems}
    assert by_prop["currency"].code == "INVALID_PROPERTY_FORMAT"
    assert by_prop["currency"].value == "eur" and by_prop["currency"].lines == (2,)
    assert by_prop["conversion_items.price"].code == "INVALID_PROPERTY_TYPE"
    assert by_prop["conversion_items.price"].id == "c1"


def test_invalid_cells_are_reported_on_every_row():
    rows = [
        {**BASE, "conversion_items.id": f"i{k}", "conversion_items.price": "x"} for k in range(3)
    ]
    built = fold(rows)
    assert [p.lines for p in built.problems] == [(2,), (3,), (4,)]


def test_spreadsheet_damage_warns_by_default_and_rejects_when_strict():
    row = {**BASE, "conversion_items.product.gtin": "1.35E+17"}
    built = fold([row, {**row, "conversion_items.id": "i2"}])
    assert obj(built)["conversion_items"][0]["product"]["gtin"] == "1.35E+17"
    assert [(p.code, p.warning, p.lines) for p in built.problems] == [
        ("SPREADSHEET_DAMAGE", True, (2,)),
        ("SPREADSHEET_DAMAGE", True, (3,)),
    ]
    strict = fold([row], options=CodecOptions(strict=True))
    assert strict.record is None and codes(strict) == ["SPREADSHEET_DAMAGE"]


def test_a_value_column_and_a_column_below_it_never_give_duplicate_keys():
    header = [*BASE, "custom.a.b", "custom.a", "user.email.x"]
    plan = plan_for(header)
    assert sorted(plan.paths[i] for i, _ in plan.ignored) == ["custom.a.b", "user.email.x"]
    built = plan.build([Row(2, [*BASE.values(), "y", "x", "z"])])
    text = built.record.json.decode()
    assert text.count('"a":') == 1
    assert json.loads(text)["custom"] == {"a": "x"}
    assert json.loads(text)["user"] == {"email": "user@example.com"}


# --------------------------------------------------------------------------- empty cells


def test_order_fields_filled_on_the_first_row_only_are_not_a_conflict():
    """Exports that write order fields on an order's first row only (blank after)."""
    first = {**BASE, "comment": "ring twice", "shipping_amount": "4.90"}
    later = {k: "" for k in first} | {
        "id": "c1",
        "conversion_items.id": "i2",
        "conversion_items.original_quantity": "2",
        "conversion_items.product.id": "p2",
    }
    built = fold([first, later])
    o = obj(built)
    assert o["comment"] == "ring twice" and o["shipping_amount"] == 4.90
    assert [i["id"] for i in o["conversion_items"]] == ["i1", "i2"]
    assert not built.problems


def test_a_value_missing_on_the_first_row_is_taken_from_a_later_row():
    first = {**BASE}
    later = {**BASE, "conversion_items.id": "i2", "comment": "from row two"}
    assert obj(fold([first, later]))["comment"] == "from row two"


def test_two_different_values_are_still_a_conflict_when_some_rows_are_blank():
    rows = [
        {**BASE, "comment": "a"},
        {**BASE, "conversion_items.id": "i2", "comment": ""},
        {**BASE, "conversion_items.id": "i3", "comment": "b"},
    ]
    built = fold(rows)
    assert codes(built) == ["CONFLICTING_VALUES"]
    assert obj(fold(rows, conflict="last"))["comment"] == "b"


# --------------------------------------------------------------------------- one schema source


def _variant_plan(model: type, header: list[str]) -> ColumnPlan:
    from csvbridge.schema.structure import structure_of

    return plan_for(header, structure=structure_of(model, "conversions"))


def _row_code_and_codec(plan: ColumnPlan, path: str) -> tuple[str, Any]:
    col = plan.column_of[path]
    return plan.generated, plan.codecs[col].codec


def test_a_changed_length_in_the_model_changes_codec_and_inline_check():
    """One edit in schema/ (a maxLength) and both the codec and the row code's inline
    check follow; the pydantic model agrees with the fold."""
    from csvbridge.schema.models import text_field

    class ShortComment(Conversion):
        comment: text_field(1, 10) | None = None

    header = [*BASE, "comment"]
    plan = _variant_plan(ShortComment, header)
    code, codec = _row_code_and_codec(plan, "comment")
    assert "len(v) <= 10" in code
    assert codec("x" * 10) == b'"' + b"x" * 10 + b'"'
    for text, ok in (("x" * 10, True), ("x" * 11, False)):
        built = plan.build([Row(2, [*BASE.values(), text])])
        assert (built.record is not None) is ok, codes(built)
        if ok:
            ShortComment.model_validate(obj(built))
        else:
            assert codes(built) == ["INVALID_PROPERTY_FORMAT"]
    # the documented model still allows 250
    assert plan_for(header).build([Row(2, [*BASE.values(), "x" * 11])]).record is not None


def test_a_changed_requirement_enum_bound_and_item_limit_follow_the_model():
    from typing import Annotated

    from pydantic import Field

    from csvbridge.schema.models import (
        ConversionItem,
        Text250,
        UniqueBy,
        enum_field,
        number_field,
    )

    class PricedItem(ConversionItem):
        price: number_field(ge=0) | None = None

    class Strict(Conversion):
        comment: Text250  # now required
        status: enum_field("pending", "on_hold")
        conversion_items: Annotated[
            list[PricedItem], Field(min_length=1, max_length=3), UniqueBy("id")
        ]

    with pytest.raises(InputError, match="required column missing: comment"):
        _variant_plan(Strict, list(BASE))
    header = [*BASE, "comment", "conversion_items.price"]
    plan = _variant_plan(Strict, header)
    code, codec = _row_code_and_codec(plan, "conversion_items.price")
    assert "PLAIN_NUMBER(v) and float(v) >= 0" in code

    def row(n: int, **cells: str) -> Row:
        values = {**BASE, "comment": "hi", "conversion_items.price": "1", **cells}
        return Row(n, [values[h] for h in header])

    good = plan.build([row(2, status="on_hold")])
    Strict.model_validate(obj(good))
    assert codes(plan.build([row(2, status="shipped")])) == ["INVALID_PROPERTY_FORMAT"]
    assert codes(plan.build([row(2, comment="")])) == ["MISSING_REQUIRED_PROPERTY"]
    assert plan.build([row(2, comment="")]).problems[0].property == "comment"
    bad = plan.build([row(2, **{"conversion_items.price": "-1"})])
    assert codes(bad) == ["INVALID_PROPERTY_FORMAT"] and bad.problems[0].value == "-1"
    assert codec("0.5") == b"0.5"
    with pytest.raises(CellError):
        codec("-1.5")
    four = [row(n, **{"conversion_items.id": f"i{n}"}) for n in range(2, 6)]
    assert codes(plan.build(four)) == ["TOO_MANY_ITEMS"]
    assert plan.build(four[:3]).record is not None
    # the documented models still say 150 items, any status of the list, no bound
    assert plan_for(header).build(four).record is not None


# --------------------------------------------------------------------------- generated code


def test_a_traceback_through_generated_code_shows_its_source_line():
    header = ["id", "type", "status", "created", "currency", "user.email",
              "conversion_items.id", "conversion_items.original_quantity",
              "conversion_items.product.id"]  # fmt: skip
    plan = plan_for(header)
    with pytest.raises(IndexError) as info:
        plan.head_fn(["c1"], [])  # a row cut short: c[1] does not exist
    frame = info.traceback[-1]
    assert str(frame.path).startswith("<csvbridge plan _head")
    assert "v = c[1]  # type <- 'type'" in traceback.format_exception(info.value)[-2]


def test_generated_code_names_each_field_and_can_be_dumped(tmp_path, capsys):
    from csvbridge.cli import main
    from csvbridge.fold.codegen import generated_source

    source = generated_source(list(TEMPLATE_HEADER))
    compile(source, "<dump>", "exec")  # the dump is the whole, valid code
    for name in ("def _head(", "def _item(", "def _lane_item("):
        assert name in source
    assert "# conversion_items.price <- 'conversion_items.price'" in source
    assert "# billing_address: an object" in source
    csv_file = tmp_path / "orders.csv"
    csv_file.write_text(";".join(TEMPLATE_HEADER) + "\n")
    assert main(["debug", "codegen", str(csv_file)]) == 0
    out = capsys.readouterr().out
    assert "q = g.split(';')" in out  # compiled for the file's own delimiter
    assert out.replace("';'", "','") == source


def test_a_header_cell_cannot_inject_code_through_a_comment():
    header = [*BASE, "custom.x\nimport os; os._exit(3)"]
    plan = plan_for(header)
    assert "\nimport os" not in plan.generated
    built = plan.build([Row(2, [*BASE.values(), "v"])])
    assert obj(built)["custom"] == {"x\nimport os; os": {"_exit(3)": "v"}}


# --------------------------------------------------------------------------- hostile cells


def test_a_nul_byte_rejects_the_conversion_naming_column_line_and_value():
    built = fold([{**BASE, "comment": "x\x00y"}, {**BASE, "conversion_items.id": "i2"}])
    assert codes(built) == ["NUL_BYTE"]
    (p,) = built.problems
    assert (p.column, p.lines, p.value, p.property) == ("comment", (2,), "x\x00y", "comment")
    assert "line 2; column 'comment'; value 'x\\x00y'" in p.as_text()


def _write_csv(path, header: list[str], rows: list[list[str]]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_a_nul_byte_deep_in_a_file_is_rejected_on_both_lanes(tmp_path):
    """After the first 4 KB (the binary sniff), through the engine and the fast lane."""
    from csvbridge.config import ConvertSettings
    from csvbridge.fold.engine import convert

    header = list(TEMPLATE_HEADER)
    base = {**BASE, "user.user_email": "a@example.com"}
    del base["user.email"]

    def row(n: int, **cells: str) -> list[str]:
        values = {**base, "id": f"c{n}", **cells}
        return [values.get(h, "") for h in header]

    rows = [row(n, comment="fine") for n in range(200)]
    rows[150] = row(150, **{"conversion_items.product.name": "Mug\x00"})  # fast lane, text
    rows[160] = row(160, comment="\x00note")
    src = tmp_path / "orders.csv"
    _write_csv(src, header, rows)
    assert src.read_bytes().index(b"\x00") > 4096
    done = convert(src, tmp_path / "work", settings=ConvertSettings(workers=1))
    assert done.report.objects_valid == 198
    errors = {e["meta"]["column"]: e for e in done.report.problems.errors}
    assert set(errors) == {"conversion_items.product.name", "comment"}
    assert errors["comment"]["code"] == "NUL_BYTE"
    assert errors["comment"]["meta"]["line_numbers"] == [162]
    assert errors["conversion_items.product.name"]["meta"]["values"] == ["Mug\x00"]
    assert b"\\u0000" not in done.ndjson.read_bytes()


@pytest.mark.parametrize("column", [".".join(["a"] * 100), "custom." + ".".join(["a"] * 100)])
def test_a_dot_path_100_levels_deep_is_an_input_error_naming_the_column(tmp_path, column):
    from csvbridge.cli import main

    header = [*BASE, column]
    with pytest.raises(InputError, match=r"column 10 \('(custom\.)?a\.a\.a.*levels; at most 12"):
        plan_for(header)
    src = tmp_path / "deep.csv"
    _write_csv(src, header, [[*BASE.values(), "v"]])
    assert main(["convert", str(src), "-o", str(tmp_path / "out.ndjson"), "-q"]) == 2


def test_dots_that_are_no_dot_path_are_ignored_not_refused():
    plan = plan_for([*BASE, "Notes" + "." * 40])
    assert [r for _, r in plan.ignored] == ["not a documented conversion property"]
