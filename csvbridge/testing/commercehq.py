"""A local stand-in for the Commerce HQ orders API (``GET /api/v1/orders``).

Why: the Commerce HQ source must be testable and demonstrable without a store.  The
stand-in answers what ``commercehq-api.txt`` documents for orders:

* Basic auth ``key:password`` ("Authentication"); anything else is a 401 in the Yii2
  shape Commerce HQ's REST layer uses (``name``, ``message``, ``code``, ``status``);
* the list wrapper ``items`` / ``_links`` (self, first, prev, next, last) / ``_meta``
  (totalCount, perPage, currentPage, pageCount) ("Response wrapper and pagination");
  ``page`` (default 1), ``size`` (default 20);
* ``sort=field1,!field2`` (default ``!id``) on any order field; ``null`` sorts lowest,
  as MySQL does, so ``!updated_at`` lists never-updated orders last;
* relations hidden unless ``expand`` names them (``items``, ``address``, ``fulfilments``,
  ``shipments``, ``restocks``, or ``all``); ``fields=a,b`` keeps only those fields;
* ``GET /api/v1/orders/ID`` for one order.

The reference documents no "updated since" filter for orders (only ``sort``, and
``POST /orders/search`` by exact field values), so neither does the stand-in: a client
finds changes by sorting on ``updated_at`` / ``order_date``.  A ``page`` past the last
one answers the last page again (Yii2's ``validatePage``), so a client must stop on
``_meta.pageCount``, not on an empty page.

Faults for tests: random 5xx (``fail_rate``), 429 with ``Retry-After``
(``throttle_rate``), slow answers (``slow_rate``/``slow_seconds``), and the same on
demand for the next N requests (`fail_next`, `throttle_next`, `slow_next`).  Tests change
the store while a client pages: `add_order` / `update_order`, from the ``on_request``
hook (called before each list answer) or from another thread.  The stand-in's clock
(``clock``, shifted by `advance`) stamps ``order_date``/``updated_at`` and the ``Date``
header, so the client can take the server's time as its own.

Where the parts live: the seeded orders are built in `csvbridge.testing.commercehq_orders`,
the HTTP server and handler are in `csvbridge.testing.commercehq_http`; this module is
the API's behaviour (auth, paging, sorting, expansion, faults) and the store.
"""

from __future__ import annotations

import base64
import copy
import hmac
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from csvbridge.testing.commercehq_http import _Answer, _Handler, _Server
from csvbridge.testing.commercehq_orders import new_order
from csvbridge.testing.http_standin import HTTPStandIn

RELATIONS = ("items", "address", "fulfilments", "shipments", "restocks")
MAX_PAGE_SIZE = 250
_ORDER_PATH = re.compile(r"/api/v1/orders(?:/(\d+))?/?")


@dataclass
class StandInStats:
    """What the stand-in saw; `CommerceHQStandIn.stats` hands out a copy."""

    requests: int = 0
    status_counts: Counter[int] = field(default_factory=Counter)
    pages_served: int = 0


class CommerceHQStandIn(HTTPStandIn):
    """The orders API on ``http://host:port/api/v1``; see the module docstring.

    ``orders`` seeded realistic orders (ids from ``first_id``, dates over the last
    ``days`` days, a share of them updated since).  ``start()`` serves from a daemon
    thread (listening when it returns), ``stop()`` ends it.
    """

    server_class = _Server
    handler_class = _Handler
    thread_name = "commercehq"
    url_path = "/api/v1"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "chq-key",
        api_password: str = "chq-password",
        orders: int = 0,
        *,
        first_id: int = 4000,
        days: float = 30,
        updated_share: float = 0.3,
        seed: int = 0,
        fail_rate: float = 0.0,
        throttle_rate: float = 0.0,
        retry_after: float = 1.0,
        slow_rate: float = 0.0,
        slow_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_request: Callable[[CommerceHQStandIn, dict[str, str]], None] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.api_key, self.api_password = api_key, api_password
        self.fail_rate, self.throttle_rate, self.retry_after = fail_rate, throttle_rate, retry_after
        self.slow_rate, self.slow_seconds = slow_rate, slow_seconds
        self.on_request = on_request
        self._clock = clock
        self._offset = 0.0
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._stats = StandInStats()
        self._forced: list[tuple[str, float]] = []  # ("fail"|"throttle"|"slow", arg)
        self.orders: dict[int, dict[str, Any]] = {}
        self.versions: Counter[int] = Counter()  # states each order has had (1 + updates)
        self._next_id = first_id
        now = int(self.now())
        span = int(days * 86400)
        for k in range(orders):
            created = now - span + (span * k) // max(orders, 1)
            order = self._new_order(created)
            if self._rng.random() < updated_share:
                order["updated_at"] = self._rng.randint(created, max(created, now - 1))
            self.orders[order["id"]] = order
            self.versions[order["id"]] = 1

    # -- the store ------------------------------------------------------------------

    def now(self) -> float:
        """The stand-in's time: ``clock()`` plus what `advance` added."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the stand-in's clock forward (e.g. "an hour later")."""
        self._offset += seconds

    def add_order(
        self, items: int | None = None, *, at: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """A new order placed now (``items=0``: an order without line items).  ``at``
        back-dates it: a transaction stamped earlier that became visible only now."""
        with self._lock:
            order = self._new_order(int(self.now()) if at is None else at, items)
            order.update(fields)
            self.orders[order["id"]] = order
            self.versions[order["id"]] = 1
            return copy.deepcopy(order)

    def update_order(
        self, order_id: int, *, at: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Change an order as the shop would: the fields given, ``updated_at`` = now
        (or ``at``: stamped earlier, visible only now)."""
        with self._lock:
            order = self.orders[order_id]
            order.update(fields)
            order["updated_at"] = int(self.now()) if at is None else at
            self.versions[order_id] += 1
            return copy.deepcopy(order)

    def _new_order(self, created: int, n_items: int | None = None) -> dict[str, Any]:
        oid = self._next_id
        self._next_id += 1
        return new_order(self._rng, oid, created, n_items)

    # -- faults ---------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` requests answer `status` (a 5xx storm)."""
        with self._lock:
            self._forced.extend([("fail", float(status))] * n)

    def throttle_next(self, n: int, retry_after: float | None = None) -> None:
        """The next `n` requests answer 429 with ``Retry-After``."""
        with self._lock:
            wait = self.retry_after if retry_after is None else retry_after
            self._forced.extend([("throttle", wait)] * n)

    def slow_next(self, n: int, seconds: float) -> None:
        """The next `n` requests wait `seconds` before answering."""
        with self._lock:
            self._forced.extend([("slow", seconds)] * n)

    def _fault(self) -> tuple[str, float] | None:
        with self._lock:
            if self._forced:
                return self._forced.pop(0)
            roll = self._rng.random()
            if roll < self.fail_rate:
                return ("fail", float(self._rng.choice((500, 502, 503, 504))))
            roll -= self.fail_rate
            if roll < self.throttle_rate:
                return ("throttle", self.retry_after)
            roll -= self.throttle_rate
            if roll < self.slow_rate:
                return ("slow", self.slow_seconds)
        return None

    # -- life cycle -----------------------------------------------------------------

    @property
    def stats(self) -> StandInStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    def snapshot(self) -> dict[int, dict[str, Any]]:
        """A copy of every order as it is now (what a client should end up with)."""
        with self._lock:
            return copy.deepcopy(self.orders)

    # -- one request ----------------------------------------------------------------

    def answer_get(self, target: str, authorization: str | None) -> _Answer:
        url = urlsplit(target)
        with self._lock:
            self._stats.requests += 1
        match = _ORDER_PATH.fullmatch(url.path)
        if match is None:
            return _Answer(404, _yii_error(404, "Not Found", "Page not found."))
        if not self._authorized(authorization):
            return _Answer(
                401,
                _yii_error(401, "Unauthorized", "Your request was made with invalid credentials."),
                {"WWW-Authenticate": 'Basic realm="api"'},
            )
        fault = self._fault()
        if fault is not None:
            kind, arg = fault
            if kind == "fail":
                return _Answer(int(arg), _yii_error(int(arg), "Server Error", "Try again later."))
            if kind == "throttle":
                wait = str(int(arg)) if float(arg).is_integer() else f"{arg:.3f}"
                return _Answer(
                    429,
                    _yii_error(429, "Too Many Requests", "Rate limit exceeded."),
                    {"Retry-After": wait},
                )
            self._stopping.wait(arg)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if match.group(1) is not None:
            with self._lock:
                order = self.orders.get(int(match.group(1)))
                if order is None:
                    return _Answer(404, _yii_error(404, "Not Found", "Object not found."))
                return _Answer(200, orjson.Fragment(orjson.dumps(_shape(order, query))))
        if self.on_request is not None:
            self.on_request(self, query)
        return self._list(url.path, query)

    def _authorized(self, header: str | None) -> bool:
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            key, sep, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            return False
        return bool(sep) and hmac.compare_digest(
            f"{key}:{password}".encode(), f"{self.api_key}:{self.api_password}".encode()
        )

    def _list(self, path: str, query: dict[str, str]) -> _Answer:
        try:
            page = max(1, int(query.get("page", "1")))
            size = min(MAX_PAGE_SIZE, max(1, int(query.get("size", "20"))))
        except ValueError:
            return _Answer(400, _yii_error(400, "Bad Request", "page and size are integers."))
        with self._lock:
            orders = list(self.orders.values())
            try:
                orders = _sorted(orders, query.get("sort", "!id"))
            except KeyError as exc:
                return _Answer(400, _yii_error(400, "Bad Request", f"unknown sort field {exc}"))
            total = len(orders)
            page_count = max(1, -(-total // size))
            page = min(page, page_count)  # Yii2 validatePage: past the end -> the last page
            # serialised under the lock: no copy, and no order changes half-way
            items = orjson.Fragment(
                orjson.dumps([_shape(o, query) for o in orders[(page - 1) * size : page * size]])
            )
            self._stats.pages_served += 1

        def link(p: int) -> str:
            return f"{self.url.rsplit('/api/v1', 1)[0]}{path}?" + urlencode(
                {**query, "page": p, "size": size}
            )

        links = {"self": link(page), "first": link(1), "last": link(page_count)}
        if page > 1:
            links["prev"] = link(page - 1)
        if page < page_count:
            links["next"] = link(page + 1)
        meta = {"totalCount": total, "perPage": size, "currentPage": page, "pageCount": page_count}
        return _Answer(200, {"items": items, "_links": links, "_meta": meta})

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._stats.status_counts[status] += 1


def _yii_error(status: int, name: str, message: str) -> dict[str, Any]:
    return {"name": name, "message": message, "code": 0, "status": status}


def _sorted(orders: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """Stable multi-key sort; ``!`` descending; None lowest (MySQL's NULL order)."""
    for spec in reversed([s.strip() for s in sort.split(",") if s.strip()]):
        desc, name = spec.startswith("!"), spec.lstrip("!")
        if orders and name not in orders[0]:
            raise KeyError(name)
        orders.sort(key=lambda o, n=name: (o[n] is not None, o[n] or 0), reverse=desc)
    return orders


def _shape(order: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    """An order as answered: relations only when expanded, only ``fields`` if given."""
    expand = {e.strip() for e in query.get("expand", "").split(",") if e.strip()}
    if "all" in expand:
        expand = set(RELATIONS)
    shaped = {k: v for k, v in order.items() if k not in RELATIONS or k in expand}
    fields = [f.strip() for f in query.get("fields", "").split(",") if f.strip()]
    if fields:
        shaped = {k: v for k, v in shaped.items() if k in fields or k in expand}
    return shaped
