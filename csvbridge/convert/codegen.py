"""The generated row code, as text: what `csvbridge debug codegen` prints.

A plan compiles a file's header into straight-line Python functions (see
`csvbridge.convert.plan`).  When a file converts unexpectedly, reading that code is the
quickest way to see which column fills which field with which check; tracebacks through
it show its lines too (`csvbridge.schema.pycode`).
"""

from __future__ import annotations

from pathlib import Path

from csvbridge.read.csvfile import CsvFile
from csvbridge.read.mapping import Mapping, compile_mapping, load_mapping
from csvbridge.schema.codecs import CodecOptions
from csvbridge.schema.structure import normalize_header


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
    from csvbridge.convert.fold import ColumnPlan  # the plan imports the codec layer, not this
    from csvbridge.convert.lane import Layout

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
            plan._lane_item(delimiter, layout.n_head)
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
