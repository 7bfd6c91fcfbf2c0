"""The pydantic models (the contract), and the fast CSV path's agreement with them.

The enumerations and limits below are copied from the reference document, not from the
models, so a drift in either direction fails here.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from csvbridge.config import ConvertSettings
from csvbridge.fold.assemble import classify, normalize_header
from csvbridge.fold.engine import convert, read_records
from csvbridge.schema.models import (
    MAX_ITEMS,
    TEMPLATE_HEADER,
    Conversion,
    ConversionItem,
    FieldRule,
    Product,
    _unwrap,
    api_error_code,
    error_property,
    field_rules,
    required_paths,
)

ENUMS = {
    (Conversion, "status"): {
        "canceled", "delivered", "in_progress", "partially_delivered", "partially_returned",
        "partially_shipped", "pending_shipment", "returned", "shipped", "pending",
    },
    (Conversion, "payment_method"): {
        "by_bank_transfer_in_advance", "by_invoice", "card", "check_in_advance", "cod",
        "coupon", "direct_debit", "online_payment_system", "other",
    },
    (Product, "condition"): {"new", "refurbished", "used"},
    (Product, "availability"): {"in_stock", "available", "pre_order", "out_of_stock"},
    (Product, "gender"): {"male", "female", "unisex"},
}  # fmt: skip


def conversion(items: int = 1, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "c1",
        "user": {"email": "user@example.com"},
        "type": "offline",
        "status": "in_progress",
        "created": "2018-01-01T20:00:00.000+01:00",
        "currency": "EUR",
        "conversion_items": [
            {"id": f"i{n}", "original_quantity": 1, "product": {"id": f"p{n}"}}
            for n in range(items)
        ],
    }
    obj.update(extra)
    return obj


def errors_of(obj: dict[str, Any], model: type = Conversion) -> list[dict[str, Any]]:
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        return exc.errors()
    return []


# --------------------------------------------------------------------------- enumerations


@pytest.mark.parametrize(("model", "name"), list(ENUMS))
def test_enumerations_are_exactly_the_documented_ones(model, name):
    rules = field_rules(model)
    assert set(rules[name].choices) == ENUMS[(model, name)]
    literal, _ = _unwrap(model.model_fields[name].annotation)
    assert set(get_args(literal)) == ENUMS[(model, name)]


@pytest.mark.parametrize(("model", "name"), list(ENUMS))
def test_pydantic_accepts_each_enumeration_value_and_nothing_else(model, name):
    base = conversion() if model is Conversion else {"id": "p1"}
    for value in ENUMS[(model, name)]:
        assert not errors_of({**base, name: value}, model)
    for wrong in ("", "Other", "in progress", "cancelled", "out-of-stock", "MALE"):
        if wrong not in ENUMS[(model, name)]:
            assert errors_of({**base, name: wrong}, model)


# --------------------------------------------------------------------------- lengths


@pytest.mark.parametrize(
    ("model", "name", "limit"),
    [
        (Conversion, "id", 50),
        (Conversion, "comment", 250),
        (Conversion, "type", 250),
        (Product, "id", 50),
        (Product, "name", 500),
        (Product, "description", 5000),
        (Product, "brand", 250),
    ],
)
def test_lengths_count_characters(model, name, limit):
    base = conversion() if model is Conversion else {"id": "p1"}
    assert not errors_of({**base, name: "é" * limit}, model)
    assert not errors_of({**base, name: "日" * limit}, model)
    errs = errors_of({**base, name: "é" * (limit + 1)}, model)
    assert [e["type"] for e in errs] == ["string_too_long"]


def test_formats():
    assert errors_of(conversion(currency="eur"))
    assert errors_of(conversion(currency="EUR\n"))
    assert errors_of(conversion(billing_address={"iso_country_code": "FRA"}))
    assert not errors_of(conversion(billing_address={"iso_country_code": "FR"}))
    assert errors_of({"id": "p", "link": "www.example.com"}, Product)


@pytest.mark.parametrize(
    "value",
    [
        "2019-04-29T13:47:47.315Z",
        "2019-04-29T13:47:47Z",
        "2019-04-29T13:47:47.315+02:00",
        "2019-04-29T13:47:47+02:00",
    ],
)
def test_documented_dates_are_kept(value):
    assert Conversion.model_validate(conversion(created=value)).created == value


def test_other_dates():
    assert Conversion.model_validate(conversion(created="2019-04-29 13:47:47+0200")).created == (
        "2019-04-29T13:47:47.000+02:00"
    )
    for bad in ("2019-04-29T13:47:47", "2019-02-30T13:47:47Z", "29/04/2019", ""):
        assert errors_of(conversion(created=bad)), bad


def test_numbers_and_booleans_are_strict_json_types():
    assert errors_of(conversion(original_amount="30"))
    assert errors_of(conversion(original_amount=float("nan")))
    assert errors_of(conversion(acknowledged="true"))
    assert not errors_of(conversion(original_amount=30, acknowledged=True))


# --------------------------------------------------------------------------- structure


def test_read_only_conversion_quantities_are_refused():
    for name in ("original_quantity", "final_quantity"):
        assert errors_of(conversion(**{name: 3}))


def test_item_ids_must_be_unique():
    obj = conversion(items=2)
    obj["conversion_items"][1]["id"] = "i0"
    assert any("twice" in e["msg"] for e in errors_of(obj))


def test_at_most_150_items():
    assert not errors_of(conversion(items=MAX_ITEMS))
    assert errors_of(conversion(items=MAX_ITEMS + 1))
    assert errors_of(conversion(items=0))
    assert MAX_ITEMS == 150


def test_user_needs_a_property():
    assert errors_of(conversion(user={}))
    assert not errors_of(conversion(user={"user_email": "x@example.com"}))


def test_required_paths_are_the_documented_ones():
    assert set(required_paths(Conversion)) == {
        "id", "user", "type", "status", "created", "currency", "conversion_items",
        "conversion_items.id", "conversion_items.original_quantity", "conversion_items.product",
        "conversion_items.product.id",
    }  # fmt: skip
    assert required_paths(ConversionItem)[:2] == ["id", "original_quantity"]


def test_every_template_column_is_understood():
    for column in TEMPLATE_HEADER:
        path, rule, reason = classify(normalize_header(column), "conversions")
        assert isinstance(rule, FieldRule), (column, reason)


def test_every_leaf_has_a_rule():
    rules = field_rules(Conversion)
    assert rules["billing_address.coordinates.latitude"].kind == "number"
    assert rules["conversion_items.product.tags"].kind == "list"
    assert all(isinstance(r, FieldRule) for r in rules.values())


def test_api_error_codes():
    assert api_error_code("missing") == "MISSING_REQUIRED_PROPERTY"
    assert api_error_code("float_type") == "INVALID_PROPERTY_TYPE"
    assert api_error_code("string_too_long") == "INVALID_PROPERTY_FORMAT"
    assert error_property(("conversion_items", 3, "product", "id")) == "conversion_items.product.id"


# --------------------------------------------------------------------------- differential

ALPHABET = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
HOSTILE = ['a,"b"\nc', "x\r\ny", "a\rb", " lead and trail ", "|", "\u2028", "é€"]


def text(lo: int, hi: int) -> st.SearchStrategy[str]:
    """Valid text for a lo..hi limit: often multi-byte, sometimes CSV-hostile."""
    return st.one_of(
        st.text(ALPHABET, min_size=max(lo, 1), max_size=min(hi, 12)),
        st.sampled_from([max(lo, 1), hi]).map(lambda n: "é" * n),
        st.just("日" * hi),
        st.sampled_from(HOSTILE),
    )


def too_long(hi: int) -> st.SearchStrategy[str]:
    return st.sampled_from(["é", "日", "a"]).map(lambda c: c * (hi + 1))


VALID_DATES = st.sampled_from(
    [
        "2019-04-29T13:47:47.315Z",
        "2019-04-29T13:47:47Z",
        "2019-04-29T13:47:47.315+02:00",
        "2019-04-29T13:47:47-05:30",
        "2019-04-29 13:47:47+0200",
        "2019-04-29T13:47:47.123456-05:00",
        "2019-04-29T13:47:47+02:00:30",
    ]
)
BAD_DATES = st.sampled_from(
    ["2019-04-29T13:47:47", "2019-02-30T10:00:00Z", "tomorrow", "29/04/2019 10:00+02:00"]
)
VALID_NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0, 1e-7, 1.5e300, 10**20]),
)
BAD_NUMBERS = st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, "abc", "1,5"])


def enum(values: set[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(values))


# name -> (valid values, invalid values or None, optional).  Item fields get an index.
CONVERSION_FIELDS: dict[str, tuple[Any, Any, bool]] = {
    "id": (None, None, False),  # built per conversion (unique)
    "user.email": (st.one_of(st.just("user@example.com"), text(1, 250)), st.one_of(st.just(""), too_long(250)), False),
    "type": (st.one_of(st.just("online"), text(1, 250)), st.one_of(st.just(""), too_long(250)), False),
    "status": (enum(ENUMS[(Conversion, "status")]), st.sampled_from(["", "Pending", "cancelled", "shipped "]), False),
    "created": (VALID_DATES, st.one_of(st.just(""), BAD_DATES), False),
    "updated": (VALID_DATES, BAD_DATES, True),
    "acknowledged": (st.booleans(), st.sampled_from(["maybe", "2"]), True),
    "currency": (st.sampled_from(["EUR", "USD"]), st.sampled_from(["", "eur", "EURO", "EUR\n", "E"]), False),
    "comment": (text(1, 250), too_long(250), True),
    "billing_address.postal_code": (st.sampled_from(["01000", "75009.0", "SW3 4TY"]), too_long(250), True),
    "billing_address.iso_country_code": (st.sampled_from(["FR", "US"]), st.sampled_from(["fr", "FRA", "F\n"]), True),
    "billing_address.coordinates.latitude": (VALID_NUMBERS, BAD_NUMBERS, True),
    "payment_method": (enum(ENUMS[(Conversion, "payment_method")]), st.sampled_from(["visa", "Card"]), True),
    "original_amount": (VALID_NUMBERS, BAD_NUMBERS, True),
    "tax_amount": (VALID_NUMBERS, BAD_NUMBERS, True),
    "custom.note": (text(1, 30), None, True),
}  # fmt: skip
ITEM_FIELDS: dict[str, tuple[Any, Any, bool]] = {
    "conversion_items.id": (None, None, False),  # built per item (unique, or a duplicate)
    "conversion_items.original_quantity": (VALID_NUMBERS, st.one_of(st.just(""), BAD_NUMBERS), False),
    "conversion_items.price": (VALID_NUMBERS, BAD_NUMBERS, True),
    "conversion_items.original_item": (st.booleans(), st.just("maybe"), True),
    "conversion_items.custom.x": (text(1, 20), None, True),
    "conversion_items.product.id": (st.one_of(st.just("1.35E+17"), text(1, 50)), st.one_of(st.just(""), too_long(50)), False),
    "conversion_items.product.name": (text(1, 500), too_long(500), True),
    "conversion_items.product.tags": (st.lists(st.sampled_from(["mugs", "é t", "x,y"]), min_size=1), None, True),
    "conversion_items.product.condition": (enum(ENUMS[(Product, "condition")]), st.just("New"), True),
    "conversion_items.product.availability": (enum(ENUMS[(Product, "availability")]), st.just("in stock"), True),
    "conversion_items.product.gender": (enum(ENUMS[(Product, "gender")]), st.just("kids"), True),
    "conversion_items.product.availability_date": (VALID_DATES, BAD_DATES, True),
    "conversion_items.product.currency": (st.sampled_from(["EUR"]), st.just("eur"), True),
    "conversion_items.product.image_link": (st.just("https://x.example/i.png"), st.sampled_from(["x.png", "http://a b"]), True),
    "conversion_items.product.gtin": (st.sampled_from(["3017620422003", "1.35E+17", "00042"]), too_long(250), True),
}  # fmt: skip
COLUMNS = list(CONVERSION_FIELDS) + list(ITEM_FIELDS)


def draw_field(draw: st.DrawFn, spec: tuple[Any, Any, bool], bad: bool) -> Any:
    good, wrong, optional = spec
    if bad and wrong is not None:
        return draw(wrong)
    if optional and draw(st.booleans()):
        return None
    return draw(good)


@st.composite
def conversions(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """One conversion as flat dot paths: all valid, one field wrong, or anything goes."""
    mode = draw(st.sampled_from(["valid", "one", "one", "chaos"]))
    n_items = draw(st.integers(1, 4))
    target: Any = None
    if mode == "one":
        fields = [f for f, s in {**CONVERSION_FIELDS, **ITEM_FIELDS}.items() if s[1] is not None]
        target = draw(st.sampled_from([*fields, "id", "conversion_items.id"]))
        if target.startswith("conversion_items."):
            target = (target, draw(st.integers(0, n_items - 1)))

    def bad(name: Any) -> bool:
        return name == target or (mode == "chaos" and draw(st.integers(0, 5)) == 0)

    flat: dict[str, Any] = {}
    if bad("id"):
        flat["id"] = draw(st.sampled_from(["", f"{index}:" + "é" * 50]))
    else:
        flat["id"] = draw(
            st.one_of(st.just(f"c{index}"), text(1, 40).map(lambda t: f"{index}:{t}"))
        )
    for name, spec in CONVERSION_FIELDS.items():
        if name != "id":
            flat[name] = draw_field(draw, spec, bad(name))
    flat["items"] = []
    for n in range(n_items):
        item = {}
        if bad(("conversion_items.id", n)):
            item["conversion_items.id"] = draw(st.sampled_from(["", "i0"] if n else [""]))
        else:
            item["conversion_items.id"] = draw(st.sampled_from([f"i{n}", f"{n}{'é' * 60}"]))
        for name, spec in ITEM_FIELDS.items():
            if name != "conversion_items.id":
                item[name] = draw_field(draw, spec, bad((name, n)))
        flat["items"].append(item)
    return flat


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dot paths -> the JSON object a client would send (None = absent)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        if value is None:
            continue
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def as_json(flat: dict[str, Any]) -> dict[str, Any]:
    conv = {k: v for k, v in flat.items() if k != "items"}
    if conv["user.email"] == "":
        conv["user.email"] = None  # an empty cell: no user at all
    obj = nest(conv)
    obj["conversion_items"] = [
        nest({k[len("conversion_items.") :]: v for k, v in item.items()}) for item in flat["items"]
    ]
    return obj


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "|".join(value)
    return value


def verdict(obj: dict[str, Any]) -> bool:
    try:
        Conversion.model_validate(json.loads(json.dumps(obj)))
    except ValidationError:
        return False
    return True


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_fast_path_agrees_with_the_models(data):
    batch = [data.draw(conversions(i)) for i in range(data.draw(st.integers(1, 6)))]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    line = 2
    lines: list[list[int]] = []
    for flat in batch:
        lines.append([])
        for item in flat["items"]:
            row = {**flat, **item}
            one = io.StringIO()
            csv.writer(one, lineterminator="\r\n").writerow([cell(row.get(c)) for c in COLUMNS])
            buf.write(one.getvalue())
            lines[-1].append(line)
            line += one.getvalue().count("\n")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        src.write_text(buf.getvalue(), encoding="utf-8", newline="")
        done = convert(src, Path(tmp) / "work", settings=ConvertSettings(workers=1))
        emitted = {rec.lines: rec.json for rec in read_records(done.ndjson, done.index)}
        assert done.report.accounted
    for flat, rows in zip(batch, lines, strict=True):
        expected = as_json(flat)
        fast = emitted.get(tuple(rows))
        assert (fast is not None) == verdict(expected), (expected, fast, done.report.as_dict())
        if fast is not None:
            got = Conversion.model_validate(json.loads(fast))
            want = Conversion.model_validate(json.loads(json.dumps(expected)))
            assert got.model_dump(exclude_none=True) == want.model_dump(exclude_none=True)
