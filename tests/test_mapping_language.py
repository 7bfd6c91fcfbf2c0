"""The expression language of mappings: exact decimals, text functions, conditionals,
the sandbox, and column names checked when the mapping is compiled."""

from __future__ import annotations

from decimal import Decimal

import pytest

from csvbridge.errors import ConfigError, InputError
from csvbridge.read.mapping import Mapping, compile_mapping, parse_mapping
from csvbridge.read.mapping.language import Language, to_text
from csvbridge.read.numbers import NumberError, parse_amount
from csvbridge.schema.codecs import CellError, CodecOptions

HEADER = ["Total", "Refunded Amount", "Buyer", "Financial Status", "Fulfillment Status", "Note"]


def ev(expr: str, row: list[str], locale: str = "en_US"):
    lang = Language(HEADER, locale)
    return lang.compile(expr, "test")(row), lang.context.notes


ROW = ["1,234.50", "34.50", "Ada Lovelace <ada@example.com>", "partially_refunded", "fulfilled", "x" * 300]


def test_decimal_arithmetic_is_exact():
    value, _ = ev("dec(c['Total']) - dec(c['Refunded Amount'])", ROW)
    assert value == Decimal("1200.00")
    # 0.1 + 0.2 in doubles is 0.30000000000000004; in decimals it is 0.3
    value, _ = ev("dec('0.1') + dec('0.2')", ROW)
    assert to_text(value) == "0.3"


def test_effective_unit_price_from_price_quantity_and_discount():
    lang = Language(["Price", "Qty", "Discount"], "de_DE")
    f = lang.compile("round2((dec(c['Price']) * dec(c['Qty']) - dec(c['Discount'])) / dec(c['Qty']))", "t")
    assert f(["19,99", "3", "5,00"]) == Decimal("18.32")


def test_empty_cells_are_zero_and_bad_numbers_name_the_value():
    assert ev("dec(c['Refunded Amount'])", ["1", "", "", "", "", ""])[0] == 0
    with pytest.raises(CellError) as exc:
        ev("dec(c['Total'])", ["12,5.3", "", "", "", "", ""])
    assert exc.value.code == "INVALID_NUMBER" and "12,5.3" in exc.value.detail


def test_conditionals_and_comparisons_give_status_from_two_columns():
    expr = (
        "'canceled' if c['Financial Status'] in ('refunded', 'voided') else "
        "('partially_returned' if c['Financial Status'] == 'partially_refunded' else "
        "('shipped' if c['Fulfillment Status'] == 'fulfilled' else 'pending'))"
    )
    assert ev(expr, ROW)[0] == "partially_returned"
    assert ev(expr, ["", "", "", "paid", "fulfilled", ""])[0] == "shipped"
    assert ev(expr, ["", "", "", "paid", "", ""])[0] == "pending"
    assert ev(expr, ["", "", "", "voided", "", ""])[0] == "canceled"
    assert ev("dec(c['Total']) > 1000", ROW)[0] is True


def test_text_functions():
    assert ev("extract(c['Buyer'], '<([^>]+)>')", ROW)[0] == "ada@example.com"
    assert ev("extract(c['Buyer'], '<([^>]+)>')", ["", "", "ada@x.org", "", "", ""])[0] == ""
    assert ev("split(c['Buyer'], ' ', 1)", ROW)[0] == "Lovelace"
    assert ev("split(c['Buyer'], ' ', 9)", ROW)[0] == ""
    assert ev("upper(trim('  ab '))", ROW)[0] == "AB"
    assert ev("c['Financial Status'] | upper", ROW)[0] == "PARTIALLY_REFUNDED"
    assert ev("lower('ABC')", ROW)[0] == "abc"
    assert ev("concat(', ', 'a', '', '  ', 'b')", ROW)[0] == "a, b"
    assert ev("concat(' - ', '', '')", ROW)[0] == ""
    assert ev("coalesce(c['Refunded Amount'], 'none')", ["", "", "", "", "", ""])[0] == "none"


def test_remembered_results_replay_their_warnings_and_errors():
    lang = Language(HEADER, "en_US")
    f = lang.compile("truncate(c['Note'], 5)", "t")
    g = lang.compile("dec(c['Total'])", "t")
    row = ["x,y", "", "", "", "", "abcdefgh"]
    for _ in range(3):  # the second and third calls are answered by the memo
        assert f(row) == "abcde"
        with pytest.raises(CellError, match="not a number"):
            g(row)
    assert [n[0] for n in lang.context.notes] == ["VALUE_TRUNCATED"] * 3
    assert len(f.memo) == 1 and len(g.memo) == 1


def test_truncate_warns_with_lengths():
    value, notes = ev("truncate(c['Note'], 250)", ROW)
    assert len(value) == 250
    assert notes == [("VALUE_TRUNCATED", "cut to 250 characters (it had 300)", "x" * 80)]
    value, notes = ev("truncate('short', 250)", ROW)
    assert value == "short" and notes == []


@pytest.mark.parametrize(
    "expr",
    [
        "c.__class__.__mro__",
        "c['Total'].__class__.__subclasses__()",
        "dec.__globals__",
        "().__class__.__bases__[0].__subclasses__()",
    ],
)
def test_the_sandbox_refuses_internals(expr):
    """An unsafe attribute reads as nothing; calling through it is an error."""
    try:
        value, _ = ev(expr, ROW)
    except CellError as exc:
        assert exc.code == "INVALID_EXPRESSION"
    else:
        assert value is None


def test_mutation_is_refused_by_the_immutable_sandbox():
    with pytest.raises(CellError):
        ev("[1].append(2)", ROW)


def test_unknown_column_in_an_expression_is_named_with_a_suggestion():
    m = Mapping.model_validate(
        {"fields": {"id": "Total", "final_amount": {"expr": "dec(c['Totl'])"}}}
    )
    with pytest.raises(InputError, match=r"'Totl' is not in the file's header — did you mean Total\?"):
        compile_mapping(m, HEADER, CodecOptions())


def test_unknown_function_and_syntax_errors_fail_at_load():
    with pytest.raises(ConfigError, match="did you mean dec"):
        parse_mapping({"fields": {"final_amount": {"expr": "decimal(c['Total'])"}}}, "m")
    with pytest.raises(ConfigError, match="does not parse"):
        parse_mapping({"fields": {"final_amount": {"expr": "dec(c['Total'] -"}}}, "m")


def test_expression_rule_in_a_mapping_with_map_and_default():
    m = parse_mapping(
        {
            "fields": {
                "id": "Buyer",
                "final_amount": {"expr": "dec(c['Total']) - dec(c['Refunded Amount'])"},
                "user.email": {"expr": "lower(extract(c['Buyer'], '<([^>]+)>'))"},
                "status": {"expr": "c['Financial Status']", "map": {"paid": "delivered"}, "default": "pending"},
            }
        },
        "m",
    )
    t = compile_mapping(m, HEADER, CodecOptions())
    out = dict(zip(t.paths, t.fn(["10.00", "2.5", "A <A@X.ORG>", "", "", ""]), strict=True))
    assert out["final_amount"] == "7.50"
    assert out["user.email"] == "a@x.org"
    # the default is the order's, applied once per order by the fold
    assert out["status"] == "" and t.defaults == {t.paths.index("status"): "pending"}


@pytest.mark.parametrize(
    ("text", "locale", "expected"),
    [
        ("€1.234,56", "de_DE", "1234.56"),
        ("1 234,56 €", "fr_FR", "1234.56"),
        ("1\u202f234,56\u00a0€", "fr_FR", "1234.56"),
        ("$1,234.56", "en_US", "1234.56"),
        ("USD 99.00", "en_US", "99.00"),
        ("CHF 1'234.50", "de_CH", "1234.50"),
        ("(12.50)", "en_US", "-12.50"),
        ("-€5,00", "de_DE", "-5.00"),
        ("£0.99", "en_GB", "0.99"),
    ],
)
def test_numbers_as_shops_write_them(text, locale, expected):
    assert str(parse_amount(text, locale)) == expected


@pytest.mark.parametrize(("text", "locale"), [("1,234.56", "de_DE"), ("abc", "en_US"), ("12.3.4", "en_US"), ("€", "de_DE")])
def test_numbers_that_cannot_be_read(text, locale):
    with pytest.raises(NumberError, match="not a number"):
        parse_amount(text, locale)


def test_an_unknown_target_reads_as_a_sentence(tmp_path):
    """The error a person reads: where and what, without pydantic's own wording."""
    from csvbridge.read.mapping import load_mapping

    path = tmp_path / "m.yaml"
    path.write_text("fields:\n  billing_adress.locality: City\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_mapping(path)
    text = str(exc.value)
    assert "did you mean billing_address.locality?" in text
    assert "Value error" not in text and ": :" not in text
