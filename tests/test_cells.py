"""Per-column codecs: numbers, booleans, dates, text rules, identifier damage, memo."""

from __future__ import annotations

import orjson
import pytest

from csvbridge.errors import ConfigError
from csvbridge.schema.codecs import (
    CachedCodec,
    CellError,
    CodecOptions,
    Flagged,
    make_codec,
    number_json,
    parse_date,
)
from csvbridge.schema.models import Conversion, Product, field_rules

RULES = {**field_rules(Conversion), **{f"product.{k}": v for k, v in field_rules(Product).items()}}


def codec(path: str, **options):
    return make_codec(path, RULES[path], CodecOptions(**options))


def ok(path: str, raw: str, **options):
    """The decoded JSON value of a valid cell."""
    out = codec(path, **options)(raw)
    assert isinstance(out, bytes), out
    return orjson.loads(out)


def refused(path: str, raw: str, **options) -> CellError:
    with pytest.raises(CellError) as info:
        codec(path, **options)(raw)
    return info.value


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("raw", ["10", "6.4", "-0.5", "0", "1e5", "2.5E-3", "48.857764", "12.50"])
def test_number_keeps_its_json_spelling(raw):
    assert number_json(raw, False) == raw.encode()


@pytest.mark.parametrize(
    ("raw", "out"),
    [
        ("01000", b"1000"),
        (" 12 ", b"12"),
        ("+5", b"5"),
        ("1.", b"1"),
        (".5", b"0.5"),
        ("-007.50", b"-7.5"),
    ],
)
def test_number_spellings_json_does_not_allow_are_rewritten(raw, out):
    assert number_json(raw, False) == out
    orjson.loads(out)


@pytest.mark.parametrize(
    "raw",
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "-1E+400",
        "1" + "0" * 400,
        "abc",
        "1,5",
        "",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: float() reads it, JSON does not
        "\uff11\uff12",  # fullwidth 12
        "1\u0660.5",
    ],
)
def test_non_numbers_and_non_finite_numbers_are_refused(raw):
    with pytest.raises(CellError) as info:
        number_json(raw, False)
    assert info.value.code == "INVALID_PROPERTY_TYPE"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("12,50", 12.5),
        ("1.234,5", 1234.5),
        ("1 234,50", 1234.5),
        ("1\u00a0234,5", 1234.5),
        ("7", 7),
        ("0,00", 0),
    ],
)
def test_decimal_comma(raw, value):
    assert orjson.loads(number_json(raw, True)) == value


@pytest.mark.parametrize("raw", ["1,234.56", "1,5.0", "1,2,3"])
def test_decimal_comma_refuses_what_it_cannot_read(raw):
    with pytest.raises(CellError):
        number_json(raw, True)


def test_number_codec_on_a_documented_field():
    assert ok("original_amount", "30") == 30
    assert ok("conversion_items.price", "12,5", decimal_comma=True) == 12.5
    assert refused("conversion_items.price", "12,5").code == "INVALID_PROPERTY_TYPE"


# --------------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), (" Yes ", True)]
    + [("false", False), ("False", False), ("0", False), ("no", False), ("NO", False)],
)
def test_booleans(raw, value):
    assert ok("acknowledged", raw) is value


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "t", "oui"])
def test_non_booleans_are_refused(raw):
    assert refused("acknowledged", raw).code == "INVALID_PROPERTY_TYPE"


# --------------------------------------------------------------------------- dates

DOCUMENTED = [
    "2019-04-29T13:47:47.315Z",
    "2019-04-29T13:47:47Z",
    "2019-04-29T13:47:47.315+02:00",
    "2019-04-29T13:47:47+02:00",
]


@pytest.mark.parametrize(
    "raw", [*DOCUMENTED, "2019-04-29T13:47:47-05:30", "2019-04-29T13:47:47+00:00"]
)
def test_documented_date_forms_pass_unchanged(raw):
    assert ok("created", raw) == raw


@pytest.mark.parametrize(
    ("raw", "out"),
    [
        ("2019-04-29 13:47:47+02:00", "2019-04-29T13:47:47.000+02:00"),
        ("2019-04-29T13:47:47.123456+02:00", "2019-04-29T13:47:47.123+02:00"),
        ("2019-04-29T13:47:47+0200", "2019-04-29T13:47:47.000+02:00"),
        ("2019-04-29T13:47:47.123-0530", "2019-04-29T13:47:47.123-05:30"),
        ("2019-04-29 13:47:47+00:00", "2019-04-29T13:47:47.000Z"),
        ("2019-04-29T13:47:47.5Z", "2019-04-29T13:47:47.500Z"),
        ("2019-04-29T13:47:47+02:00:30", "2019-04-29T11:47:17.000Z"),  # no form for seconds
    ],
)
def test_other_iso_forms_with_an_offset_are_normalised(raw, out):
    assert ok("created", raw) == out


@pytest.mark.parametrize("raw", ["2019-04-29T13:47:47", "2019-04-29 13:47", "2019-04-29"])
def test_dates_without_offset_are_refused(raw):
    err = refused("created", raw)
    assert err.code == "INVALID_PROPERTY_FORMAT"
    assert "offset" in err.detail


def test_dates_without_offset_take_the_mapping_time_zone():
    assert ok("created", "2019-07-01T10:00:00", timezone="Europe/Paris") == (
        "2019-07-01T10:00:00.000+02:00"
    )
    assert ok("created", "2019-01-01T10:00:00", timezone="Europe/Paris") == (
        "2019-01-01T10:00:00.000+01:00"
    )
    assert ok("created", "2019-01-01T10:00:00", timezone="UTC") == "2019-01-01T10:00:00.000Z"


@pytest.mark.parametrize(
    "raw",
    [
        "2019-02-30T10:00:00Z",
        "2019-13-01T10:00:00Z",
        "2019-04-29T25:00:00+02:00",
        "yesterday",
        "1556545667",
    ],
)
def test_impossible_or_foreign_dates_are_refused(raw):
    assert refused("created", raw).code == "INVALID_PROPERTY_FORMAT"


def test_unix_and_strptime_date_formats_from_options():
    unix = CodecOptions(date_formats=("unix",))
    assert parse_date("1494594582", unix, None) == "2017-05-12T13:09:42.000Z"
    ms = CodecOptions(date_formats=("unix_ms",))
    assert parse_date("1494594582123", ms, None) == "2017-05-12T13:09:42.123Z"
    fr = CodecOptions(date_formats=("%d/%m/%Y %H:%M",), timezone="Europe/Paris")
    assert parse_date("29/04/2019 13:47", fr, fr.tz()) == "2019-04-29T13:47:00.000+02:00"
    with pytest.raises(CellError, match="offset"):
        parse_date("29/04/2019 13:47", CodecOptions(date_formats=("%d/%m/%Y %H:%M",)), None)


@pytest.mark.parametrize("raw", ["99999999999999999999", "-99999999999999"])
def test_unix_times_out_of_range_are_cell_errors(raw):
    with pytest.raises(CellError):
        parse_date(raw, CodecOptions(date_formats=("unix",)), None)


def test_unknown_time_zone_is_a_config_error():
    with pytest.raises(ConfigError):
        CodecOptions(timezone="Mars/Olympus").tz()


# --------------------------------------------------------------------------- text

LIMITS = [
    ("id", 50),
    ("comment", 250),
    ("type", 250),
    ("billing_address.locality", 250),
    ("product.name", 500),
    ("product.description", 5000),
    ("conversion_items.product.id", 50),
]


@pytest.mark.parametrize(("path", "limit"), LIMITS)
@pytest.mark.parametrize("char", ["é", "日", "€"])
def test_lengths_count_characters_not_bytes(path, limit, char):
    assert ok(path, char * limit) == char * limit
    err = refused(path, char * (limit + 1))
    assert err.code == "INVALID_PROPERTY_FORMAT"
    assert str(limit) in err.detail


ENUMS = {
    "status": [
        "canceled", "delivered", "in_progress", "partially_delivered", "partially_returned",
        "partially_shipped", "pending_shipment", "returned", "shipped", "pending",
    ],
    "payment_method": [
        "by_bank_transfer_in_advance", "by_invoice", "card", "check_in_advance", "cod",
        "coupon", "direct_debit", "online_payment_system", "other",
    ],
    "product.condition": ["new", "refurbished", "used"],
    "product.availability": ["in_stock", "available", "pre_order", "out_of_stock"],
    "product.gender": ["male", "female", "unisex"],
}  # fmt: skip


@pytest.mark.parametrize(("path", "value"), [(p, v) for p, vs in ENUMS.items() for v in vs])
def test_every_documented_enumeration_value_is_accepted(path, value):
    assert ok(path, value) == value


@pytest.mark.parametrize("path", list(ENUMS))
def test_near_misses_of_enumerations_are_refused(path):
    for value in ENUMS[path]:
        wrong = {value.upper(), value + " ", " " + value, value.replace("_", " "), value + "\n"}
        for raw in wrong - {value}:
            assert refused(path, raw).code == "INVALID_PROPERTY_FORMAT"
    if path == "status":
        assert refused(path, "cancelled").code == "INVALID_PROPERTY_FORMAT"


@pytest.mark.parametrize("raw", ["EUR", "USD", "JPY"])
def test_currency_codes(raw):
    assert ok("currency", raw) == raw
    assert ok("product.currency", raw) == raw


@pytest.mark.parametrize("raw", ["eur", "EURO", "EU", "EUR\n", " EUR", "€", "E1R"])
def test_bad_currency_codes(raw):
    assert refused("currency", raw).code == "INVALID_PROPERTY_FORMAT"


@pytest.mark.parametrize("raw", ["fr", "FRA", "F", "FR\n", "F1"])
def test_bad_country_codes(raw):
    assert ok("billing_address.iso_country_code", "FR") == "FR"
    assert refused("shipping_address.iso_country_code", raw).code == "INVALID_PROPERTY_FORMAT"


def test_urls():
    assert ok("product.link", "https://example.com/a?b=c") == "https://example.com/a?b=c"
    for bad in ("ftp://example.com", "example.com", "https://a b", "https://x\n"):
        assert refused("product.image_link", bad).code == "INVALID_PROPERTY_FORMAT"


def test_lists_split_on_pipes_and_drop_empty_parts():
    assert ok("product.tags", "mugs|handle||white") == ["mugs", "handle", "white"]
    assert ok("product.colors", "red") == ["red"]


def test_text_is_kept_verbatim():
    raw = '  Says "hi",\nthen leaves \t'
    assert ok("comment", raw) == raw


# --------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("product.gtin", "1.35E+17"),
        ("product.gtin", "1,35E+17"),
        ("product.mpn", "1.3E+9"),
        ("product.id", "12345.0"),
        ("id", "4.2E+12"),
        ("conversion_items.id", "99.00"),
        ("billing_address.postal_code", "75009.0"),
    ],
)
def test_spreadsheet_damaged_identifiers_are_flagged_and_kept_as_text(path, raw):
    out = codec(path)(raw)
    assert isinstance(out, Flagged)
    assert out.code == "SPREADSHEET_DAMAGE"
    assert orjson.loads(out.json) == raw  # never converted


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("billing_address.postal_code", "01000"),
        ("product.id", "0170301"),
        ("product.gtin", "3017620422003"),
        ("product.mpn", "134588842"),
        ("id", "db050bb1-810d-4420-a6fb-c1ce472a4ca9"),
    ],
)
def test_sound_identifiers_are_plain_text(path, raw):
    out = codec(path)(raw)
    assert out == orjson.dumps(raw)


def test_numbers_in_number_fields_are_not_identifier_damage():
    assert ok("product.price", "12345.0") == 12345
    assert ok("product.weight", "1.5E+2") == 150


# --------------------------------------------------------------------------- memo


def test_cached_codec_writes_the_member_and_remembers_valid_values():
    cached = CachedCodec(codec("currency"), "currency")
    assert cached("EUR") == b'"currency":"EUR"'
    assert cached.cache.get("EUR") == b'"currency":"EUR"'
    err = cached("eur")
    assert isinstance(err, CellError)
    flagged = CachedCodec(codec("product.gtin"), "gtin")("1.35E+17")
    assert isinstance(flagged, Flagged) and flagged.json == b'"gtin":"1.35E+17"'


# --------------------------------------------------------------------------- NUL bytes


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("comment", "a\x00b"),  # text with a fast check
        ("status", "pending\x00"),  # enumeration
        ("currency", "EU\x00"),  # pattern
        ("created", "2019-04-29T13:47:47Z\x00"),  # date
        ("original_amount", "1\x002"),  # number
        ("acknowledged", "tr\x00ue"),  # boolean
        ("product.tags", "a|\x00|b"),  # list
        ("product.id", "p\x001"),  # identifier
    ],
)
def test_a_nul_byte_is_refused_by_every_codec_with_a_named_error(path, raw):
    with pytest.raises(CellError) as info:
        codec(path, **{})(raw)
    assert info.value.code == "NUL_BYTE"
    assert f"character {raw.index(chr(0)) + 1}" in info.value.detail


def test_a_nul_byte_in_a_custom_value_is_refused():
    from csvbridge.schema.models import FieldRule

    with pytest.raises(CellError, match="NUL byte"):
        make_codec("custom.note", FieldRule("object"), CodecOptions())("x\x00")


def test_the_fast_check_is_the_codecs_first_line_and_refuses_nul():
    from csvbridge.schema.codecs import PLAIN_NUMBER, fast_check

    for path, rule in RULES.items():
        fast = fast_check(path, rule)
        if fast is None:
            continue
        test = eval(f"lambda v: {fast.test}", {"PLAIN_NUMBER": PLAIN_NUMBER})  # noqa: S307
        assert not test("ab\x00"), path
        sample = "12" if rule.kind == "number" else "abc"
        if test(sample):  # what the fast check accepts, the codec writes the same way
            expected = sample.encode() if fast.number else orjson.dumps(sample)
            assert codec(path)(sample) == expected, path
