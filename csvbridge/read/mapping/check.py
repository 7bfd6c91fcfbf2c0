"""The mapping workbench: what a mapping makes of a file, without shipping anything.

`check_file` converts the file into a temporary folder (the same engine, validation
and report as a real run) and shows, for the first N orders, how each target field
was filled — the rule (column, expression, constant...) and the value sent — then the
source columns no rule reads, the recommended fields left unfilled, and the errors
and warnings the full run reports.  An integrator edits the mapping and runs it
again: seconds per iteration, nothing sent.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csvbridge.config import ConvertSettings
from csvbridge.read.csvfile import CsvFile
from csvbridge.read.mapping.compile import TEMPLATE_FIELD
from csvbridge.read.mapping.presets import load_preset
from csvbridge.read.mapping.rules import ITEMS, Mapping, load_mapping

# what Commanders Act can use beyond the required fields: shown when left unfilled
RECOMMENDED = (
    "user.email",
    "status",
    "original_amount",
    "final_amount",
    "tax_amount",
    "shipping_amount",
    "discount_amount",
    "payment_method",
    "conversion_items.price",
    "conversion_items.product.name",
)


@dataclass(slots=True)
class Fill:
    """One target of one order: the rule that fills it and the value sent."""

    path: str
    rule: str
    value: Any  # None: empty (left out of the object)


@dataclass(slots=True)
class OrderView:
    id: str
    lines: tuple[int, ...]
    fields: list[Fill]
    items: list[list[Fill]]


@dataclass(slots=True)
class Workbench:
    """What `check_file` found; `as_text()` is what `csvbridge mapping check` prints."""

    file: str
    mapping: str
    orders: list[OrderView]
    unmapped_columns: list[str]
    unfilled: list[str]  # recommended fields: not mapped, or empty in the orders shown
    errors: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_text(self) -> str:
        out = [f"{self.file} with {self.mapping}"]
        c = self.counts
        out.append(
            f"  {c.get('rows_read', 0)} rows: {c.get('objects_valid', 0)} orders valid, "
            f"{c.get('objects_rejected', 0)} rejected, {c.get('rows_skipped', 0)} rows skipped"
        )
        for o in self.orders:
            out.append(f"\norder {o.id} (lines {', '.join(map(str, o.lines[:20]))})")
            out.extend(_fill_line(f) for f in o.fields)
            for n, item in enumerate(o.items, 1):
                out.append(f"  item {n}")
                out.extend("  " + _fill_line(f) for f in item)
        if self.unmapped_columns:
            out.append("\nsource columns no rule reads: " + ", ".join(self.unmapped_columns))
        if self.unfilled:
            out.append("recommended fields left unfilled: " + ", ".join(self.unfilled))
        for kind, problems in (("error", self.errors), ("warning", self.warnings)):
            for p in problems:
                meta = p["meta"]
                where = [f"x{meta['error_count']}"]
                if meta.get("column"):
                    where.append(f"column {meta['column']!r}")
                if meta.get("line_numbers"):
                    where.append("lines " + ",".join(map(str, meta["line_numbers"][:8])))
                if meta.get("values"):
                    where.append(f"values {meta['values'][:3]}")
                out.append(f"{kind} {p['code']}: {p['detail']} [{'; '.join(where)}]")
        if not self.errors:
            out.append("no errors: a full run would ship every order shown valid above")
        return "\n".join(out) + "\n"


def _fill_line(f: Fill) -> str:
    value = "(empty)" if f.value is None else json.dumps(f.value, ensure_ascii=False)
    rule = f.rule if len(f.rule) <= 90 else f.rule[:89] + "…"
    return f"  {f.path:<40} {value:<30} <- {rule}"


def check_file(
    path: str | Path,
    *,
    mapping: Mapping | str | Path | None = None,
    preset: str | None = None,
    orders: int = 3,
    settings: ConvertSettings | None = None,
) -> Workbench:
    """Convert `path` with the mapping (or preset) into a temporary folder and show it."""
    from csvbridge.fold.engine import convert  # the fold imports this package

    label = "the documented header"
    if isinstance(mapping, (str, Path)):
        label, mapping = f"mapping {mapping}", load_mapping(mapping)
    elif mapping is not None:
        label = "the given mapping"
    elif preset:
        label, mapping = f"preset {preset}", load_preset(preset)
    settings = settings or ConvertSettings()
    with tempfile.TemporaryDirectory(prefix="csvbridge-check-") as tmp:
        done = convert(path, tmp, mapping=mapping, settings=settings)
        report = done.report
        shown = []
        with done.ndjson.open("rb") as f:
            for line in f:
                if len(shown) >= max(orders, 0):
                    break
                shown.append(json.loads(line))
        index = _lines_of(done.work.index, {o["id"] for o in shown})
    with CsvFile(Path(path)) as csvf:
        header = csvf.header
    targets = mapping.targets() if mapping is not None else {}
    views = [_view(o, targets, index.get(str(o["id"]), ())) for o in shown]
    return Workbench(
        file=str(path),
        mapping=label,
        orders=views,
        unmapped_columns=_unmapped(header, mapping) if mapping is not None else [],
        unfilled=_unfilled(targets, views) if mapping is not None else [],
        errors=report.problems.errors,
        warnings=report.problems.warnings,
        counts={
            "rows_read": report.rows_read,
            "rows_skipped": report.rows_skipped,
            "objects_valid": report.objects_valid,
            "objects_rejected": report.objects_rejected,
        },
    )


def _lines_of(index_path: Path, ids: set[str]) -> dict[str, tuple[int, ...]]:
    """Source lines of the shown orders, from the run's index (id TAB lines)."""
    out: dict[str, tuple[int, ...]] = {}
    try:
        text = index_path.read_text(encoding="utf-8")
    except OSError:
        return out
    for row in text.splitlines():
        cid, _, lines = row.partition("\t")
        if cid in ids and cid not in out:
            out[cid] = tuple(_expand(lines))
    return out


def _expand(text: str) -> list[int]:
    lines: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        if a.isdigit():
            lines.extend(range(int(a), int(b or a) + 1))
    return lines


def _leaves(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        elif k != "conversion_items":
            out[prefix + k] = v
    return out


def _view(obj: dict[str, Any], targets: dict[str, Any], lines: tuple[int, ...]) -> OrderView:
    leaves = _leaves(obj)
    rules = {p: " / ".join(r.describe() for r in rs) for p, rs in targets.items()}
    paths = [p for p in targets if not p.startswith(ITEMS)] or list(leaves)
    fields = [Fill(p, rules.get(p, "(column of the same name)"), leaves.get(p)) for p in paths]
    items = []
    item_paths = [p[len(ITEMS) :] for p in targets if p.startswith(ITEMS)]
    for item in obj.get("conversion_items", []):
        il = _leaves(item)
        names = item_paths or list(il)
        items.append([Fill(ITEMS + p, rules.get(ITEMS + p, ""), il.get(p)) for p in names])
    return OrderView(str(obj.get("id")), lines, fields, items)


def _unmapped(header: list[str], mapping: Mapping) -> list[str]:
    used: set[str] = set()
    for rules in mapping.targets().values():
        for r in rules:
            used.update(c.strip().lower() for c in r.columns())
            if r.template:
                used.update(n.strip().lower() for n in TEMPLATE_FIELD.findall(r.template))
    from csvbridge.read.mapping.language import column_names

    for role in mapping.rows.roles:
        used.update(c.strip().lower() for c in column_names(role.when))
    if mapping.rows.order_fields_when:
        used.add(mapping.rows.order_fields_when.strip().lower())
    return [h for h in header if h.strip() and h.strip().lower() not in used]


def _unfilled(targets: dict[str, Any], views: list[OrderView]) -> list[str]:
    out = []
    for path in RECOMMENDED:
        if path not in targets:
            out.append(f"{path} (not mapped)")
            continue
        values = [
            f.value
            for v in views
            for f in [*v.fields, *(x for item in v.items for x in item)]
            if f.path == path
        ]
        if views and all(x is None for x in values):
            out.append(f"{path} (empty in the orders shown)")
    return out


__all__ = ["RECOMMENDED", "Fill", "OrderView", "Workbench", "check_file"]
