"""The plan of a file: which column fills which field, compiled into row functions.

A `ColumnPlan` is compiled once per file from its header (documented dot paths, or a
mapping's targets): which column fills which field, at which level (``conversion_items.*``
is item-level, the rest conversion-level), with which codec (`csvbridge.schema.codecs`).
From it `csvbridge.fold.codegen` writes straight-line Python functions — one that
writes the conversion level of a row, one that writes an item, and the fast lane's item
function — so the per-row work is a handful of list appends and memoised codec lookups,
not a walk over a path tree.  (namedtuple and dataclasses generate code the same way,
for the same reason.)  What an object needs besides valid cells (required fields,
items, unique ids) comes from the models, through `csvbridge.schema.structure`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from csvbridge.errors import InputError
from csvbridge.fold.assemble import Assembler, Built
from csvbridge.fold.codegen import ObjectNode, node_columns, object_tree, write_row_function
from csvbridge.read.csvfile import Row
from csvbridge.schema.codecs import CachedCodec, CodecOptions, FastCheck, fast_check, make_codec
from csvbridge.schema.structure import MAX_PATH_DEPTH, STRUCTURES, Structure


class ColumnPlan:
    """Everything known about a file's columns, compiled into fast row functions.

    ``build(rows)`` and ``build_shared(...)`` fold rows into objects (`Assembler`).
    """

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
        self.memo_items = False
        self.generated = ""  # the source of the row functions, as compiled
        self._lanes: dict[tuple[str, int], tuple[Callable[..., Any], int, int]] = {}
        self._check_required()
        # required cells the row code checks (the object's id and the item key are
        # checked by the fold, which needs them anyway); problems come in this order
        keys = {"id", item_prefix + (st.item_key or "")}
        self.required_rank = {p: n for n, p in enumerate(st.required)}
        self.required_cols = {seen[p] for p in st.required if p in seen and p not in keys}
        self.item_id_col = -1
        self.item_fn: Callable[..., Any] | None = None
        if kind == "products":
            self.id_col = seen["id"]
            self.head_fn = self._write("_head", object_tree(used))
            self.conv_cols: tuple[int, ...] = ()
        else:
            self.id_col = seen["id"]
            item_cols = [(i, p[len(item_prefix) :]) for i, p in used if p.startswith(item_prefix)]
            conv_cols = [(i, p) for i, p in used if not p.startswith(item_prefix)]
            self.conv_cols = tuple(i for i, _ in conv_cols)
            self.head_fn = self._write("_head", object_tree(conv_cols))
            item_tree = self._item_tree = object_tree(item_cols)
            self.item_fn = self._write("_item", item_tree)
            item_key = item_prefix + (st.item_key or "id")
            self.item_id_col = seen.get(item_key, seen.get(st.fill_from.get(item_key, "")))
            # build_shared may memoise an item's JSON after its id member when that
            # member is written first (the documented header's order)
            first = item_tree.members[0][1] if item_tree.members else None
            self.memo_items = not self.item_id_from_product and first == self.item_id_col
        getter = operator.itemgetter(*self.conv_cols) if self.conv_cols else (lambda c: ())
        self.conv_key: Callable[[list[str]], Any] = getter
        self._assembler = Assembler(self)

    def build(self, rows: list[Row]) -> Built:
        """The rows of one conversion (same id, file order) -> a Record or its problems."""
        return self._assembler.build(rows)

    def use_roles(self, role_col: int, line_index: bool, defaults: dict[int, str]) -> None:
        """A mapped file: rows whose `role_col` cell is ``"o"`` are order-only (merged
        into their order, no item); with `line_index` an item's id is its position
        among its order's items (1, 2, ...), so two lines of one SKU stay two items;
        `defaults` fill order-level cells no row of the order filled."""
        a = self._assembler
        a.role_col, a.line_index = role_col, line_index
        a.defaults = [(c, v) for c, v in defaults.items() if c in self.codecs]

    def build_shared(
        self, head: list[str], cid: str, items: list[tuple[int, str]], delimiter: str
    ) -> Built:
        """Rows repeating one conversion-level text: see `Assembler.build_shared`."""
        return self._assembler.build_shared(head, cid, items, delimiter)

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

    def _write(self, name: str, root: ObjectNode, **how: Any) -> Callable[..., Any]:
        written = write_row_function(self, name, root, **how)
        self.generated += written.source + "\n"
        return written.fn

    def lane_item(self, delimiter: str, n_head: int) -> tuple[Callable[..., Any], int, int]:
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
        if isinstance(last, ObjectNode):
            cols = sorted(node_columns(last))
            used_after = [c for c in self.codecs if c >= cols[0] and c not in set(cols)]
            if cols[-1] == self.ncols - 1 and not used_after and self.item_id_col < cols[0]:
                text_node, text_at, cut = last, cols[0], cols[0] - n_head
        fn = self._write(
            "_lane_item",
            root,
            offset=n_head,
            text_node=text_node,
            text_at=text_at,
            delimiter=delimiter,
        )
        lane = self._lanes[key] = (fn, cut, text_at)
        return lane


def _under_a_value(path: str, leaves: dict[str, int]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:k]) in leaves for k in range(1, len(parts)))
