"""Fold item rows into conversion objects (placeholder: filled by the core work)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Record:
    """One valid object ready to ship: its id, its NDJSON line, and its source lines."""

    id: str
    json: bytes  # one NDJSON line, without the trailing newline
    lines: tuple[int, ...]  # source CSV line number of each of its rows, in file order
