"""Pull orders from the Commerce HQ API and write them as Commerce HQ CSV exports.

Output: one CSV file per API page, in the column layout of the shipped export
(``csvbridge/data/commercehq/orders.csv``: one row per line item, the order's values on
each row), written atomically into a folder.  The existing pipeline then converts it with
the shipped ``commercehq/mapping.yaml`` unchanged -- the same mapping engine, validation,
ledger (the file's fingerprint), sinks and report as a CSV someone exported by hand.  A
second, API-only conversion path would drift from the CSV one; a file is also what the
ledger already knows how to account for.

How changes are found and where a pass resumes: `csvbridge.sources.commercehq_cursor`.
The HTTP side (settings, retries, ``Retry-After``, the server's clock):
`csvbridge.sources.commercehq_http`.  The CSV rows: `csvbridge.sources.commercehq_csv`.
Here: a pass, page by page, and writing each page as a file.  The public names of all
four are importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from csvbridge.sources.commercehq_csv import COLUMNS, order_rows, write_export
from csvbridge.sources.commercehq_cursor import STREAMS, Cursor, Page, Stream, sift
from csvbridge.sources.commercehq_http import (
    RETRY_AFTER_CAP,
    CommerceHQConnection,
    CommerceHQSettings,
    api_base_url,
)

__all__ = [
    "COLUMNS",
    "RETRY_AFTER_CAP",
    "STREAMS",
    "CommerceHQClient",
    "CommerceHQConnection",
    "CommerceHQSettings",
    "Cursor",
    "Page",
    "PullResult",
    "Stream",
    "api_base_url",
    "order_rows",
]

log = logging.getLogger("csvbridge.sources.commercehq")


@dataclass
class PullResult:
    """A pass: every order received is written, a duplicate, older, or without items."""

    files: list[Path] = field(default_factory=list)
    pages: int = 0
    received: int = 0
    written: int = 0  # orders written (rows: their line items)
    rows: int = 0
    duplicates: int = 0
    older: int = 0
    no_items: list[int] = field(default_factory=list)  # order ids with no line item
    cursor: Cursor = field(default_factory=Cursor)

    @property
    def accounted(self) -> bool:
        return self.received == self.written + self.duplicates + self.older + len(self.no_items)

    @property
    def complete(self) -> bool:
        """The pass reached the end of both lists (else resume from `cursor`)."""
        return self.cursor.pass_started is None


class CommerceHQClient(CommerceHQConnection):
    """Reads ``GET /orders`` with retries; `pages` sifts, `pull` writes CSV files."""

    def pages(self, cursor: Cursor | None = None) -> Iterator[Page]:
        """Sifted pages of one pass (or the rest of one), each with the cursor to keep
        once its orders are safely written.  The last page's cursor ends the pass."""
        s = self.settings
        cur = cursor or Cursor(watermark=s.start)
        while not self.stop.is_set():
            params = {"page": cur.page, "size": s.page_size, "sort": STREAMS[cur.stream],
                      "expand": "items,address"}  # fmt: skip
            body, now = self.get_orders(params)
            if cur.pass_started is None:
                cur = replace(cur, pass_started=now)
            page = sift(cur, body, s.overlap_seconds)
            yield page
            if page.cursor.pass_started is None:
                return
            cur = page.cursor

    def pull(
        self,
        folder: str | Path,
        cursor: Cursor | None = None,
        commit: Callable[[Cursor], None] | None = None,
        *,
        prefix: str = "commercehq",
    ) -> PullResult:
        """Write each page's orders as ``<prefix>-<pass no>-<list>-p<page>.csv`` into
        `folder`, then `commit` the cursor that follows it; returns the pass's counts.

        Written before committed: a crash in between re-reads that page into the same
        file name (identical content is also known to the ledger by fingerprint).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        result = PullResult(cursor=cursor or Cursor(watermark=self.settings.start))
        for page in self.pages(result.cursor):
            result.pages += 1
            result.received += page.received
            result.duplicates += page.duplicates
            result.older += page.older
            rows: list[list[str]] = []
            for order in page.orders:
                lines = order_rows(order, self.settings.currency)
                if not lines:
                    result.no_items.append(int(order["id"]))
                    log.warning("commercehq: order %s has no line items: not written", order["id"])
                    continue
                rows.extend(lines)
                result.written += 1
            if rows:
                name = f"{prefix}-{page.pass_no:06d}-{page.stream}-p{page.number:05d}.csv"
                write_export(folder / name, rows)
                result.files.append(folder / name)
                result.rows += len(rows)
            if commit is not None:
                commit(page.cursor)
            result.cursor = page.cursor
        return result
