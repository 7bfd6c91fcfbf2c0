"""What a mapping file says: the YAML model, loaded and checked before any row is read.

A mapping is keyed by the documented path each rule fills::

    base: shopify                       # start from a preset, override below (optional)
    options:
      timezone: Europe/Paris            # local dates without an offset are read here
      locale: de_DE                     # how numbers are written (dec(), number: true)
      date_formats: [unix]
    rows:
      fill_down: false                  # blank order key: the row above's (continuation rows)
      order_fields_when: Total          # order fields are read only where this cell is set
      roles:                            # first match wins; other rows are items
        - {skip: tip line, when: "c['Lineitem name'] == 'Tip'"}
        - {order: true, when: "not c['Lineitem sku']"}
    synthetic_item: {...}               # one item per order-only row (see below)
    fields:
      id: Order ID                      # a column
      type: {value: online}             # a constant
      final_amount: {expr: "dec(c['Total']) - dec(c['Refunded Amount'])"}
      conversion_items.id: {line_index: true}
      conversion_items.price: {column: Price, number: true}
      created: {column: Date, date: "%d.%m.%Y %H:%M"}

The checks made at load time (`check_targets`) refuse an unknown target path with a
suggestion (``billing_adress.locality — did you mean billing_address.locality?``), a
map or constant outside a documented enumeration, and an invalid locale or zone, so a
misspelt mapping stops before it can drop data silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from csvbridge.errors import ConfigError
from csvbridge.read.mapping.language import ExpressionError, column_names, suggest
from csvbridge.read.numbers import NumberError, check_locale
from csvbridge.schema.structure import STRUCTURES

ITEMS = "conversion_items."


class Rule(BaseModel):
    """How one documented field gets its value from a row."""

    model_config = ConfigDict(extra="forbid")

    column: str | None = None
    value: str | None = None
    template: str | None = None
    expr: str | None = None
    line_index: bool = False  # the item's position in its order (1, 2, ...)
    map: dict[str, str] | None = None
    passthrough: bool = False
    fallthrough: bool = False
    default: str | None = None
    date: str | None = None  # "unix", "unix_ms", "iso" or a strptime format
    number: bool | str = False  # read as the shop writes numbers (True: options.locale)

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
        sources = [x for x in (self.column, self.value, self.template, self.expr) if x is not None]
        if len(sources) + self.line_index != 1:
            raise ValueError("each rule needs exactly one of column, value, template, expr, line_index")
        if isinstance(self.number, str):
            try:
                check_locale(self.number)
            except NumberError as exc:
                raise ValueError(str(exc)) from None
        if self.expr is not None:
            try:
                column_names(self.expr)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from None
        return self

    def describe(self) -> str:
        """The rule's source, as the report and the workbench name it."""
        if self.column is not None:
            return self.column
        if self.template is not None:
            return self.template
        if self.expr is not None:
            return "=" + self.expr
        if self.line_index:
            return "(line index)"
        return f"={self.value}"

    def columns(self) -> list[str]:
        """Every column the rule reads."""
        if self.column is not None:
            return [self.column]
        if self.template is not None:
            from csvbridge.read.mapping.compile import TEMPLATE_FIELD

            return TEMPLATE_FIELD.findall(self.template)
        if self.expr is not None:
            return column_names(self.expr)
        return []


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
    locale: str = "en_US"  # how numbers are written: dec() and `number: true`

    @model_validator(mode="after")
    def _valid(self) -> MappingOptions:
        try:
            check_locale(self.locale)
        except NumberError as exc:
            raise ValueError(str(exc)) from None
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {self.timezone!r} (e.g. Europe/Paris)") from None
        return self


class Role(BaseModel):
    """Which rows are not items: ``skip`` (with its reason) or ``order`` (merged)."""

    model_config = ConfigDict(extra="forbid")

    when: str
    skip: str | None = None
    order: bool = False

    @model_validator(mode="after")
    def _one(self) -> Role:
        if (self.skip is None) == (not self.order):
            raise ValueError("a role is either {skip: reason, when: ...} or {order: true, when: ...}")
        try:
            column_names(self.when)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        return self


class Rows(BaseModel):
    """How the export's rows relate to orders."""

    model_config = ConfigDict(extra="forbid")

    fill_down: bool = False
    order_fields_when: str | None = None  # a column: order fields only where it is set
    roles: list[Role] = []


class Mapping(BaseModel):
    """A whole mapping file."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = None  # the preset it was built on (already merged in)
    options: MappingOptions = MappingOptions()
    rows: Rows = Rows()
    synthetic_item: dict[str, list[Rule]] | None = None
    fields: dict[str, list[Rule]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("fields", "synthetic_item"):
                if isinstance(data.get(key), dict):
                    data[key] = {k: (v if isinstance(v, list) else [v]) for k, v in data[key].items()}
        return data

    @model_validator(mode="after")
    def _targets(self) -> Mapping:
        check_targets(self)
        return self

    def targets(self) -> dict[str, list[Rule]]:
        """Every target path with its rules (the synthetic item's under conversion_items.)."""
        out = dict(self.fields)
        for k, v in (self.synthetic_item or {}).items():
            out[ITEMS + k] = v
        return out


def _known(path: str) -> tuple[bool, list[str]]:
    """Whether any kind documents `path`, and every documented path (for suggestions)."""
    everything: list[str] = []
    for st in STRUCTURES.values():
        rule, _ = st.classify(path)
        if rule is not None or path in st.read_only:
            return True, []
        everything.extend(st.rules)
    return False, everything


def check_targets(mapping: Mapping) -> None:
    """Unknown paths and values outside an enumeration are errors, with suggestions."""
    problems: list[str] = []
    if mapping.synthetic_item is not None:
        clash = [p for p in mapping.fields if p.startswith(ITEMS)]
        if clash:
            problems.append(
                f"synthetic_item declares the one item of each order; remove {clash[0]} from fields"
            )
    for path, rules in mapping.targets().items():
        known, everything = _known(path)
        if not known:
            problems.append(f"unknown target {path!r}" + suggest(path, sorted(set(everything))))
            continue
        choices = _choices(path)
        if not choices:
            continue
        for r in rules:
            values = list((r.map or {}).values())
            if r.value is not None:
                values.append(r.value)
            if r.default is not None:
                values.append(r.default)
            for v in values:
                if v not in choices:
                    problems.append(
                        f"{path}: {v!r} is not one of {', '.join(choices)}" + suggest(v, list(choices))
                    )
    if problems:
        raise ValueError("; ".join(problems))


def _choices(path: str) -> tuple[str, ...]:
    for st in STRUCTURES.values():
        rule = st.rules.get(path)
        if rule is not None and rule.choices:
            return tuple(rule.choices)
    return ()


def parse_mapping(raw: Any, where: str) -> Mapping:
    """A mapping from its YAML data; ``base:`` merges a preset underneath."""
    if not isinstance(raw, dict):
        raise ConfigError("a mapping is a YAML mapping (options, rows, fields)", file=where)
    base = raw.get("base")
    if base:
        from csvbridge.read.mapping.presets import preset_data

        raw = merge(preset_data(str(base)), raw)
    try:
        return Mapping.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid mapping: {_problems(exc)}", file=where) from None


def _problems(exc: ValidationError) -> str:
    """pydantic's errors as a person reads them: "where: what", without its "Value error,"
    prefix, and without a where when the check is about the whole mapping."""
    parts = []
    for e in exc.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        where = ".".join(map(str, e["loc"]))
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: options/rows/fields merged key by key, the rest replaced."""
    out = dict(base)
    for key, value in over.items():
        if key in ("options", "rows", "fields", "synthetic_item") and isinstance(value, dict):
            out[key] = {**(base.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def load_mapping(path: str | Path) -> Mapping:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read mapping: {exc.strerror}", file=str(p)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"mapping is not valid YAML: {exc}", file=str(p)) from None
    return parse_mapping(raw, str(p))


__all__ = [
    "Mapping",
    "MappingOptions",
    "Role",
    "Rows",
    "Rule",
    "check_targets",
    "load_mapping",
    "merge",
    "parse_mapping",
]
