"""Amounts as shops write them: ``€1.234,56``, ``1 234,56 €``, ``$1,234.56``, ``USD 99.00``.

The digits are read by Babel (`babel.numbers.parse_decimal`, strict mode), which knows
each locale's decimal and grouping symbols from the CLDR; this module only takes off
what Babel does not read — a currency symbol or ISO code in front or behind, spaces of
any kind used as thousands separators, a sign or accounting parentheses — and caches
the result per (text, locale), since an export repeats the same prices on many rows.
The result is a `Decimal`: money stays exact through expressions.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache

from babel.core import Locale, UnknownLocaleError
from babel.numbers import NumberFormatError, get_decimal_symbol, get_group_symbol, parse_decimal

# a currency mark around the number: a symbol (any Unicode currency sign), a
# three-letter code, or a few common written forms ("kr", "zł", "R$", "CHF")
_SYMBOLS = "$€£¥₹₽₩₺₪₫฿₴₦₱¢"
_MARK = rf"(?:[A-Z]{{3}}|[{_SYMBOLS}]|R\$|kr\.?|zł|Fr\.)"
_CURRENCY = re.compile(rf"^{_MARK}?\s*(?P<num>.*?)\s*{_MARK}?$")
_SPACES = re.compile(r"[\s\u00a0\u202f\u2009\u2007']+")


class NumberError(ValueError):
    """A cell that is not a number in the given locale; the message says why."""


def check_locale(name: str) -> str:
    """`name` if Babel knows it (``de_DE``, ``fr``...), else a `NumberError`."""
    try:
        Locale.parse(name)
    except (UnknownLocaleError, ValueError, TypeError):
        raise NumberError(f"unknown locale {name!r} (use e.g. en_US, de_DE, fr_FR)") from None
    return name


def parse_amount(text: str, locale: str = "en_US") -> Decimal:
    """The number written in ``text`` the way ``locale`` writes it.

    Raises `NumberError` for text that is not such a number: ``1,234.56`` in ``de_DE``
    is refused rather than read as 1.23456.
    """
    return _parse(text, locale)


_PLAIN = re.compile(r"-?\d+(?:[.,]\d+)?")


@lru_cache(maxsize=64)
def _symbols(locale: str) -> tuple[str, str]:
    return get_group_symbol(locale), get_decimal_symbol(locale)


@lru_cache(maxsize=65536)
def _parse(text: str, locale: str) -> Decimal:
    group, decimal = _symbols(locale)
    if _PLAIN.fullmatch(text) and (decimal in text or not ("," in text or "." in text)):
        return Decimal(text.replace(decimal, "."))  # "1234.56" (or "1234,56"): no grouping
    raw = text.strip()
    negative = False
    if raw.startswith("(") and raw.endswith(")"):  # accounting: (12.50) is -12.50
        raw, negative = raw[1:-1].strip(), True
    if raw[:1] in "-−":
        raw, negative = raw[1:].strip(), not negative
    m = _CURRENCY.match(raw)
    num = m.group("num") if m else raw
    if num[:1] in "-−":  # "€ -5,00"
        num, negative = num[1:].strip(), not negative
    if not num or not any(ch.isdigit() for ch in num):
        raise NumberError(f"{text!r} is not a number")
    if group in " \u00a0\u202f'’" or group.isspace():
        num = _SPACES.sub(group, num)  # any space (or apostrophe) groups digits
    try:
        value = parse_decimal(num, locale, strict=True)
    except NumberFormatError as exc:
        hint = f" (decimal mark {decimal!r}, thousands {group!r} in {locale})"
        raise NumberError(f"{text!r} is not a number as written in {locale}{hint}") from exc
    return -value if negative else value


def format_decimal(value: Decimal) -> str:
    """A Decimal as the documented number text: no exponent, no trailing noise."""
    text = format(value, "f")
    return "0" if text in ("-0", "-0.00") else text


__all__ = ["NumberError", "check_locale", "format_decimal", "parse_amount"]
