"""Fold item rows into nested objects and their NDJSON lines.

A `ColumnPlan` is compiled once per file from its header (documented dot paths, or a mapping's
targets): which column fills which field, at which level (``conversion_items.*`` is
item-level, the rest conversion-level), with which codec (`csvbridge.schema.codecs`).  From it
the plan generates two straight-line Python functions — one that writes the conversion
level of a row, one that writes an item — so the per-row work is a handful of list
appends and memoised codec lookups, not a walk over a path tree.  (namedtuple and
dataclasses generate code the same way, for the same reason.)

`ColumnPlan.build(rows)` turns the rows of one conversion into a `Record` (or problems):
conversion-level values must agree between the rows (a conflict is reported with field,
values and lines; the `conflict` setting decides), items keep file order, item ids are
unique, 1-150 items, required fields present, empty cells omitted.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from csvbridge.errors import InputError
from csvbridge.read.csvfile import Row
from csvbridge.report import Problem
from csvbridge.schema.codecs import (
    PLAIN_NUMBER,
    CachedCodec,
    CellError,
    CodecOptions,
    FastCheck,
    Flagged,
    fast_check,
    make_codec,
)
from csvbridge.schema.pycode import compile_function
from csvbridge.schema.structure import (
    MAX_PATH_DEPTH,
    STRUCTURES,
    Structure,
    classify,
    normalize_header,
)


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


@dataclass
class _Node:
    """A JSON object under construction in the code generator."""

    members: list[tuple[str, int | _Node]] = field(default_factory=list)  # header order

    def child(self, key: str) -> _Node:
        for k, m in self.members:
            if k == key and isinstance(m, _Node):
                return m
        node = _Node()
        self.members.append((key, node))
        return node


class ColumnPlan:
    """Everything known about a file's columns, compiled into fast row functions."""

    def __init__(
        self,
        paths: list[str],
        sources: list[str],
        *,
        kind: str = "conversions",
        options: CodecOptions = CodecOptions(),
        conflict: str = "reject",
        structure: Structure | None = None,
    ) -> None:
        # the structural rules (required fields, items, unique ids) come from the models
        st = self.structure = structure or STRUCTURES[kind]
        self.kind = kind
        self.paths = paths
        self.sources = sources
        self.ncols = len(paths)
        self.options = options
        self.conflict = conflict
        self.ignored: list[tuple[int, str]] = []  # (column, reason)
        self.codecs: dict[int, CachedCodec] = {}
        self.fast: dict[int, FastCheck | None] = {}  # inlined in the row code
        seen: dict[str, int] = {}
        used: list[tuple[int, str]] = []
        for i, p in enumerate(paths):
            if not p:
                continue
            path = p
            depth = sum(1 for part in p.split(".") if part)  # "Total..." is no dot path
            if depth > MAX_PATH_DEPTH:
                raise InputError(
                    f"column {i + 1} ({sources[i][:80]!r}, line 1): its dot path has {depth} "
                    f"levels; at most {MAX_PATH_DEPTH} are supported"
                )
            rule, reason = st.classify(p)
            if rule is None:
                self.ignored.append((i, reason or "ignored"))
                continue
            if path in seen:
                raise InputError(
                    f"columns {sources[seen[path]]!r} and {sources[i]!r} both fill {path}"
                )
            seen[path] = i
            self.codecs[i] = CachedCodec(make_codec(path, rule, options))
            self.fast[i] = fast_check(path, rule)
            used.append((i, path))
        for i, path in [(i, p) for i, p in used if _under_a_value(p, seen)]:
            # custom.a and custom.a.b: "a" cannot be a value and an object at once
            used.remove((i, path))
            del seen[path], self.codecs[i]
            self.ignored.append((i, "a parent of this path is filled by another column"))
        self.column_of = seen
        self.item_id_from_product = False
        item_prefix = st.item_prefix
        self._item_memo: dict[str, bytes] | None = None
        self._memo_tries = self._memo_hits = 0
        self._lanes: dict[tuple[str, int], tuple[Callable[..., Any], int, int]] = {}
        self._check_required()
        # required cells the row code checks (the object's id and the item key are
        # checked by the fold, which needs them anyway); problems come in this order
        keys = {"id", item_prefix + (st.item_key or "")}
        self._required_rank = {p: n for n, p in enumerate(st.required)}
        self._required_cols = {seen[p] for p in st.required if p in seen and p not in keys}
        if kind == "products":
            self.id_col = seen["id"]
            self._item_fn = None
            self._head_fn = self._generate("_head", self._tree(used, ""), top=True)
            self.conv_cols: tuple[int, ...] = ()
        else:
            self.id_col = seen["id"]
            item_cols = [(i, p[len(item_prefix) :]) for i, p in used if p.startswith(item_prefix)]
            conv_cols = [(i, p) for i, p in used if not p.startswith(item_prefix)]
            self.conv_cols = tuple(i for i, _ in conv_cols)
            self._head_fn = self._generate("_head", self._tree(conv_cols, ""), top=True)
            item_tree = self._item_tree = self._tree(item_cols, "")
            self._item_fn = self._generate("_item", item_tree, top=False)
            item_key = item_prefix + (st.item_key or "id")
            self.item_id_col = seen.get(item_key, seen.get(st.fill_from.get(item_key, "")))
            # build_shared may memoise an item's JSON after its id member when that
            # member is written first (the documented header's order)
            first = item_tree.members[0][1] if item_tree.members else None
            if not self.item_id_from_product and first == self.item_id_col:
                self._item_memo = {}
        getter = operator.itemgetter(*self.conv_cols) if self.conv_cols else (lambda c: ())
        self._conv_key: Callable[[list[str]], Any] = getter

    # ------------------------------------------------------------------ compile

    def _check_required(self) -> None:
        """Every required field has a column (the model's required fields, `FillFrom`)."""
        st, have = self.structure, set(self.column_of)
        head = [p for p in st.required if not (st.items and p.startswith(st.item_prefix))]
        items = [p for p in st.required if p not in head]
        missing = [p for p in head if p not in have]
        for ne in st.non_empty:
            if not any(p.startswith(ne.path + ".") for p in have):
                missing.append(f"{ne.path}.{ne.example} (or another {ne.path}.* column)")
        for p in items:
            fallback = st.fill_from.get(p)
            if p in have:
                continue
            if fallback is None:
                missing.append(p)
            elif fallback in have and p == st.item_prefix + (st.item_key or ""):
                # documented fallback: "you can use the product id as value"
                self.item_id_from_product = True
        if missing:
            raise InputError(
                "required column missing: "
                + ", ".join(missing)
                + " (map it with --mapping, or name the column as in the documented header)"
            )

    @staticmethod
    def _tree(cols: list[tuple[int, str]], _prefix: str) -> _Node:
        root = _Node()
        for i, path in cols:
            parts = path.split(".")
            node = root
            for part in parts[:-1]:
                node = node.child(part)
            node.members.append((parts[-1], i))
        return root

    def _generate(
        self,
        name: str,
        root: _Node,
        *,
        top: bool,
        offset: int = 0,
        text_node: _Node | None = None,
        text_at: int = 0,
        delimiter: str = ",",
    ) -> Callable[..., Any]:
        """Generate ``def name(c, P) -> list[bytes]`` writing the members of `root`.

        Each leaf is a memoised codec lookup.  Each nested object (an address, a
        product, a custom object) is memoised as a whole on the tuple of its cells:
        the same product or address repeats on many rows, and then costs one lookup.
        Objects that produced a problem are not memoised, so every occurrence is
        reported with its own line.
        """
        lines = [f"def {name}(c, P):  # {_LABELS.get(name, name)}"]
        # where a column's cell is: c[col - offset], or q[col - text_at] inside
        # `text_node`, whose raw text c[-1] is its memo key (fast lane)
        inside = [False]

        def cell(col: int) -> tuple[str, int]:
            return ("q", col - text_at) if inside[0] else ("c", col - offset)

        env: dict[str, Any] = {
            "_flag": _flag,
            "_dumps": orjson.dumps,
            "PLAIN_NUMBER": PLAIN_NUMBER,
        }
        counter = [0]

        columns = _columns

        def emit(node: _Node, var: str, depth: int) -> None:
            pad = "    " * depth
            lines.append(f"{pad}{var} = []")
            lines.append(f"{pad}{var}_ = {var}.append")
            for key, member in node.members:
                if isinstance(member, _Node):
                    counter[0] += 1
                    n = counter[0]
                    k = orjson.dumps(key) + b":{"
                    env[f"M{n}"] = {}
                    lines.append(f"{pad}# {_comment_text(key)}: an object, memoised on its cells")
                    if member is text_node:
                        lines.append(f"{pad}g = c[-1]")
                    else:
                        where = [cell(col) for col in columns(member)]
                        idx = [i for _, i in where]
                        env[f"G{n}"] = (
                            operator.itemgetter(*idx)
                            if len(idx) > 1
                            else (lambda c, i=idx[0]: c[i])
                        )
                        lines.append(f"{pad}g = G{n}({where[0][0]})")
                    lines.append(f"{pad}s{n} = M{n}.get(g)")
                    lines.append(f"{pad}if s{n} is None:")
                    lines.append(f"{pad}    p{n} = len(P)")
                    if member is text_node:
                        lines.append(f"{pad}    q = g.split({delimiter!r})")
                        inside[0] = True
                    emit(member, f"o{n}", depth + 1)
                    if member is text_node:
                        inside[0] = False
                    lines.append(
                        f"{pad}    s{n} = {k!r} + b','.join(o{n}) + b'}}' if o{n} else b''"
                    )
                    lines.append(f"{pad}    if len(P) == p{n}:")
                    lines.append(f"{pad}        if len(M{n}) >= {SEGMENT_CACHE}: M{n}.clear()")
                    lines.append(f"{pad}        M{n}[g] = s{n}")
                    lines.append(f"{pad}if s{n}: {var}_(s{n})")
                    continue
                col = member
                codec = self.codecs[col]
                codec.prefix = orjson.dumps(key) + b":"
                env[f"K{col}"] = codec.cache
                env[f"F{col}"] = codec
                env[f"X{col}"] = codec.prefix
                # the memo holds valid members only: a hit needs no further check
                base, at = cell(col)
                lines.append(
                    f"{pad}v = {base}[{at}]  # {_comment_text(self.paths[col])} <- {self.sources[col][:60]!r}"
                )
                lines.append(f"{pad}if v:")
                lines.append(f"{pad}    r = K{col}.get(v)")
                lines.append(f"{pad}    if r is None:")
                fast = self.fast[col]
                if fast is not None:
                    lines.append(f"{pad}        if {fast.test}: r = X{col} + {fast.value}")
                    lines.append(f"{pad}        else:")
                    lines.append(f"{pad}            r = F{col}(v)")
                    lines.append(
                        f"{pad}            if r.__class__ is not bytes: r = _flag({col}, r, P)"
                    )
                else:
                    lines.append(f"{pad}        r = F{col}(v)")
                    lines.append(
                        f"{pad}        if r.__class__ is not bytes: r = _flag({col}, r, P)"
                    )
                lines.append(f"{pad}    {var}_(r)")
                if col in self._required_cols:
                    lines.append(f"{pad}else: P.append(({col}, None))  # required")

        emit(root, "out", 1)
        lines.append("    return out")
        source = "\n".join(lines) + "\n"
        self.generated = getattr(self, "generated", "") + source + "\n"
        return compile_function(name, source, env, f"plan {name}")

    # ------------------------------------------------------------------ build

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
        if len(rows) > 1 and self.conv_cols:
            head_row = self._check_conflicts(rows, cid, problems) or first
        members = self._head_members(head_row.cells, head_row.line, cid, problems)
        seen_ids: dict[str, int] = {}
        items = [self._item_member(r.cells, r.line, cid, seen_ids, problems) for r in rows]
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

    def _lane_item(self, delimiter: str, n_head: int) -> tuple[Callable[..., Any], int, int]:
        """The item function of the fast lane, how many cells to split off (-1: all) and
        the first column left in the unsplit text.

        It reads an item's cells straight from its text (no head cells in front).  When
        the item ends with a nested object (the product, in the documented header), the
        text of that object's columns is left unsplit and is its memo key: a product
        repeated on many rows is then found by one string lookup.
        """
        key = (delimiter, n_head)
        lane = self._lanes.get(key)
        if lane is not None:
            return lane
        root = self._item_tree
        text_node, text_at, cut = None, 0, -1
        last = root.members[-1][1] if root.members else None
        if isinstance(last, _Node):
            cols = sorted(_columns(last))
            used_after = [c for c in self.codecs if c >= cols[0] and c not in set(cols)]
            if cols[-1] == self.ncols - 1 and not used_after and self.item_id_col < cols[0]:
                text_node, text_at, cut = last, cols[0], cols[0] - n_head
        fn = self._generate(
            "_lane_item",
            root,
            top=False,
            offset=n_head,
            text_node=text_node,
            text_at=text_at,
            delimiter=delimiter,
        )
        lane = self._lanes[key] = (fn, cut, text_at)
        return lane

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


def _columns(node: _Node) -> list[int]:
    """The columns under a node, in member order."""
    cols: list[int] = []
    for _, m in node.members:
        cols.extend(_columns(m) if isinstance(m, _Node) else [m])
    return cols


def _under_a_value(path: str, leaves: dict[str, int]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:k]) in leaves for k in range(1, len(parts)))


def _comment_text(text: str) -> str:
    """Header text for a comment of generated code: escaped, so a header cell holding a
    line break cannot end the comment and inject code."""
    return repr(text[:80])[1:-1]


def _flag(col: int, r: Any, P: list[tuple[int, Any]]) -> bytes:
    """Record a flagged or invalid cell; the member written for it (null if invalid)."""
    P.append((col, r))
    return r.json if isinstance(r, Flagged) else b'"_":null'


_LABELS = {
    "_head": "the conversion level of a row (a product row, for products)",
    "_item": "one item of a row (the ordinary path)",
    "_lane_item": "one item from its raw text (the fast lane; the product text is its memo key)",
}
SEGMENT_CACHE = 4096  # memoised objects per nested path; cleared when full
ITEM_CACHE = 8192  # memoised items of build_shared; cleared when full
ITEM_MEMO_TRIAL = 20000  # items looked up before deciding whether the memo pays


# `Plan` is the name engine.py and tests/test_lane.py import until the merge renames them
Plan = ColumnPlan

__all__ = ["Built", "CellError", "ColumnPlan", "Record", "classify", "normalize_header"]
