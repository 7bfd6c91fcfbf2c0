"""YAML mappings: loading, every rule form, dates, and end to end through convert()."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from csvbridge.config import ConvertSettings
from csvbridge.errors import ConfigError, InputError
from csvbridge.fold.engine import convert
from csvbridge.read.mapping import Mapping, compile_mapping, convert_date, load_mapping
from csvbridge.schema.codecs import CellError, CodecOptions

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def mapping(fields: dict, **options) -> Mapping:
    return Mapping.model_validate({"options": options, "fields": fields})


def apply(fields: dict, header: list[str], row: list[str], **options):
    """(values by target path, errors by target path) for one source row."""
    m = mapping(fields, **options)
    transform = compile_mapping(m, header, CodecOptions(timezone=m.options.timezone))
    values = transform.fn(row)
    for i, v in transform.defaults.items():  # order-level defaults: the fold's, per order
        values[i] = values[i] or v
    errors = {transform.paths[i]: e for i, e in transform.errors}
    transform.errors.clear()
    out = dict(zip(transform.paths, values, strict=True))
    out.pop("", None)  # the row's role cell
    return out, errors


# --------------------------------------------------------------------------- loading


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mapping.yaml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def test_load_mapping_short_and_long_forms(tmp_path):
    m = load_mapping(
        write(
            tmp_path,
            """
            options: {timezone: Europe/Paris, decimal_comma: true}
            fields:
              id: Order
              type: {value: online}
              status:
                - {column: Paid, map: {-2: canceled, 1: pending}, fallthrough: true}
                - {column: State, default: pending}
            """,
        )
    )
    assert m.options.timezone == "Europe/Paris" and m.options.decimal_comma is True
    assert m.fields["id"][0].column == "Order"
    assert m.fields["type"][0].value == "online"
    assert m.fields["status"][0].map == {"-2": "canceled", "1": "pending"}  # YAML ints -> text
    assert [r.column for r in m.fields["status"]] == ["Paid", "State"]


@pytest.mark.parametrize(
    "text",
    [
        "fields: {id: [}\n",  # not YAML
        "fields: [a, b]\n",  # not a dict
        "fields: {id: {column: A, value: B}}\n",  # two sources
        "fields: {id: {}}\n",  # no source
        "fields: {id: {column: A, mapp: {}}}\n",  # unknown key
        "options: {colour: red}\nfields: {}\n",
    ],
)
def test_invalid_mappings_are_config_errors(tmp_path, text):
    with pytest.raises(ConfigError):
        load_mapping(write(tmp_path, text))


def test_missing_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read mapping"):
        load_mapping(tmp_path / "none.yaml")


# --------------------------------------------------------------------------- rules


def test_columns_match_ignoring_case_and_spaces():
    values, errors = apply(
        {"id": " order id ", "comment": "NOTES"}, ["Order ID", "Notes"], ["7", "hi"]
    )
    assert values == {"id": "7", "comment": "hi"} and not errors


def test_constants():
    values, _ = apply({"type": {"value": "online"}, "acknowledged": {"value": True}}, ["x"], ["1"])
    assert values == {"type": "online", "acknowledged": "true"}


def test_value_maps_are_case_and_space_insensitive():
    fields = {
        "payment_method": {
            "column": "Pay",
            "map": {"Visa": "card", "PayPal": "online_payment_system"},
        }
    }
    for raw, out in [
        ("Visa", "card"),
        ("VISA", "card"),
        (" visa ", "card"),
        ("paypal", "online_payment_system"),
    ]:
        values, errors = apply(fields, ["Pay"], [raw])
        assert values["payment_method"] == out and not errors


def test_unmapped_value_is_an_error_naming_column_and_value():
    fields = {"payment_method": {"column": "Pay", "map": {"Visa": "card"}}}
    values, errors = apply(fields, ["Pay"], ["Bitcoin"])
    err = errors["payment_method"]
    assert err.code == "UNMAPPED_VALUE"
    assert "'Bitcoin'" in err.detail and "'Pay'" in err.detail
    assert err.value == "Bitcoin"
    assert values["payment_method"] == ""


def test_passthrough_keeps_unmapped_values():
    fields = {"payment_method": {"column": "Pay", "map": {"Visa": "card"}, "passthrough": True}}
    assert apply(fields, ["Pay"], ["cod"])[0]["payment_method"] == "cod"


def test_rule_lists_first_value_wins_and_fallthrough_goes_on():
    fields = {
        "status": [
            {"column": "Paid", "map": {"-2": "canceled"}, "fallthrough": True},
            {"column": "State", "map": {"0": "pending", "5": "shipped"}},
        ]
    }
    header = ["Paid", "State"]
    assert apply(fields, header, ["-2", "5"])[0]["status"] == "canceled"
    assert apply(fields, header, ["1", "5"])[0]["status"] == "shipped"
    assert apply(fields, header, ["", "0"])[0]["status"] == "pending"
    _, errors = apply(fields, header, ["1", "9"])
    assert errors["status"].code == "UNMAPPED_VALUE" and errors["status"].value == "9"


def test_fallthrough_to_a_constant_is_a_catch_all():
    fields = {
        "payment_method": [
            {"column": "Pay", "map": {"Visa": "card"}, "fallthrough": True},
            {"value": "other"},
        ]
    }
    assert apply(fields, ["Pay"], ["Visa"])[0]["payment_method"] == "card"
    assert apply(fields, ["Pay"], ["Bitcoin"])[0]["payment_method"] == "other"
    assert apply(fields, ["Pay"], [""])[0]["payment_method"] == "other"


def test_default_fills_empty_cells_only():
    fields = {"currency": {"column": "Cur", "default": "EUR"}}
    assert apply(fields, ["Cur"], [""])[0]["currency"] == "EUR"
    assert apply(fields, ["Cur"], ["  "])[0]["currency"] == "EUR"
    assert apply(fields, ["Cur"], ["USD"])[0]["currency"] == "USD"


def test_templates_join_columns_and_drop_extra_spaces():
    fields = {"billing_address.recipient": {"template": "{First} {Last}"}}
    header = ["First", "Last"]
    assert (
        apply(fields, header, ["Ada", "Lovelace"])[0]["billing_address.recipient"] == "Ada Lovelace"
    )
    assert apply(fields, header, ["Ada", ""])[0]["billing_address.recipient"] == "Ada"
    assert apply(fields, header, ["", ""])[0]["billing_address.recipient"] == ""
    item = {"conversion_items.id": {"template": "{Order ID}-{SKU}"}}
    assert (
        apply(item, ["order id", "sku"], ["4041", "0170301"])[0]["conversion_items.id"]
        == "4041-0170301"
    )


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"id": "Order"}, "Order"),
        ({"id": {"column": "Order", "map": {"a": "b"}}}, "Order"),
        ({"id": {"template": "{Other}-{Sku}"}}, "Sku"),
        ({"status": [{"column": "Paid", "fallthrough": True, "map": {}}, "State"]}, "State"),
    ],
)
def test_missing_mapped_column_is_an_input_error_naming_it(fields, missing):
    with pytest.raises(InputError) as info:
        apply(fields, ["Paid", "Other"], ["1", "2"])
    assert repr(missing) in str(info.value)


# --------------------------------------------------------------------------- dates


def test_unix_seconds_and_milliseconds():
    assert convert_date("1494594582", "unix", None) == "2017-05-12T13:09:42.000Z"
    assert convert_date("1494594582123", "unix_ms", None) == "2017-05-12T13:09:42.123Z"
    assert convert_date("0", "unix", None) == "1970-01-01T00:00:00.000Z"


def test_strptime_formats_take_the_default_time_zone():
    fields = {"created": {"column": "When", "date": "%d/%m/%Y %H:%M"}}
    summer = apply(fields, ["When"], ["15/07/2024 14:30"], timezone="Europe/Paris")[0]
    winter = apply(fields, ["When"], ["15/01/2024 14:30"], timezone="Europe/Paris")[0]
    assert summer["created"] == "2024-07-15T14:30:00.000+02:00"
    assert winter["created"] == "2024-01-15T14:30:00.000+01:00"
    ny = apply(fields, ["When"], ["15/01/2024 14:30"], timezone="America/New_York")[0]
    assert ny["created"] == "2024-01-15T14:30:00.000-05:00"


def test_format_with_its_own_offset_ignores_the_default_zone():
    fields = {"created": {"column": "When", "date": "%Y-%m-%d %H:%M %z"}}
    values, _ = apply(fields, ["When"], ["2024-01-15 14:30 +0530"], timezone="Europe/Paris")
    assert values["created"] == "2024-01-15T14:30:00.000+05:30"


@pytest.mark.parametrize(
    ("raw", "how", "tz"),
    [
        ("15/07/2024 14:30", "%d/%m/%Y %H:%M", None),  # no zone anywhere
        ("31/02/2024 14:30", "%d/%m/%Y %H:%M", "UTC"),  # no such day
        ("yesterday", "unix", None),
        ("1e30", "unix", None),
        ("nan", "unix", None),
    ],
)
def test_bad_mapped_dates_are_cell_errors(raw, how, tz):
    fields = {"created": {"column": "When", "date": how}}
    kw = {"timezone": tz} if tz else {}
    _, errors = apply(fields, ["When"], [raw], **kw)
    assert isinstance(errors["created"], CellError)
    assert errors["created"].value == raw


# --------------------------------------------------------------------------- end to end

HEADER = "Order,Mail,Paid,State,When,Qty,Sku,Title,Price,Pay\n"
FIELDS = {
    "id": "Order",
    "user.email": "Mail",
    "type": {"value": "online"},
    "status": [
        {"column": "Paid", "map": {"-2": "canceled"}, "fallthrough": True},
        {"column": "State", "map": {"open": "pending", "done": "shipped"}},
    ],
    "created": {"column": "When", "date": "unix"},
    "currency": {"value": "EUR"},
    "payment_method": {"column": "Pay", "map": {"visa": "card"}},
    "conversion_items.original_quantity": "Qty",
    "conversion_items.product.id": "Sku",
    "conversion_items.product.name": "Title",
    "conversion_items.price": "Price",
}


def run(tmp_path: Path, body: str, fields: dict = FIELDS, header: str = HEADER, **options):
    src = tmp_path / "in.csv"
    src.write_text(header + body, encoding="utf-8")
    done = convert(
        src,
        tmp_path / "work",
        mapping=mapping(fields, **options),
        settings=ConvertSettings(workers=1),
    )
    objs = [json.loads(line) for line in done.ndjson.read_bytes().splitlines()]
    return objs, done.report


def test_mapped_file_converts(tmp_path):
    objs, report = run(
        tmp_path,
        "o1,a@b.c,1,Done,1717236000,2,0170301,Tee,19.99,VISA\n"
        "o1,a@b.c,1,Done,1717236000,1,0042,Cap,5,VISA\n"
        "o2,b@c.d,-2,open,1717236000,1,0042,Cap,5,visa\n",
    )
    assert report.objects_valid == 2 and report.accounted
    assert objs[0] == {
        "id": "o1",
        "user": {"email": "a@b.c"},
        "type": "online",
        "status": "shipped",
        "created": "2024-06-01T10:00:00.000Z",
        "currency": "EUR",
        "payment_method": "card",
        "conversion_items": [
            {
                "original_quantity": 2,
                "product": {"id": "0170301", "name": "Tee"},
                "price": 19.99,
                "id": "0170301",
            },
            {
                "original_quantity": 1,
                "product": {"id": "0042", "name": "Cap"},
                "price": 5,
                "id": "0042",
            },
        ],
    }
    assert objs[1]["status"] == "canceled"


def test_unmapped_value_rejects_the_row_with_column_line_and_value(tmp_path):
    objs, report = run(
        tmp_path,
        "o1,a@b.c,1,Done,1717236000,1,s1,Tee,1,visa\n"
        "o2,a@b.c,1,Lost,1717236000,1,s1,Tee,1,visa\n"
        "o3,a@b.c,1,open,1717236000,1,s1,Tee,1,bitcoin\n",
    )
    assert [o["id"] for o in objs] == ["o1"]
    errors = {(e["code"], e["meta"]["property"]): e for e in report.problems.errors}
    assert set(errors) == {("UNMAPPED_VALUE", "status"), ("UNMAPPED_VALUE", "payment_method")}
    status = errors[("UNMAPPED_VALUE", "status")]["meta"]
    assert (
        status["line_numbers"] == [3] and status["values"] == ["Lost"] and status["ids"] == ["o2"]
    )
    assert status["column"] == "Paid / State"
    pay = errors[("UNMAPPED_VALUE", "payment_method")]["meta"]
    assert pay["line_numbers"] == [4] and pay["values"] == ["bitcoin"] and pay["column"] == "Pay"


def test_decimal_comma_option(tmp_path):
    body = 'o1,a@b.c,1,open,1717236000,1,s1,Tee,"12,50",visa\n'
    objs, report = run(tmp_path, body, decimal_comma=True)
    assert objs[0]["conversion_items"][0]["price"] == 12.5
    objs, report = run(tmp_path, body)
    assert not objs and report.problems.errors[0]["code"] == "INVALID_PROPERTY_TYPE"


def test_mapping_options_set_encoding_and_delimiter(tmp_path):
    header = HEADER.replace(",", "|")
    body = "o1|a@b.c|1|open|1717236000|1|s1|Thé, vert|1|visa\n"
    src = tmp_path / "in.csv"
    src.write_bytes((header + body).encode("cp1252"))
    done = convert(
        src,
        tmp_path / "w",
        mapping=mapping(FIELDS, encoding="cp1252", delimiter="|"),
        settings=ConvertSettings(workers=1),
    )
    obj = json.loads(done.ndjson.read_bytes())
    assert obj["conversion_items"][0]["product"]["name"] == "Thé, vert"


def test_missing_mapped_column_stops_the_file(tmp_path):
    with pytest.raises(InputError, match="'Mail'"):
        run(tmp_path, "o1,1\n", header="Order,Other\n")


def test_commercehq_fixture_converts_completely(tmp_path):
    done = convert(
        FIXTURES / "commercehq" / "orders.csv",
        tmp_path,
        mapping=FIXTURES / "commercehq" / "mapping.yaml",
        settings=ConvertSettings(workers=1),
    )
    report = done.report
    assert report.objects_rejected == 0 and not report.problems.errors
    assert report.objects_valid == 25 and report.rows_read >= 60 and report.accounted
