"""Caps that keep the reader's memory and disk use bounded whatever a drop holds.

A drop is written by other people: a 50 MB cell, a 500 MB line without a line break, a
header of 50,000 columns, or a gzip bomb must end as a clear error naming where the
limit was hit, never as a process that grows until the kernel kills it (and the pass
with it).  The defaults sit far above anything a real export needs — the longest
documented field holds 5,000 characters — and each one is configurable (the
``convert`` section of the config carries the same names).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from typing import BinaryIO

from csvbridge.errors import InputError


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Hard caps of the reader; None switches a cap off."""

    max_cell_chars: int | None = 1_000_000  # 200x the longest documented field
    max_record_bytes: int | None = 16 << 20  # one CSV record (line, or quoted lines)
    max_header_bytes: int | None = 8 << 20  # the header record
    max_columns: int | None = 20_000
    max_expanded_bytes: int | None = 16 << 30  # what a gzip file may expand to
    max_gzip_ratio: float | None = 250.0  # expanded / compressed...
    gzip_ratio_after_bytes: int = 16 << 20  # ...once this much is expanded (small
    # files compress oddly well)

    @classmethod
    def from_settings(cls, settings: object) -> ReadLimits:
        """The limits named alike on a settings object (ConvertSettings); defaults for
        the ones it does not carry."""
        base = cls()
        names = [f.name for f in fields(cls)]
        return cls(**{n: getattr(settings, n, getattr(base, n)) for n in names})


DEFAULT_LIMITS = ReadLimits()


def size_text(n: float) -> str:
    """1536 -> '1.5 KiB': a size a person reads at a glance."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"  # pragma: no cover


class CellTooLong(InputError):
    """A cell longer than `ReadLimits.max_cell_chars`: the whole file is refused, since
    no documented field can hold it and keeping it would cost unbounded memory."""


class RecordTooLong(InputError):
    """A record (or the header) longer than its cap."""


class GzipBomb(InputError):
    """A gzip file that expands beyond the configured size or ratio."""


def cell_error(
    line: int,
    column: int,
    length: int,
    limit: int,
    name: str | None = None,
    file: str | None = None,
    *,
    at_least: bool = False,
) -> CellTooLong:
    """The error for an over-long cell; `column` counts from 1.  `at_least`: the cell
    was not read to its end (it ran past the record cap)."""
    col = f"column {column}" + (f" ({name[:60]!r})" if name else "")
    size = f"at least {length:,}" if at_least else f"{length:,}"
    return CellTooLong(
        f"line {line}, {col}: a cell of {size} characters, longer than any field can "
        f"hold (max_cell_chars={limit:,}); fix the export or raise the limit",
        file=file,
        line=line,
        column=column,
    )


class _Counting:
    """The compressed stream under a gzip reader, counting what it consumed."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


class GuardedGzip:
    """A gunzipped stream that stops with `GzipBomb` past the expanded-size caps.

    The decompressor works in small steps, so the check runs long before the disk or
    the memory behind the reader fills up.
    """

    def __init__(self, raw: BinaryIO, limits: ReadLimits, name: str | None) -> None:
        import gzip

        self._counting = _Counting(raw)
        self._gz = gzip.GzipFile(fileobj=self._counting, mode="rb")  # type: ignore[arg-type]
        self._limits = limits
        self._name = name
        self.expanded = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._gz.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"cannot read input: {exc}", file=self._name) from None
        self.expanded += len(data)
        self._check()
        return data

    def _check(self) -> None:
        lim = self._limits
        if lim.max_expanded_bytes is not None and self.expanded > lim.max_expanded_bytes:
            raise GzipBomb(
                f"the gzip file expands beyond {size_text(lim.max_expanded_bytes)} "
                "(max_expanded_bytes); split the export or raise the limit",
                file=self._name,
            )
        packed = max(self._counting.count, 1)
        if (
            lim.max_gzip_ratio is not None
            and self.expanded > lim.gzip_ratio_after_bytes
            and self.expanded > lim.max_gzip_ratio * packed
        ):
            raise GzipBomb(
                f"the gzip file expands more than {lim.max_gzip_ratio:g} times its "
                f"compressed size ({size_text(packed)} -> over {size_text(self.expanded)}): "
                "a gzip bomb, or an export to check (raise max_gzip_ratio if it is genuine)",
                file=self._name,
            )

    def close(self) -> None:
        self._gz.close()
        self._counting.close()
