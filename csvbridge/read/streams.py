"""The byte streams under the reader: a path or a caller's stream opened for reading
(gunzipped transparently, within `ReadLimits`), and the sampled head replayed in front
of the rest when the file is read in one piece.

Why apart from the reader: the reader only ever sees a buffered binary stream, whatever
the source; standard input is the CLI's to pass as a stream (the library never reads it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from csvbridge.errors import InputError
from csvbridge.read.limits import DEFAULT_LIMITS, GuardedGzip, ReadLimits

GZIP_MAGIC = b"\x1f\x8b"


def open_binary(
    source: str | Path | BinaryIO,
    limits: ReadLimits = DEFAULT_LIMITS,
    name: str | None = None,
) -> tuple[BinaryIO, bool]:
    """Open a path or a stream; gunzip transparently, within `limits`.  Returns (stream,
    gz).  (Standard input is the CLI's to pass as a stream: the library never reads it.)"""
    if isinstance(source, (str, Path)):
        try:
            raw: BinaryIO = open(source, "rb")  # noqa: SIM115 - handed to the caller
        except OSError as exc:
            raise InputError(f"cannot open input: {exc.strerror}", file=str(source)) from None
    else:
        raw = source
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return GuardedGzip(buffered, limits, name), True  # type: ignore[return-value]
    return buffered, False


class _Joined(io.RawIOBase):
    """A raw stream that first returns `head`, then reads from `rest`."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)
