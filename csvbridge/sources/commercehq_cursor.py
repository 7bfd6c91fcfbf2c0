"""Where a Commerce HQ pull stands (`Cursor`), and how one API page is sifted against it.

Finding changes.  The reference documents no "updated since" filter for orders: ``GET
/orders`` takes ``page``, ``size``, ``sort`` and ``expand``, ``POST /orders/search``
matches exact values.  So a pass reads two sorted lists, newest first, and stops where
they reach the previous pass:

* ``sort=!order_date,!id`` -- orders created since the last pass (``updated_at`` is
  ``null`` on an order never updated, so the update list alone misses new orders);
* ``sort=!updated_at,!id`` -- orders updated since (MySQL sorts ``null`` lowest, so the
  never-updated orders come last and end the list).

Why newest first: a page number is an offset, and the list changes while we page.  In a
list sorted by change time, descending, a new or changed order moves to the *front*: the
orders not yet read only move further back (we see a few twice, at page boundaries --
deduped), never forward past our offset (which would skip one).  The changed order
itself has a change time after this pass started, so the next pass takes it.  Ascending
paging is the unsafe direction: an order changed in the part already read leaves its
place, everything behind it moves forward by one and one order is skipped for good.

The `Cursor` (the caller keeps it in the ledger) holds the server time at which the
last complete pass started (``watermark``; from the ``Date`` header, so the client's
clock does not matter), and within a pass the list, the next page and the last
(time, id) taken -- a restart resumes at that page and skips what it had taken.  Each
list is read down to ``watermark - overlap_seconds``: an order stamped a little before
its transaction became visible is not lost.  Orders taken in that overlap are remembered
in ``seen`` as (id, updated_at) and not written twice; an order updated again is a new
version and is written again (the conversion id is the order id, so it updates).
Deleted orders (not offered by the documented API) could shift a page forward; that is
the one case this design does not cover.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from csvbridge.errors import TerminalError

Stream = Literal["created", "updated"]
STREAMS: dict[str, str] = {"created": "!order_date,!id", "updated": "!updated_at,!id"}


@dataclass(frozen=True)
class Cursor:
    """Where pulling stands; persist `to_json` after each page's file is written."""

    watermark: int = 0  # server time when the last complete pass started (0: none yet)
    passes: int = 0  # complete passes so far (names the files: pass N+1 is in progress)
    seen: tuple[tuple[int, int, int], ...] = ()  # (id, updated_at or 0, change time)
    pass_started: int | None = None  # the pass in progress, if any (server time)
    stream: Stream = "created"
    page: int = 1
    last_key: tuple[int, int] | None = None  # (time, id) last taken in this stream

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "version": 1,
                "watermark": self.watermark,
                "passes": self.passes,
                "seen": self.seen,
                "pass_started": self.pass_started,
                "stream": self.stream,
                "page": self.page,
                "last_key": self.last_key,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str | bytes | None) -> Cursor:
        """The cursor `to_json` wrote; ``None``/empty: a fresh one."""
        if not text:
            return cls()
        try:
            d = orjson.loads(text)
            return cls(
                watermark=int(d["watermark"]),
                passes=int(d["passes"]),
                seen=tuple((int(a), int(b), int(c)) for a, b, c in d["seen"]),
                pass_started=None if d["pass_started"] is None else int(d["pass_started"]),
                stream="updated" if d["stream"] == "updated" else "created",
                page=int(d["page"]),
                last_key=None
                if d["last_key"] is None
                else (int(d["last_key"][0]), int(d["last_key"][1])),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TerminalError(f"the stored Commerce HQ cursor is unreadable: {exc}") from None


@dataclass
class Page:
    """One API page, sifted: the orders to write now and the cursor after them."""

    pass_no: int  # 1 for the first pass of a cursor's life
    stream: Stream
    number: int
    received: int  # orders on the page
    orders: list[dict[str, Any]]  # new (or newly changed) orders, each once
    duplicates: int  # already taken (page boundary, restart, overlap, the other list),
    # or changed after this pass began and met again at a page boundary: the next pass
    older: int  # before the previous pass: where the list stops
    cursor: Cursor


def sift(cur: Cursor, body: dict[str, Any], overlap: int) -> Page:
    """One checked list page against the cursor of a pass in progress: the orders to
    write, the ones met before, where the list stops, and the cursor after the page."""
    assert cur.pass_started is not None
    started = cur.pass_started
    created_bound = max(0, cur.watermark - overlap) if cur.watermark else 0
    if cur.stream == "created":
        bound = created_bound
    else:  # after a full first read every older update is in what was read
        bound = created_bound if cur.watermark else started - overlap
    seen = {(i, v) for i, v, _ in cur.seen}
    added: list[tuple[int, int, int]] = []
    taken: list[dict[str, Any]] = []
    dup = older = 0
    last_key, stop = cur.last_key, False
    items = body["items"]
    for n, order in enumerate(items):
        oid, created, updated = _stamps(order)
        t = created if cur.stream == "created" else updated
        if t is None or t < bound:
            stop, older = True, len(items) - n
            break
        key = (t, oid)
        if last_key is not None and key >= last_key:
            dup += 1  # taken before this page (boundary shift or restart), or newer
            continue  # than this pass: the next pass takes that one
        last_key = key
        version = updated or 0
        covered = (  # the created list of this pass read this very version
            cur.stream == "updated" and created >= created_bound and t < started - overlap
        )
        if (oid, version) in seen or covered:
            dup += 1
            continue
        seen.add((oid, version))
        change = updated or created
        if change >= started - overlap:
            added.append((oid, version, change))
        taken.append(order)
    meta = body["_meta"]
    keep = cur.seen + tuple(added)
    if not (stop or cur.page >= int(meta.get("pageCount") or 1) or not items):
        nxt = replace(cur, page=cur.page + 1, last_key=last_key, seen=keep)
    elif cur.stream == "created":
        nxt = replace(cur, stream="updated", page=1, last_key=None, seen=keep)
    else:
        floor = started - overlap
        nxt = Cursor(started, cur.passes + 1, tuple(e for e in keep if e[2] >= floor))
    return Page(cur.passes + 1, cur.stream, cur.page, len(items), taken, dup, older, nxt)


def _stamps(order: dict[str, Any]) -> tuple[int, int, int | None]:
    try:
        updated = order.get("updated_at")
        return int(order["id"]), int(order["order_date"]), None if updated is None else int(updated)
    except (KeyError, TypeError, ValueError) as exc:
        raise TerminalError(f"Commerce HQ sent an order without id/order_date: {exc}") from None
