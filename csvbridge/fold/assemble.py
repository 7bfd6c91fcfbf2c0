"""Fold item rows into nested objects and their NDJSON lines.

`Assembler.build(rows)` turns the rows of one conversion into a `Record` (or problems),
with the row functions its `ColumnPlan` (`csvbridge.fold.plan`) compiled:
conversion-level values must agree between the rows (a conflict is reported with field,
values and lines; the `conflict` setting decides), items keep file order, item ids are
unique, the number of items is within the model's bounds, required fields are present,
empty cells are omitted.  `build_shared` is the same for rows that repeat one
conversion-level text (the fast lane).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from csvbridge.read.csvfile import Row
from csvbridge.report import Problem
from csvbridge.schema.codecs import CellError, Flagged
from csvbridge.schema.structure import classify, normalize_header

if TYPE_CHECKING:
    from csvbridge.fold.plan import ColumnPlan

ITEM_CACHE = 8192  # memoised items of build_shared; cleared when full
ITEM_MEMO_TRIAL = 20000  # items looked up before deciding whether the memo pays


@dataclass(slots=True, frozen=True)
class Record:
    """One valid object ready to ship: its id, its NDJSON line, and its source lines."""

    id: str
    json: bytes  # one NDJSON line, without the trailing newline
    lines: tuple[int, ...]  # source CSV line number of each of its rows, in file order


@dataclass(slots=True)
class Built:
    """The outcome for one object: a record, or the problems that rejected it."""

    record: Record | None
    problems: list[Problem]
    rows: int
    lines: tuple[int, ...] = ()
    id: str | None = None


class Assembler:
    """The fold half of a `ColumnPlan`: rows -> objects, with the plan's row functions.

    It copies what it reads per row from the plan (plain attribute reads), and owns the
    item memo of `build_shared`, which learns per file whether items repeat.
    """

    def __init__(self, plan: ColumnPlan) -> None:
        self.kind = plan.kind
        self.structure = plan.structure
        self.options = plan.options
        self.conflict = plan.conflict
        self.paths = plan.paths
        self.sources = plan.sources
        self.column_of = plan.column_of
        self.codecs = plan.codecs
        self.id_col = plan.id_col
        self.conv_cols = plan.conv_cols
        self._conv_key = plan.conv_key
        self._head_fn = plan.head_fn
        self._item_fn = plan.item_fn
        self._lane_item = plan.lane_item
        self.item_id_col = plan.item_id_col
        self.item_id_from_product = plan.item_id_from_product
        self._required_rank = plan.required_rank
        self._item_memo: dict[str, bytes] | None = {} if plan.memo_items else None
        self.role_col = -1  # mapped files: "o" in this cell marks an order-only row
        self.line_index = False  # mapped files: item ids are line positions
        self.defaults: list[tuple[int, str]] = []  # mapped files: order-level defaults
        self._memo_tries = self._memo_hits = 0

    def build_product(self, row: Row) -> Built:
        P: list[tuple[int, Any]] = []
        members = self._head_fn(row.cells, P)
        problems = self._problems(P, row.cells, row.line, row.cells[self.id_col] or None)
        if not row.cells[self.id_col]:
            problems.append(self._missing("id", row.line, None))
        if any(not p.warning for p in problems):
            return Built(None, problems, 1, (row.line,), row.cells[self.id_col] or None)
        rec = Record(row.cells[self.id_col], b"{" + b",".join(members) + b"}", (row.line,))
        return Built(rec, problems, 1, rec.lines, rec.id)

    def build(self, rows: list[Row]) -> Built:
        """The rows of one conversion (same id, file order) -> a Record or its problems."""
        if self.kind == "products":
            return self.build_product(rows[0])
        first = rows[0]
        cid = first.cells[self.id_col]
        problems: list[Problem] = []
        head_row = first
        heads = rows
        if self.role_col >= 0:  # mapped: only rows that carry order fields can disagree
            role = self.role_col
            heads = [r for r in rows if r.cells[role] != "i"] or [first]
            head_row = heads[0]
        if len(heads) > 1 and self.conv_cols:
            head_row = self._check_conflicts(heads, cid, problems) or head_row
        if self.defaults:
            cells = head_row.cells
            if any(not cells[c] for c, _ in self.defaults):
                cells = list(cells)
                for c, v in self.defaults:
                    cells[c] = cells[c] or v
                head_row = Row(head_row.line, cells)
        members = self._head_members(head_row.cells, head_row.line, cid, problems)
        seen_ids: dict[str, int] = {}
        item_rows = rows
        if self.role_col >= 0:
            role = self.role_col
            item_rows = [r for r in rows if r.cells[role] != "o"]  # "" and "i" are items
            if self.line_index:
                at = self.item_id_col
                for n, r in enumerate(item_rows, 1):
                    r.cells[at] = str(n)
        items = [self._item_member(r.cells, r.line, cid, seen_ids, problems) for r in item_rows]
        return self._finish(cid, members, items, problems, tuple(r.line for r in rows))

    def build_shared(
        self, head: list[str], cid: str, items: list[tuple[int, str]], delimiter: str
    ) -> Built:
        """Rows that repeat one conversion-level text exactly (the usual export).

        Identical text cannot conflict, so the conflict check is skipped.  ``head`` holds
        the conversion-level cells (the leading columns), ``items`` each row's line and
        the raw text of its item columns (the trailing ones).  An item whose text after
        its id was seen before reuses that item's JSON: same cells, same members.  The
        result is exactly what `build` gives for the same rows.
        """
        if self.item_id_from_product:
            # the item id is the product id: the ordinary path writes it in
            return self.build([Row(n, head + t.split(delimiter)) for n, t in items])
        problems: list[Problem] = []
        members = self._head_members(head, items[0][0], cid, problems)
        n_head = len(head)
        # the item memo keys on the text after the first item column: it must be the id
        memo = self._item_memo if self.item_id_col == n_head else None
        id_codec = self.codecs[self.item_id_col]
        id_cache = id_codec.cache
        seen_ids: dict[str, int] = {}
        out: list[bytes] = []
        if memo is not None:
            self._memo_tries += len(items)
            if self._memo_tries > ITEM_MEMO_TRIAL and self._memo_hits * 4 < self._memo_tries:
                # items rarely repeat in this file (prices vary...): stop paying for it
                self._item_memo = memo = None
        lane_item, cut, _ = self._lane_item(delimiter, n_head)
        id_at = self.item_id_col - n_head
        for line, text in items:
            rest = None
            if memo is not None:
                iid, _, rest = text.partition(delimiter)
                tail = memo.get(rest)
                if tail is not None and iid and iid not in seen_ids:
                    idm = id_cache.get(iid)
                    if idm is None:
                        r = id_codec(iid)
                        idm = r if r.__class__ is bytes else None
                    if idm is not None:
                        self._memo_hits += 1
                        seen_ids[iid] = line
                        out.append(b"{" + idm + tail)  # type: ignore[operator]
                        continue
            c = text.split(delimiter, cut)
            P: list[tuple[int, Any]] = []
            parts = lane_item(c, P)
            iid = c[id_at]
            if P or not iid or iid in seen_ids:
                # something to report: the ordinary path, which reports it exactly
                cells = head + text.split(delimiter)
                out.append(self._item_member(cells, line, cid, seen_ids, problems, rest))
                continue
            seen_ids[iid] = line
            if rest is not None:
                self._remember(rest, parts)
            out.append(b"{" + b",".join(parts) + b"}")
        return self._finish(cid, members, out, problems, tuple(line for line, _ in items))

    def _head_members(
        self, cells: list[str], line: int, cid: str, problems: list[Problem]
    ) -> list[bytes]:
        P: list[tuple[int, Any]] = []
        members = self._head_fn(cells, P)
        if P:
            problems.extend(self._problems(P, cells, line, cid))
        for ne in self.structure.non_empty:
            prefix = orjson.dumps(ne.path) + b":"
            if not any(m.startswith(prefix) for m in members):
                problems.append(
                    Problem(
                        "MISSING_REQUIRED_PROPERTY",
                        f"{ne.path} needs at least one property (e.g. {ne.path}.{ne.example}) "
                        "to match on",
                        ne.path,
                        (line,),
                        cid,
                    )
                )
        return members

    def _item_member(
        self,
        c: list[str],
        line: int,
        cid: str,
        seen_ids: dict[str, int],
        problems: list[Problem],
        memo_key: str | None = None,
    ) -> bytes:
        """One item's JSON object; its problems go to `problems`.

        With `memo_key` (the item's text after its id), a clean item is remembered for
        `build_shared`: everything after the id member depends on that text alone.
        """
        before = len(problems)
        P: list[tuple[int, Any]] = []
        parts = self._item_fn(c, P)  # type: ignore[misc]
        missing: list[Problem] = []
        if P:
            found = self._problems(P, c, line, cid)
            n_cells = sum(1 for _, r in P if r is not None)
            problems.extend(found[:n_cells])
            missing = found[n_cells:]  # after the item key's problems
        item_col = self.item_id_col
        item_key = self.structure.item_prefix + (self.structure.item_key or "")
        iid = c[item_col]
        if self.item_id_from_product and iid:
            parts.insert(0, orjson.dumps(self.structure.item_key) + b":" + orjson.dumps(iid))
        if not iid:
            problems.append(self._missing(item_key, line, cid))
        elif iid in seen_ids:
            problems.append(
                Problem(
                    "DUPLICATE_ITEM_ID",
                    f"conversion item id {iid!r} appears twice in the conversion; "
                    "item ids must be unique within a conversion",
                    item_key,
                    (seen_ids[iid], line),
                    cid,
                    self.sources[item_col],
                    iid,
                )
            )
        else:
            seen_ids[iid] = line
        problems.extend(missing)
        if memo_key is not None and len(problems) == before:
            self._remember(memo_key, parts)
        return b"{" + b",".join(parts) + b"}"

    def _remember(self, rest: str, parts: list[bytes]) -> None:
        """Memoise a clean item's members after its id (the first member) on `rest`."""
        memo = self._item_memo
        if memo is None:
            return
        if len(memo) >= ITEM_CACHE:
            memo.clear()
        memo[rest] = (b"," + b",".join(parts[1:]) if len(parts) > 1 else b"") + b"}"

    def _finish(
        self,
        cid: str,
        members: list[bytes],
        items: list[bytes],
        problems: list[Problem],
        lines: tuple[int, ...],
    ) -> Built:
        st = self.structure
        if st.max_items is not None and len(items) > st.max_items:
            problems.append(
                Problem(
                    "TOO_MANY_ITEMS",
                    f"{len(items)} conversion items; the API accepts at most {st.max_items} "
                    "per conversion",
                    st.items,
                    lines,
                    cid,
                )
            )
        elif len(items) < st.min_items:  # a conversion has a row per item: never today
            problems.append(
                Problem(
                    "TOO_FEW_ITEMS",
                    f"{len(items)} conversion items; the API needs at least {st.min_items}",
                    st.items,
                    lines,
                    cid,
                )
            )
        if any(not p.warning for p in problems):
            return Built(None, problems, len(lines), lines, cid)
        members.append(b'"conversion_items":[' + b",".join(items) + b"]")
        return Built(
            Record(cid, b"{" + b",".join(members) + b"}", lines), problems, len(lines), lines, cid
        )

    def _check_conflicts(self, rows: list[Row], cid: str, problems: list[Problem]) -> Row | None:
        """Rows must agree on conversion-level fields; returns the row to take them from.

        An empty cell agrees with anything: many exports (Shopify's among them) fill
        order fields on an order's first row only, or leave them blank on some rows.
        The values are then taken from the rows that have them.
        """
        key = self._conv_key
        k0 = key(rows[0].cells)
        if all(key(r.cells) == k0 for r in rows[1:]):
            return None
        warn = self.conflict != "reject"
        order = rows[::-1] if self.conflict == "last" else rows
        merged = list(order[0].cells)
        for col in self.conv_cols:
            values = [r.cells[col] for r in rows]
            distinct = [v for v in dict.fromkeys(values) if v]
            if not merged[col] and distinct:
                merged[col] = next(r.cells[col] for r in order if r.cells[col])
            if len(distinct) > 1:
                how = (
                    f"; kept the {self.conflict} row's value"
                    if warn
                    else "; the conversion is rejected (set convert.conflict to first or last "
                    "to keep one)"
                )
                problems.append(
                    Problem(
                        "CONFLICTING_VALUES",
                        "rows of one conversion disagree on a conversion-level field" + how,
                        self.paths[col] if self.paths[col] else None,
                        tuple(r.line for r in rows),
                        cid,
                        self.sources[col],
                        " | ".join(distinct[:10]),
                        warning=warn,
                    )
                )
        return Row(order[0].line, merged)

    def _missing(self, path: str, line: int, cid: str | None) -> Problem:
        col = self.column_of.get(path)
        return Problem(
            "MISSING_REQUIRED_PROPERTY",
            f"should have required property '{path}'",
            path,
            (line,),
            cid,
            self.sources[col] if col is not None else None,
        )

    def _problems(
        self, P: list[tuple[int, Any]], cells: list[str], line: int, cid: str | None
    ) -> list[Problem]:
        """The problems the row code recorded: invalid cells in column order, then the
        empty required cells (``None``) in the model's order."""
        strict = self.options.strict
        out = [
            Problem(
                r.code,
                r.detail,
                self.paths[col],
                (line,),
                cid,
                self.sources[col],
                cells[col],
                warning=isinstance(r, Flagged) and not strict,
            )
            for col, r in P
            if r is not None
        ]
        if len(out) < len(P):
            rank = self._required_rank
            empty = sorted((self.paths[col] for col, r in P if r is None), key=rank.__getitem__)
            out.extend(self._missing(path, line, cid) for path in empty)
        return out


def __getattr__(name: str) -> Any:
    """`ColumnPlan` (and its old name `Plan`, which engine.py and tests/test_lane.py
    import until the merge renames them), without an import cycle: plan imports this."""
    if name in ("ColumnPlan", "Plan"):
        from csvbridge.fold.plan import ColumnPlan

        return ColumnPlan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Assembler",
    "Built",
    "CellError",
    "ColumnPlan",
    "Record",
    "classify",
    "normalize_header",
]
