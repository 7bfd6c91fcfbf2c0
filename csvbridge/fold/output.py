"""`convert_file`: one conversion, its output, report and rejects written where asked."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from csvbridge.config import ConvertSettings
from csvbridge.errors import ConfigError
from csvbridge.files import move_into_place, replaceable, write_bytes
from csvbridge.fold.engine import convert
from csvbridge.fold.rejects import write_rejects
from csvbridge.report import Report


def convert_file(
    source: str | Path | BinaryIO,
    output: str | Path | BinaryIO,
    *,
    to: str = "ndjson",
    kind: str = "conversions",
    settings: ConvertSettings | None = None,
    mapping: str | Path | None = None,
    report_path: str | Path | None = None,
    rejects_path: str | Path | None = None,
    products_from_conversions: bool = False,
    name: str | None = None,
) -> Report:
    """`csvbridge convert`: a CSV export -> NDJSON (or a CSV feed) + report + rejects.

    `source` and `output` are paths or binary streams (the command line passes stdin
    and stdout).  An output path is written under a temporary name and renamed into
    place, so a reader never sees half of it; a device (``/dev/null``), a FIFO or a
    symlink is written through, never replaced.  Likewise the report and the rejects.
    """
    to_stream = not isinstance(output, (str, Path))
    # work beside a regular (or new) output: the result is then renamed, not copied
    near = None
    if not to_stream and replaceable(output):  # type: ignore[arg-type]
        parent = Path(output).parent  # type: ignore[arg-type]
        if parent.is_dir() and os.access(parent, os.W_OK):
            near = parent
    with tempfile.TemporaryDirectory(prefix=".csvbridge-", dir=near) as tmp:
        work = Path(tmp)
        done = convert(
            source,
            work,
            kind=kind,
            settings=settings,
            mapping=mapping,
            products_from_conversions=products_from_conversions,
            name=name,
        )
        report = done.report
        if to == "feed":
            import orjson

            from csvbridge.sinks.feed import write_feed

            feed = work / ("feed.csv")
            with open(done.ndjson, "rb") as nd:
                write_feed((orjson.loads(line) for line in nd), feed, report.kind)
            produced = feed
        else:
            produced = done.ndjson
        if to_stream:
            with open(produced, "rb") as f:
                shutil.copyfileobj(f, output, 1 << 20)  # type: ignore[arg-type]
            output.flush()  # type: ignore[union-attr]
            report.outputs = {to: "<stream>"}  # not the temporary file, gone on return
        else:
            dest = Path(output)  # type: ignore[arg-type]
            with _writing("output", dest):
                move_into_place(produced, dest)
            report.outputs = {to: str(dest)}
        if rejects_path is not None and report.objects_rejected:
            with _writing("rejects", rejects_path):
                n = write_rejects(done, done.work.source, Path(rejects_path))  # type: ignore[arg-type]
            report.outputs["rejects"] = str(rejects_path)
            report.outputs["rejected_rows"] = str(n)
    if report_path is not None:
        with _writing("report", report_path):
            write_bytes(report_path, report.to_json())
    return report


@contextmanager
def _writing(what: str, path: str | Path) -> Iterator[None]:
    """An output that cannot be written is a usage error (exit 2), not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write the {what}: {exc.strerror}", file=str(path)) from None


__all__ = ["convert_file"]
