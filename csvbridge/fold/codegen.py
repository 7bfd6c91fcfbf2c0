"""The generated row code: its writer, and its text for `csvbridge debug codegen`.

A `ColumnPlan` (`csvbridge.fold.plan`) hands the tree of a file's objects to
`write_row_function`, which writes a straight-line Python function filling them from a
row's cells: per column, a memoised codec lookup and the field's inline `FastCheck`;
per nested object, one lookup of the whole object.  Each line names the field it
handles, and tracebacks through it show its lines (`csvbridge.schema.pycode`).  When a
file converts unexpectedly, reading that code (`generated_source`) is the quickest way
to see which column fills which field with which check.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from csvbridge.read.csvfile import CsvFile
from csvbridge.read.mapping import Mapping, compile_mapping, load_mapping
from csvbridge.schema.codecs import PLAIN_NUMBER, CodecOptions, Flagged
from csvbridge.schema.pycode import compile_function
from csvbridge.schema.structure import normalize_header

if TYPE_CHECKING:
    from csvbridge.fold.plan import ColumnPlan

SEGMENT_CACHE = 4096  # memoised objects per nested path; cleared when full


@dataclass
class ObjectNode:
    """A JSON object under construction in the code generator."""

    members: list[tuple[str, int | ObjectNode]] = field(default_factory=list)  # header order

    def child(self, key: str) -> ObjectNode:
        for k, m in self.members:
            if k == key and isinstance(m, ObjectNode):
                return m
        node = ObjectNode()
        self.members.append((key, node))
        return node


@dataclass(frozen=True, slots=True)
class RowFunction:
    """A generated row function and its source text."""

    fn: Callable[..., Any]
    source: str


def object_tree(cols: list[tuple[int, str]]) -> ObjectNode:
    """The nesting of dot paths (``a.b.c``) as a tree of objects, in column order."""
    root = ObjectNode()
    for i, path in cols:
        parts = path.split(".")
        node = root
        for part in parts[:-1]:
            node = node.child(part)
        node.members.append((parts[-1], i))
    return root


def node_columns(node: ObjectNode) -> list[int]:
    """The columns under a node, in member order."""
    cols: list[int] = []
    for _, m in node.members:
        cols.extend(node_columns(m) if isinstance(m, ObjectNode) else [m])
    return cols


def write_row_function(
    plan: ColumnPlan,
    name: str,
    root: ObjectNode,
    *,
    offset: int = 0,
    text_node: ObjectNode | None = None,
    text_at: int = 0,
    delimiter: str = ",",
) -> RowFunction:
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

    columns = node_columns

    def emit(node: ObjectNode, var: str, depth: int) -> None:
        pad = "    " * depth
        lines.append(f"{pad}{var} = []")
        lines.append(f"{pad}{var}_ = {var}.append")
        for key, member in node.members:
            if isinstance(member, ObjectNode):
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
                        operator.itemgetter(*idx) if len(idx) > 1 else (lambda c, i=idx[0]: c[i])
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
                lines.append(f"{pad}    s{n} = {k!r} + b','.join(o{n}) + b'}}' if o{n} else b''")
                lines.append(f"{pad}    if len(P) == p{n}:")
                lines.append(f"{pad}        if len(M{n}) >= {SEGMENT_CACHE}: M{n}.clear()")
                lines.append(f"{pad}        M{n}[g] = s{n}")
                lines.append(f"{pad}if s{n}: {var}_(s{n})")
                continue
            col = member
            codec = plan.codecs[col]
            codec.prefix = orjson.dumps(key) + b":"
            env[f"K{col}"] = codec.cache
            env[f"F{col}"] = codec
            env[f"X{col}"] = codec.prefix
            # the memo holds valid members only: a hit needs no further check
            base, at = cell(col)
            lines.append(
                f"{pad}v = {base}[{at}]  # {_comment_text(plan.paths[col])} <- {plan.sources[col][:60]!r}"
            )
            lines.append(f"{pad}if v:")
            lines.append(f"{pad}    r = K{col}.get(v)")
            lines.append(f"{pad}    if r is None:")
            fast = plan.fast[col]
            if fast is not None:
                lines.append(f"{pad}        if {fast.test}: r = X{col} + {fast.value}")
                lines.append(f"{pad}        else:")
                lines.append(f"{pad}            r = F{col}(v)")
                lines.append(
                    f"{pad}            if r.__class__ is not bytes: r = _flag({col}, r, P)"
                )
            else:
                lines.append(f"{pad}        r = F{col}(v)")
                lines.append(f"{pad}        if r.__class__ is not bytes: r = _flag({col}, r, P)")
            lines.append(f"{pad}    {var}_(r)")
            if col in plan.required_cols:
                lines.append(f"{pad}else: P.append(({col}, None))  # required")

    emit(root, "out", 1)
    lines.append("    return out")
    source = "\n".join(lines) + "\n"
    return RowFunction(compile_function(name, source, env, f"plan {name}"), source)


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


def generated_source(
    header: list[str],
    mapping: Mapping | str | Path | None = None,
    *,
    kind: str = "conversions",
    delimiter: str = ",",
    quotechar: str = '"',
) -> str:
    """The Python source a conversion compiles for a file with this `header`.

    With the documented layout the fast lane's item function is included, as compiled
    for `delimiter`.  Raises `InputError` for a header the conversion would refuse.
    """
    from csvbridge.fold.lane import Layout
    from csvbridge.fold.plan import ColumnPlan  # which imports this module

    if isinstance(mapping, (str, Path)):
        mapping = load_mapping(mapping)
    if mapping is not None:
        opts = mapping.options
        options = CodecOptions(
            decimal_comma=bool(opts.decimal_comma),
            timezone=opts.timezone,
            date_formats=tuple(opts.date_formats),
        )
        transform = compile_mapping(mapping, header, options)
        paths, sources = list(transform.paths), list(transform.sources)
    else:
        options = CodecOptions()
        paths, sources = [normalize_header(h) for h in header], list(header)
    plan = ColumnPlan(paths, sources, kind=kind, options=options)
    if mapping is None and kind == "conversions":
        layout = Layout.of(plan.paths, plan.id_col, delimiter, quotechar)
        if layout is not None:
            plan.lane_item(delimiter, layout.n_head)
    return plan.generated


def generated_source_of_file(
    path: str | Path,
    mapping: Mapping | str | Path | None = None,
    *,
    kind: str = "conversions",
    encoding: str | None = None,
    delimiter: str | None = None,
) -> str:
    """`generated_source` for the header (and dialect) of the CSV file at `path`."""
    if isinstance(mapping, (str, Path)):
        mapping = load_mapping(mapping)
    opts = mapping.options if mapping is not None else None
    with CsvFile(
        path,
        encoding=encoding or (opts.encoding if opts else None),
        delimiter=delimiter or (opts.delimiter if opts else None),
    ) as csvf:
        header, dialect = csvf.header, csvf.dialect
    return generated_source(
        header, mapping, kind=kind, delimiter=dialect.delimiter, quotechar=dialect.quotechar
    )
