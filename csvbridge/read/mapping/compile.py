"""A mapping compiled against one file's header into a row function (`RowTransform`).

Compiled once per file: columns are resolved to indexes (a missing one is an
`InputError` naming it, with the closest header name), expressions are compiled by
`language.Language`, and each target gets one small closure.  Per row:

1. roles (``rows.roles``) are tried in order: a skipped row returns None (its reason in
   ``skip``), an order-only row fills order fields only;
2. the order key is read, or filled down from the row above (``rows.fill_down``);
3. order-level targets are evaluated only on the row that carries the order's fields
   (its key cell is set, and ``rows.order_fields_when`` names a filled cell): exports
   that write order fields on the first row only then cause no false conflicts, and an
   order's expressions run once per order, not once per item;
4. item-level targets are evaluated on item rows.

Warnings (a truncated text, a local time in a DST gap or fold) are kept in ``notes``
with the target they concern; errors in ``errors``: the fold turns both into problems
naming line, column and value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from csvbridge.errors import InputError
from csvbridge.read.mapping.dates import convert_date
from csvbridge.read.mapping.language import Compiled, ExpressionError, Language, suggest
from csvbridge.read.mapping.rules import ITEMS, Mapping, Rule
from csvbridge.read.numbers import NumberError, format_decimal, parse_amount
from csvbridge.schema.codecs import CellError, CodecOptions

TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")
ROLE_PATH = ""  # the role cell appended to each row: "o" marks an order-only row
Note = tuple[int, str, str, str]  # (target index, code, detail, value)


def _norm(name: str) -> str:
    return name.strip().lower()


@dataclass(slots=True)
class RowTransform:
    """Turns a source row into a row of documented values, one per target path.

    ``fn(row)`` returns the values, or None for a skipped row (reason in ``skip``).
    The last value is the row's role cell: ``""`` an item row that carries the order's
    fields, ``"i"`` an item row that does not (its order-level cells are all empty),
    ``"o"`` an order-only row (no item).
    """

    paths: list[str]
    sources: list[str]  # human description of each target's source column(s)
    source_cols: list[int | None]  # the (first) source column of each target
    fn: Callable[[list[str]], list[str] | None]
    errors: list[tuple[int, CellError]]  # filled per call: (target index, error)
    notes: list[Note] = field(default_factory=list)  # warnings, filled per call
    skip: str | None = None  # why the last row was skipped
    continued: bool = False  # the last row had no key and no row above to fill from
    fill_down: bool = False
    key_source: str = "id"
    line_index: bool = False  # conversion_items.id is the line's index in its order
    role_col: int = -1
    defaults: dict[int, str] = field(default_factory=dict)  # order-level, per order
    state: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget the row above (a new chunk starts)."""
        self.state.pop("key", None)


def check_items(mapping: Mapping) -> None:
    """An export with no item rows (one row per order) is refused with one clear
    message, unless the mapping declares the item each order gets."""
    if not any(p.startswith(ITEMS) for p in mapping.targets()):
        raise InputError(
            "the mapping fills no conversion_items.* field: this export has one row per "
            "order and no item rows (like Magento's order grid); a conversion needs at "
            "least one item, so declare one explicitly with synthetic_item: (docs/mapping.md)"
        )


def compile_mapping(mapping: Mapping, header: list[str], options: CodecOptions) -> RowTransform:
    """Resolve the mapping against a file's header; fail early on missing columns."""
    index: dict[str, int] = {}
    for i, h in enumerate(header):
        index.setdefault(_norm(h), i)

    def col(name: str, path: str) -> int:
        i = index.get(_norm(name))
        if i is None:
            raise InputError(
                f"column {name!r} (mapped to {path}) is not in the file's header"
                + suggest(name, header)
                + f"; header has: {', '.join(header[:30])}"
            )
        return i

    targets = mapping.targets()
    tz = options.tz()
    lang = Language(header, mapping.options.locale)
    ctx_notes = lang.context.notes
    paths = list(targets)
    getters: list[Callable[[list[str]], str]] = []
    sources: list[str] = []
    source_cols: list[int | None] = []
    line_index = False
    reads: list[list[int]] = []
    for path, rules in targets.items():
        try:
            compiled = [_compile_rule(r, path, col, tz, lang, mapping.options.locale) for r in rules]
        except ExpressionError as exc:
            raise InputError(str(exc)) from None
        line_index = line_index or any(r.line_index for r in rules)
        reads.append(sorted({index[_norm(c)] for r in rules for c in r.columns()}))
        sources.append(" / ".join(r.describe() for r in rules))
        first_col = next((c for r in rules for c in r.columns()), None)
        source_cols.append(index.get(_norm(first_col)) if first_col else None)
        getters.append(_first_of(compiled, path, any(r.fallthrough for r in rules)))
    roles: list[tuple[Compiled, str | None]] = []
    for n, role in enumerate(mapping.rows.roles):
        try:
            roles.append((lang.compile(role.when, f"rows.roles[{n}]"), role.skip))
        except ExpressionError as exc:
            raise InputError(str(exc)) from None
    when_col = None
    if mapping.rows.order_fields_when:
        when_col = col(mapping.rows.order_fields_when, "rows.order_fields_when")

    key_i = paths.index("id") if "id" in paths else -1
    order_t = [i for i, p in enumerate(paths) if not p.startswith(ITEMS) and i != key_i]
    item_t = [i for i, p in enumerate(paths) if p.startswith(ITEMS)]
    n = len(paths)
    # an order-level value when the cells a target reads are all empty (a default, a
    # constant after a fallthrough): applied once per order by the fold, so blank
    # continuation rows neither evaluate it nor conflict with the order's real value
    blank_row = [""] * len(header)
    defaults: dict[int, str] = {}
    lazy: list[tuple[int, list[int]]] = []
    for i in order_t:
        if not reads[i]:
            continue  # a constant: the same on every row
        lazy.append((i, reads[i]))
        try:
            value = getters[i](blank_row)
        except (CellError, _Fallthrough):
            continue
        if value:
            defaults[i] = value
    lazy_at = {i for i, _ in lazy}
    eager_order = [i for i in order_t if i not in lazy_at]
    role_at = n
    paths.append(ROLE_PATH)
    sources.append("rows.roles")
    source_cols.append(None)
    errors: list[tuple[int, CellError]] = []
    fill_down = mapping.rows.fill_down
    T = RowTransform(
        paths,
        sources,
        source_cols,
        lambda row: None,
        errors,
        fill_down=fill_down,
        key_source=sources[key_i] if key_i >= 0 else "id",
        line_index=line_index,
        role_col=role_at,
        defaults=defaults,
    )
    notes = T.notes
    state = T.state
    item_get = [(i, getters[i]) for i in item_t]

    def run(i: int, row: list[str], out: list[str]) -> None:
        try:
            out[i] = getters[i](row)
        except CellError as exc:
            errors.append((i, exc))
        if ctx_notes:
            notes.extend((i, code, detail, value) for code, detail, value in ctx_notes)
            ctx_notes.clear()

    def fn(row: list[str]) -> list[str] | None:
        order_only = False
        for when, skip in roles:
            try:
                hit = when(row)
            except CellError as exc:
                errors.append((role_at, exc))
                continue
            if hit:
                if skip is not None:
                    T.skip = skip
                    return None
                order_only = True
                break
        out = [""] * (n + 1)
        if key_i < 0:  # no key mapped: the plan names the missing id
            key = "-"
        else:
            run(key_i, row, out)
            key = out[key_i]
        T.continued = False
        if key:
            state["key"] = key
            carries = when_col is None or bool(row[when_col].strip())
        else:
            carries = False
            if fill_down:
                above = state.get("key")
                if above is None:
                    T.continued = True
                else:
                    out[key_i] = above
        if not carries:
            out[role_at] = "i"  # an item row without the order's fields
        else:
            for i in eager_order:
                run(i, row, out)
            for i, cols in lazy:
                for j in cols:
                    if row[j]:
                        run(i, row, out)
                        break
        if order_only:
            out[role_at] = "o"
        else:
            # the hot loop (every item row): inlined `run`
            for i, get in item_get:
                try:
                    out[i] = get(row)
                except CellError as exc:
                    errors.append((i, exc))
                if ctx_notes:
                    notes.extend((i, code, detail, value) for code, detail, value in ctx_notes)
                    ctx_notes.clear()
        return out

    T.fn = fn
    return T


class _Fallthrough(Exception):
    def __init__(self, detail: str, value: str) -> None:
        super().__init__(detail)
        self.value = value


def _first_of(
    rules: list[Callable[[list[str]], str]], path: str, can_fall: bool = True
) -> Callable[[list[str]], str]:
    if len(rules) == 1 and not can_fall:
        return rules[0]  # nothing to translate: the rule itself
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
    rule: Rule,
    path: str,
    col: Callable[[str, str], int],
    tz: Any,
    lang: Language,
    locale: str,
) -> Callable[[list[str]], str]:
    if rule.line_index:
        if path != ITEMS + "id":
            raise InputError(f"{path}: line_index fills conversion_items.id only")
        return lambda row: ""  # the fold writes the index (it knows the order's rows)
    if rule.value is not None and not (rule.map or rule.date or rule.number):
        constant = rule.value
        return lambda row: constant
    if rule.value is not None:
        fixed = rule.value

        def raw_of(row: list[str]) -> str:
            return fixed

    elif rule.expr is not None:
        expr = lang.compile(rule.expr, path, text=True)
        reads = [col(name, path) for name in rule.columns()]

        def raw_of(row: list[str]) -> str:
            # every cell it reads is empty (a continuation row): no value, not "0"
            for i in reads:
                if row[i]:
                    return expr(row)  # type: ignore[no-any-return]
            return "" if reads else expr(row)  # type: ignore[no-any-return]

        if not (rule.map or rule.date or rule.number or rule.default):
            return raw_of

    elif rule.template is not None:
        names = TEMPLATE_FIELD.findall(rule.template)
        idx = {n: col(n, path) for n in names}
        tmpl = rule.template

        def raw_of(row: list[str]) -> str:
            text = TEMPLATE_FIELD.sub(lambda m: row[idx[m.group(1)]], tmpl)
            return " ".join(text.split())

    else:
        i = col(rule.column, path)  # type: ignore[arg-type]
        if not (rule.map or rule.date or rule.number or rule.default):
            return lambda row: row[i]  # the common case: a plain copy

        def raw_of(row: list[str]) -> str:
            return row[i]

    vmap = dict(rule.map or {})
    vmap_ci = {_norm(k): v for k, v in vmap.items()}
    has_map = rule.map is not None
    default = rule.default or ""
    date = rule.date
    number = (locale if rule.number is True else rule.number) or None
    source = rule.describe()
    notes = lang.context.notes

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
        if number:
            try:
                raw = format_decimal(parse_amount(raw, number))
            except NumberError as exc:
                raise CellError("INVALID_NUMBER", str(exc), raw) from None
        if date:
            raw = convert_date(raw, date, tz, notes)
        return raw

    return get


__all__ = ["ROLE_PATH", "check_items", "TEMPLATE_FIELD", "RowTransform", "compile_mapping", "convert_date"]
