"""Map an export's own columns onto the documented fields.

Files that already use the documented header format need no mapping: each header name
(case and surrounding spaces ignored) is a dot path.  Other exports come with a YAML
mapping, keyed by the documented path it fills::

    options:
      timezone: America/Los_Angeles     # for dates without an offset
      date_formats: [unix]              # tried before ISO-8601 (strptime formats too)
      decimal_comma: false
    fields:
      id: Order ID                      # a column
      type: {value: online}             # a constant
      user.email: {column: Email}
      conversion_items.product.name: {template: "{Title} ({Variant})"}
      payment_method:                   # a value map
        column: Payment Type
        map: {Visa: card, MasterCard: card, PayPal: online_payment_system}
      status:                           # several rules: the first that yields a value wins
        - {column: Paid, map: {"-2": canceled, "-1": partially_returned}, fallthrough: true}
        - {column: Fulfilment Status, map: {"0": pending, "5": shipped}}
      created: {column: Order Date, date: unix}

A rule may also set ``default`` (used when the cell is empty) and ``passthrough: true``
(keep values that are not in ``map``).  A value missing from a map is an error for that
row, named with its column and line — unless ``fallthrough`` sends it to the next rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from csvbridge.errors import ConfigError, InputError
from csvbridge.schema.codecs import CellError, CodecOptions
from csvbridge.schema.models import format_date


class Rule(BaseModel):
    """How one documented field gets its value from a row."""

    model_config = ConfigDict(extra="forbid")

    column: str | None = None
    value: str | None = None
    template: str | None = None
    map: dict[str, str] | None = None
    passthrough: bool = False
    fallthrough: bool = False
    default: str | None = None
    date: str | None = None  # "unix", "unix_ms" or a strptime format

    @model_validator(mode="before")
    @classmethod
    def _stringify(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"column": data}
        if isinstance(data, dict):
            data = dict(data)
            if data.get("map") is not None:
                data["map"] = {_s(k): _s(v) for k, v in data["map"].items()}
            for key in ("value", "default"):
                if data.get(key) is not None:
                    data[key] = _s(data[key])
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Rule:
        sources = [x for x in (self.column, self.value, self.template) if x is not None]
        if len(sources) != 1:
            raise ValueError("each rule needs exactly one of column, value, template")
        return self


def _s(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class MappingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str | None = None
    date_formats: list[str] = []
    decimal_comma: bool | None = None
    encoding: str | None = None
    delimiter: str | None = None


class Mapping(BaseModel):
    """A whole mapping file."""

    model_config = ConfigDict(extra="forbid")

    options: MappingOptions = MappingOptions()
    fields: dict[str, list[Rule]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("fields"), dict):
            data = dict(data)
            data["fields"] = {
                k: (v if isinstance(v, list) else [v]) for k, v in data["fields"].items()
            }
        return data


def load_mapping(path: str | Path) -> Mapping:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read mapping: {exc.strerror}", file=str(p)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"mapping is not valid YAML: {exc}", file=str(p)) from None
    try:
        return Mapping.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid mapping: {msgs}", file=str(p)) from None


def _norm(name: str) -> str:
    return name.strip().lower()


@dataclass(slots=True)
class RowTransform:
    """Turns a source row into a row of documented values, one per target path."""

    paths: list[str]
    sources: list[str]  # human description of each target's source column(s)
    source_cols: list[int | None]  # the (first) source column of each target
    fn: Callable[[list[str]], list[str]]
    errors: list[tuple[int, CellError]]  # filled per call: (target index, error)


_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


def compile_mapping(mapping: Mapping, header: list[str], options: CodecOptions) -> RowTransform:
    """Resolve the mapping against a file's header; fail early on missing columns."""
    index = {_norm(h): i for i, h in enumerate(header)}

    def col(name: str, path: str) -> int:
        i = index.get(_norm(name))
        if i is None:
            raise InputError(
                f"column {name!r} (mapped to {path}) is not in the file's header; "
                f"header has: {', '.join(header[:30])}"
            )
        return i

    tz = options.tz()
    getters: list[Callable[[list[str]], str]] = []
    sources: list[str] = []
    source_cols: list[int | None] = []
    paths = list(mapping.fields)
    for path, rules in mapping.fields.items():
        compiled = [_compile_rule(r, path, col, tz) for r in rules]
        sources.append(" / ".join(r.column or r.template or f"={r.value}" for r in rules))
        first_col = next((r.column for r in rules if r.column), None)
        source_cols.append(index.get(_norm(first_col)) if first_col else None)
        getters.append(_first_of(compiled, path))

    errors: list[tuple[int, CellError]] = []

    def fn(row: list[str]) -> list[str]:
        out = []
        for i, g in enumerate(getters):
            try:
                out.append(g(row))
            except CellError as exc:
                errors.append((i, exc))
                out.append("")
        return out

    return RowTransform(paths, sources, source_cols, fn, errors)


class _Fallthrough(Exception):
    def __init__(self, detail: str, value: str) -> None:
        super().__init__(detail)
        self.value = value


def _first_of(rules: list[Callable[[list[str]], str]], path: str) -> Callable[[list[str]], str]:
    if len(rules) == 1:
        only = rules[0]

        def single(row: list[str]) -> str:
            try:
                return only(row)
            except _Fallthrough as exc:
                raise CellError("UNMAPPED_VALUE", str(exc), exc.value) from None

        return single

    def first(row: list[str]) -> str:
        last: _Fallthrough | None = None
        for rule in rules:
            try:
                value = rule(row)
            except _Fallthrough as exc:
                last = exc
                continue
            if value:
                return value
        if last is not None:
            raise CellError("UNMAPPED_VALUE", str(last), last.value)
        return ""

    return first


def _compile_rule(
    rule: Rule, path: str, col: Callable[[str, str], int], tz: Any
) -> Callable[[list[str]], str]:
    if rule.value is not None:
        constant = rule.value
        return lambda row: constant
    if rule.template is not None:
        names = _TEMPLATE_FIELD.findall(rule.template)
        idx = {n: col(n, path) for n in names}
        tmpl = rule.template

        def raw_of(row: list[str]) -> str:
            text = _TEMPLATE_FIELD.sub(lambda m: row[idx[m.group(1)]], tmpl)
            return " ".join(text.split())

    else:
        i = col(rule.column, path)  # type: ignore[arg-type]

        def raw_of(row: list[str]) -> str:
            return row[i]

    vmap = {k: v for k, v in (rule.map or {}).items()}
    vmap_ci = {_norm(k): v for k, v in vmap.items()}
    has_map = rule.map is not None
    default = rule.default or ""
    date = rule.date
    source = rule.column or rule.template

    def get(row: list[str]) -> str:
        raw = raw_of(row)
        if not raw.strip():
            return default
        if has_map:
            hit = vmap.get(raw)
            if hit is None:
                hit = vmap_ci.get(_norm(raw))
            if hit is None:
                if rule.fallthrough:
                    raise _Fallthrough(
                        f"value {raw!r} of {source!r} is not in the mapping for {path}", raw
                    )
                if not rule.passthrough:
                    raise CellError(
                        "UNMAPPED_VALUE",
                        f"value {raw!r} of {source!r} is not in the mapping for {path} "
                        f"(known: {', '.join(list(vmap)[:12])})",
                        raw,
                    )
                hit = raw
            raw = hit
        if date:
            raw = convert_date(raw, date, tz)
        return raw

    return get


def convert_date(raw: str, how: str, tz: Any) -> str:
    """A mapped date cell -> documented ISO-8601 (naive values take the default zone)."""
    text = raw.strip()
    try:
        if how in ("unix", "unix_ms"):
            seconds = float(text) / (1000 if how == "unix_ms" else 1)
            parsed = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        elif how == "iso":
            parsed = datetime.fromisoformat(text)
        else:
            parsed = datetime.strptime(text, how)
    except (ValueError, OverflowError):
        raise CellError(
            "INVALID_PROPERTY_FORMAT", f"{raw!r} does not match the date format {how!r}", raw
        ) from None
    if parsed.tzinfo is None:
        if tz is None:
            raise CellError(
                "INVALID_PROPERTY_FORMAT",
                f"{raw!r} has no UTC offset; set options.timezone in the mapping",
                raw,
            )
        parsed = parsed.replace(tzinfo=tz)
    return format_date(parsed)
