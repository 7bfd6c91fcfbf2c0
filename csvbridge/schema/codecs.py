"""Per-column codecs: one raw CSV cell -> its JSON text, or the reason it is invalid.

Each documented field's `FieldRule` (declared once, on the pydantic models in
`csvbridge.schema.models`) is compiled here into a plain function ``codec(raw) -> bytes``.  A
cell's verdict depends only on its column and its text, so results are memoised per
column: exports repeat the same statuses, currencies, product names and dates on
thousands of rows, and a repeated value then costs one dict lookup.  This is what makes
full validation cheap enough to run at hundreds of thousands of rows per second; a
differential test checks that these codecs and the pydantic models agree.

A codec returns the JSON bytes of the value, or raises `CellError`.  Warnings (e.g. a
gtin a spreadsheet turned into ``1.35E+17``) come back as a `Flagged` value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from csvbridge.errors import ConfigError
from csvbridge.schema.models import DATE_RE, DateProblem, FieldRule, format_date, normalize_date
from csvbridge.schema.pycode import compile_function

JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
SCIENTIFIC = re.compile(r"[+-]?\d+(?:[.,]\d+)?[eE][+-]?\d+\Z")
STRAY_DECIMAL = re.compile(r"\d+[.,]0+\Z")
# a number already in plain JSON spelling, short enough to be finite: the usual cell
PLAIN_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]{1,30})?\Z").match
TRUE = {"true", "1", "yes"}
FALSE = {"false", "0", "no"}

# Identifier-like fields a spreadsheet may have turned into numbers.
IDENTIFIER_FIELDS = ("id", "gtin", "mpn", "postal_code")

CACHE_LIMIT = 2048  # per column; cleared when full, so memory stays flat


class CellError(ValueError):
    """A cell value the API would refuse, in the API's own error vocabulary."""

    def __init__(self, code: str, detail: str, value: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.value = value  # the offending source value, when it is not the cell's own


@dataclass(frozen=True, slots=True)
class Flagged:
    """A valid value that deserves a warning (or a rejection in strict mode)."""

    json: bytes
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class CodecOptions:
    decimal_comma: bool = False
    timezone: str | None = None  # default zone for naive dates
    date_formats: tuple[str, ...] = ()  # strptime formats, or "unix" / "unix_ms"
    strict: bool = False

    def tz(self) -> tzinfo | None:
        if not self.timezone:
            return None
        if self.timezone.upper() in ("UTC", "Z"):
            return UTC
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {self.timezone!r}") from None


Codec = Callable[[str], "bytes | Flagged"]


def _dumps(value: object) -> bytes:
    return orjson.dumps(value)


def number_json(raw: str, decimal_comma: bool) -> bytes:
    """A JSON number from a CSV cell, keeping the cell's own spelling when it is valid JSON."""
    text = raw.strip()
    if decimal_comma and "," in text:
        if text.rfind(".") > text.rfind(","):  # "1,234.56": not a decimal comma at all
            raise CellError("INVALID_PROPERTY_TYPE", f"{raw!r} mixes decimal separators")
        text = text.replace(".", "").replace(" ", "").replace("\u00a0", "").replace(",", ".")
    if JSON_NUMBER.match(text):
        # JSON spelling, but 1e400 or 400 digits read back as infinity
        if ("e" in text or "E" in text or len(text) > 300) and not math.isfinite(float(text)):
            raise CellError("INVALID_PROPERTY_TYPE", f"{raw!r} is not a finite number")
        return text.encode()
    if not text.isascii():  # float() reads other scripts' digits; JSON does not
        raise CellError("INVALID_PROPERTY_TYPE", f"{raw!r} is not a number")
    try:
        value = float(text)
    except ValueError:
        raise CellError("INVALID_PROPERTY_TYPE", f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise CellError("INVALID_PROPERTY_TYPE", f"{raw!r} is not a finite number")
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value)).encode()
    return _dumps(value)


def parse_date(raw: str, options: CodecOptions, tz: tzinfo | None) -> str:
    """A documented ISO-8601 string from a cell, honouring the mapping's date options."""
    text = raw.strip()
    if DATE_RE.match(text):
        try:
            datetime.fromisoformat(text)
            return text
        except ValueError:
            raise CellError("INVALID_PROPERTY_FORMAT", f"{raw!r} is not a real date") from None
    for fmt in options.date_formats:
        parsed: datetime | None = None
        if fmt in ("unix", "unix_ms"):
            if re.fullmatch(r"-?\d+(?:\.\d+)?", text):
                seconds = float(text) / (1000 if fmt == "unix_ms" else 1)
                try:
                    parsed = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
                except OverflowError:
                    raise CellError(
                        "INVALID_PROPERTY_FORMAT", f"{raw!r} is out of range as a {fmt} time"
                    ) from None
        else:
            try:
                parsed = datetime.strptime(text, fmt)
            except ValueError:
                parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                if tz is None:
                    raise CellError(
                        "INVALID_PROPERTY_FORMAT",
                        f"{raw!r} has no UTC offset; set `timezone` in the mapping",
                    )
                parsed = parsed.replace(tzinfo=tz)
            return format_date(parsed)
    try:
        return normalize_date(text)
    except DateProblem as exc:
        if tz is not None:
            try:
                naive = datetime.fromisoformat(text)
            except ValueError:
                naive = None
            if naive is not None and naive.tzinfo is None:
                return format_date(naive.replace(tzinfo=tz))
        raise CellError("INVALID_PROPERTY_FORMAT", str(exc)) from None


# A cell the codecs never see with a NUL: exports that carry one are damaged or binary,
# and the API would store it as \u0000.
NUL_FREE = '"\\x00" not in v'
# An identifier a spreadsheet cannot have damaged: no trailing 0, no exponent.
UNDAMAGED = 'v[-1:] != "0" and "e" not in v and "E" not in v'


@dataclass(frozen=True, slots=True)
class FastCheck:
    """A Python test on a cell ``v`` under which the field's codec returns exactly its
    plain JSON: ``v.encode()`` for a number, ``orjson.dumps(v)`` for a text.

    It is the first line of the codec itself (`make_codec` compiles it in) and the
    generated row code inlines the same text, so the two cannot drift: both come from
    the field's `FieldRule`.  Cells of ids, amounts and e-mails are mostly unique: memoising
    them does not pay, and three nested calls per cell do add up.
    """

    test: str
    number: bool

    @property
    def value(self) -> str:
        """The expression of the member's JSON when `test` holds."""
        return "v.encode()" if self.number else "_dumps(v)"


def fast_check(path: str, rule: FieldRule) -> FastCheck | None:
    """The `FastCheck` of a field, or None when it has none (enumerations, patterns,
    dates, booleans, lists, custom values: their memoised codec is the fast path)."""
    leaf = path.rsplit(".", 1)[-1]
    tests: list[str] = []
    if rule.kind == "number":
        tests.append("PLAIN_NUMBER(v)")  # never holds a NUL
        if rule.ge is not None:
            tests.append(f"float(v) >= {rule.ge!r}")
        if rule.le is not None:
            tests.append(f"float(v) <= {rule.le!r}")
    elif rule.kind == "text" and not rule.choices and not rule.pattern:
        tests.append(NUL_FREE)
        lo, hi = rule.min_len, rule.max_len
        if lo is not None and lo > 1:  # a cell reaching the codec is never empty
            tests.append(f"len(v) >= {lo}")
        if hi is not None:
            tests.append(f"len(v) <= {hi}")
    else:
        return None
    if leaf in IDENTIFIER_FIELDS:
        tests.append(UNDAMAGED)
    return FastCheck(" and ".join(tests), rule.kind == "number")


def _refuse_nul(raw: str) -> None:
    at = raw.find("\x00")
    if at >= 0:
        raise CellError(
            "NUL_BYTE",
            f"contains a NUL byte (\\x00) at character {at + 1}: the export is damaged "
            "or binary there; remove the byte or re-export the file",
        )


def _text_codec(rule: FieldRule) -> Codec:
    lo, hi = rule.min_len, rule.max_len
    pattern = re.compile(rule.pattern) if rule.pattern else None
    choices = frozenset(rule.choices) if rule.choices else None
    what = rule.what

    def codec(raw: str) -> bytes:
        _refuse_nul(raw)
        if choices is not None and raw not in choices:
            raise CellError(
                "INVALID_PROPERTY_FORMAT",
                f"{raw!r} is not one of: {', '.join(sorted(choices))}",
            )
        n = len(raw)
        if lo is not None and n < lo:
            raise CellError("INVALID_PROPERTY_FORMAT", f"must have at least {lo} characters")
        if hi is not None and n > hi:
            raise CellError(
                "INVALID_PROPERTY_FORMAT", f"has {n} characters; at most {hi} are allowed"
            )
        # fullmatch: the model's "^...$" (Rust regex) does not accept a trailing newline
        if pattern is not None and not pattern.fullmatch(raw):
            raise CellError("INVALID_PROPERTY_FORMAT", f"{raw!r} is not a valid {what}")
        return _dumps(raw)

    return codec


def _number_codec(rule: FieldRule, decimal_comma: bool) -> Codec:
    ge, le = rule.ge, rule.le

    def codec(raw: str) -> bytes:
        _refuse_nul(raw)
        out = number_json(raw, decimal_comma)
        if ge is not None and float(out) < ge:
            raise CellError("INVALID_PROPERTY_FORMAT", f"{raw!r} is less than {ge:g}")
        if le is not None and float(out) > le:
            raise CellError("INVALID_PROPERTY_FORMAT", f"{raw!r} is more than {le:g}")
        return out

    return codec


def _slow_codec(rule: FieldRule, options: CodecOptions) -> Codec:
    """The whole rule of a field, for every cell its `FastCheck` does not cover."""
    if rule.kind == "number":
        return _number_codec(rule, options.decimal_comma)
    if rule.kind == "text":
        return _text_codec(rule)
    if rule.kind == "bool":

        def codec(raw: str) -> bytes:
            low = raw.strip().lower()
            if low in TRUE:
                return b"true"
            if low in FALSE:
                return b"false"
            _refuse_nul(raw)
            raise CellError(
                "INVALID_PROPERTY_TYPE", f"{raw!r} is not a boolean (true/false/1/0/yes/no)"
            )

    elif rule.kind == "date":
        tz = options.tz()

        def codec(raw: str) -> bytes:
            _refuse_nul(raw)
            return _dumps(parse_date(raw, options, tz))

    elif rule.kind == "list":

        def codec(raw: str) -> bytes:
            _refuse_nul(raw)
            return _dumps([part for part in raw.split("|") if part])

    else:  # "object": a custom value, any text

        def codec(raw: str) -> bytes:
            _refuse_nul(raw)
            return _dumps(raw)

    return codec


def make_codec(path: str, rule: FieldRule, options: CodecOptions) -> Codec:
    """The codec for the field at dot path `path` (documented, or a custom.* key).

    Its first line is the field's `FastCheck` (compiled from the same text the row code
    inlines); the rest of the rule follows.
    """
    leaf = path.rsplit(".", 1)[-1]
    slow = _slow_codec(rule, options)
    if leaf in IDENTIFIER_FIELDS and rule.kind != "object":
        slow = _identifier_guard(slow, leaf)
    fast = fast_check(path, rule)
    if fast is None:
        return slow
    source = (
        f"def codec(v):  # {path}\n"
        f"    if {fast.test}:\n"
        f"        return {fast.value}\n"
        "    return slow(v)\n"
    )
    env = {"PLAIN_NUMBER": PLAIN_NUMBER, "_dumps": _dumps, "slow": slow}
    return compile_function("codec", source, env, f"codec {path}")  # type: ignore[no-any-return]


_undamaged = eval(f"lambda v: {UNDAMAGED}")  # noqa: S307 - our own constant


def _identifier_guard(inner: Codec, leaf: str) -> Codec:
    """Flag identifiers a spreadsheet damaged (``1.35E+17``, ``12345.0``); never convert."""

    def codec(raw: str) -> bytes | Flagged:
        out = inner(raw)
        if _undamaged(raw):
            return out  # neither pattern below can match
        if SCIENTIFIC.match(raw):
            return Flagged(
                out,
                "SPREADSHEET_DAMAGE",
                f"{leaf} is in scientific notation, as a spreadsheet writes large numbers: "
                "the original digits are lost; re-export the column as text",
            )
        if STRAY_DECIMAL.match(raw):
            return Flagged(
                out,
                "SPREADSHEET_DAMAGE",
                f"{leaf} ends in a decimal part, as a spreadsheet writes numbers: "
                "re-export the column as text",
            )
        return out

    return codec


class CachedCodec:
    """A codec with a bounded per-column memo of verdicts.

    The memo holds the finished JSON member (``"key":value`` bytes), a `Flagged` value,
    or the `CellError`, so a repeated cell costs one dict lookup and no allocation.
    """

    __slots__ = ("codec", "cache", "prefix")

    def __init__(self, codec: Codec, key: str = "") -> None:
        self.codec = codec
        self.prefix = orjson.dumps(key) + b":" if key else b""
        self.cache: dict[str, bytes] = {}  # valid members only

    def __call__(self, raw: str) -> bytes | Flagged | CellError:
        try:
            out = self.codec(raw)
        except CellError as exc:
            return exc  # not memoised: each occurrence is reported with its own line
        if isinstance(out, Flagged):
            return Flagged(self.prefix + out.json, out.code, out.detail)
        result = self.prefix + out
        cache = self.cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[raw] = result
        return result
