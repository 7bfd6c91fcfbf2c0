"""Pull orders from the Commerce HQ API and write them as Commerce HQ CSV exports.

Output: one CSV file per API page, in the column layout of the shipped export
(``csvbridge/data/commercehq/orders.csv``: one row per line item, the order's values on
each row), written atomically into a folder.  The existing pipeline then converts it with
the shipped ``commercehq/mapping.yaml`` unchanged -- the same mapping engine, validation,
ledger (the file's fingerprint), sinks and report as a CSV someone exported by hand.  A
second, API-only conversion path would drift from the CSV one; a file is also what the
ledger already knows how to account for.

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

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from csvbridge.errors import SourceAuthError, SourceUnavailable, TerminalError
from csvbridge.sources.commercehq_csv import COLUMNS, order_rows, write_export

__all__ = [
    "COLUMNS",
    "CommerceHQClient",
    "CommerceHQSettings",
    "Cursor",
    "Page",
    "PullResult",
    "api_base_url",
    "order_rows",
]

log = logging.getLogger("csvbridge.sources.commercehq")

Stream = Literal["created", "updated"]
STREAMS: dict[str, str] = {"created": "!order_date,!id", "updated": "!updated_at,!id"}
RETRY_AFTER_CAP = 300.0


class CommerceHQSettings(BaseModel):
    """One Commerce HQ store.  Key and password are `SecretStr`: never printed."""

    model_config = ConfigDict(extra="forbid")

    base_url: str  # https://STORE.commercehq.com/api/v1 (see `api_base_url`)
    api_key: SecretStr
    api_password: SecretStr
    currency: str = "USD"  # the store's currency: orders do not carry one
    page_size: int = Field(50, ge=1, le=250)
    overlap_seconds: int = Field(300, ge=0)
    start: int = Field(0, ge=0)  # first pass: orders created/updated since (0: all)
    connect_timeout_seconds: float = Field(10, gt=0)
    timeout_seconds: float = Field(60, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_base_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(60, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


def api_base_url(url: str) -> str:
    """``commercehq://STORE_HOST[:port]`` -> ``https://STORE_HOST/api/v1``;
    ``commercehq+http://127.0.0.1:8080`` (the stand-in) -> plain HTTP."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("commercehq", "commercehq+https", "commercehq+http"):
        raise TerminalError("a Commerce HQ source url is commercehq://STORE_HOST", url=url)
    host = rest.split("/", 1)[0]
    if "@" in host:
        raise TerminalError("put the API key and password in the config, not in the url")
    return f"{'http' if scheme == 'commercehq+http' else 'https'}://{host}/api/v1"


# --------------------------------------------------------------------------- cursor


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


# --------------------------------------------------------------------------- client


class CommerceHQClient:
    """Reads ``GET /orders`` with retries; `pages` sifts, `pull` writes CSV files."""

    def __init__(
        self,
        settings: CommerceHQSettings,
        *,
        session: requests.Session | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.session.auth = (
            settings.api_key.get_secret_value(),
            settings.api_password.get_secret_value(),
        )
        self.stop = stop or threading.Event()
        self.requests = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"CommerceHQClient({self.settings.base_url!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> CommerceHQClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP -------------------------------------------------------------------------

    def get_orders(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One list page (retried while transient) and the server's time (``Date``)."""
        s = self.settings
        url = f"{s.base_url}/orders"
        for attempt in range(1, s.max_attempts + 1):
            retry_after: float | None = None
            self.requests += 1
            try:
                resp = self.session.get(
                    url, params=params, timeout=(s.connect_timeout_seconds, s.timeout_seconds)
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                reason = f"{type(exc).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        body = orjson.loads(resp.content)
                    except orjson.JSONDecodeError:
                        reason = "an answer that is not JSON"
                    else:
                        return _checked(body, params), _server_time(resp.headers.get("Date"))
                elif resp.status_code in (401, 403):
                    raise SourceAuthError(
                        f"Commerce HQ refused the API key and password (HTTP "
                        f"{resp.status_code}): check api_key/api_password of this store and "
                        "that its private app may read orders",
                        url=url,
                        status=resp.status_code,
                    )
                elif resp.status_code == 429 or resp.status_code >= 500:
                    reason = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                else:
                    raise TerminalError(
                        f"Commerce HQ answered HTTP {resp.status_code}: {_message(resp.content)}",
                        url=url,
                        page=params.get("page"),
                    )
            if attempt == s.max_attempts or self.stop.is_set():
                raise SourceUnavailable(
                    f"Commerce HQ orders unavailable after {attempt} attempts: {reason}",
                    url=url,
                    page=params.get("page"),
                )
            self.retries += 1
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            log.warning(
                "commercehq: %s on page %s, retry in %.2f s", reason, params.get("page"), delay
            )
            self.stop.wait(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        s = self.settings
        return random.uniform(
            0, min(s.backoff_max_seconds, s.backoff_base_seconds * 2 ** (attempt - 1))
        )

    # -- a pass -----------------------------------------------------------------------

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
            page = self._sift(cur, body)
            yield page
            if page.cursor.pass_started is None:
                return
            cur = page.cursor

    def _sift(self, cur: Cursor, body: dict[str, Any]) -> Page:
        assert cur.pass_started is not None
        overlap, started = self.settings.overlap_seconds, cur.pass_started
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


# --------------------------------------------------------------------------- helpers


def _stamps(order: dict[str, Any]) -> tuple[int, int, int | None]:
    try:
        updated = order.get("updated_at")
        return int(order["id"]), int(order["order_date"]), None if updated is None else int(updated)
    except (KeyError, TypeError, ValueError) as exc:
        raise TerminalError(f"Commerce HQ sent an order without id/order_date: {exc}") from None


def _checked(body: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The list wrapper, with expanded line items (or a terminal error naming what lacks)."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise TerminalError("Commerce HQ answered without an `items` list", page=params["page"])
    if not isinstance(body.get("_meta"), dict):
        raise TerminalError("Commerce HQ answered without `_meta` (paging)", page=params["page"])
    for order in body["items"]:
        if not isinstance(order, dict) or "items" not in order:
            raise TerminalError(
                "Commerce HQ sent orders without line items: `expand=items` not honoured",
                page=params["page"],
            )
    return body


def _server_time(date: str | None) -> int:
    """The server's clock from ``Date`` (ours if absent): the cursor never mixes clocks
    with ``updated_at``."""
    if date:
        try:
            return int(parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            pass
    return int(time.time())


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP) if math.isfinite(seconds) else None


def _message(content: bytes) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode("utf-8", "replace")
    return str(body.get("message", body))[:200] if isinstance(body, dict) else str(body)[:200]
