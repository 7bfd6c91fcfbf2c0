"""A local stand-in for the Commanders Act HTTP tracking API (events).

Why: the ``events`` sink must be testable and demonstrable with no account.  The stand-in
answers what the reference documents -- 200 to every request, 400 only for invalid JSON or
an over-size request (32 KB per event, 500 KB per batch; "KB" read as 1024 bytes) -- on
``POST /events`` and ``POST /events/batch`` (body ``{"batch": [...]}``), and keeps a log
of the events it received (``GET /_received`` for a person, `received` for tests).

The real API also answers 200 to a wrong source key or site (the data is just dropped);
the stand-in does the same by default and counts those requests as ``discarded``;
``strict_auth=True`` answers 403 instead.  It can misbehave on purpose: ``storm(n)``
makes the next n requests answer 503, ``drop(n)`` hangs up on the next n without an
answer, ``fail_rate``/``drop_rate`` do it at random, ``delay_seconds`` slows every answer.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from csvbridge.testing.http_standin import HTTPStandIn, StandInHandler, StandInServer

log = logging.getLogger("csvbridge.testing.tracking")

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024


@dataclass
class TrackingStats:
    """What the stand-in saw; `TrackingStandIn.stats` hands out a copy."""

    requests: int = 0
    status_counts: Counter[int] = field(default_factory=Counter)
    events: int = 0  # events kept
    discarded: int = 0  # requests answered 200 but dropped (wrong key or site)
    dropped: int = 0  # connections closed without an answer
    largest_body: int = 0  # bytes of the largest request body
    event_ids: Counter[str] = field(default_factory=Counter)  # context.event_id -> times
    transaction_ids: Counter[str] = field(default_factory=Counter)  # purchase id -> times

    @property
    def resent(self) -> set[str]:
        """Transactions received more than once."""
        return {i for i, n in self.transaction_ids.items() if n > 1}


# -- HTTP plumbing ----------------------------------------------------------------------


class _Server(StandInServer):
    log = log
    error_message = "tracking stand-in: connection from %s failed"
    stand_in: TrackingStandIn


class _Handler(StandInHandler):
    server_version = "csvbridge-tracking"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, b'{"status":"ok"}')
        elif path == "/_received":
            stand_in = self.server.stand_in
            stats = stand_in.stats
            data = {
                "events": stand_in.events(),
                "requests": stats.requests,
                "discarded": stats.discarded,
                "resent": sorted(stats.resent),
            }
            self._send(200, orjson.dumps(data, option=orjson.OPT_INDENT_2))
        else:
            self._send(404, b'{"error":"not found"}')

    def do_POST(self) -> None:  # noqa: N802
        body = self.read_body(chunked=False)  # by Content-Length only, as it always was
        answer = self.server.stand_in.answer(self.path, self.headers, body)
        if answer is None:
            self.hang_up(cut=True)
            return
        self._send(*answer)

    def _send(self, status: int, data: bytes) -> None:
        self.server.stand_in.count(status)
        self.send_json(status, data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # the request line holds the source key: never log it
        log.debug("tracking stand-in: %s", args[1] if len(args) > 1 else "")


class TrackingStandIn(HTTPStandIn):
    """The tracking API on ``http://host:port``; see the module docstring."""

    server_class = _Server
    handler_class = _Handler
    thread_name = "tracking"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "tracking-token",
        site_id: str = "1234",
        *,
        strict_auth: bool = False,
        fail_rate: float = 0.0,
        drop_rate: float = 0.0,
        delay_seconds: float = 0.0,
        seed: int | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        super().__init__(host, port)
        self.token, self.site_id = token, site_id
        self.strict_auth = strict_auth
        self.max_event_bytes, self.max_batch_bytes = max_event_bytes, max_batch_bytes
        self.fail_rate, self.drop_rate, self.delay_seconds = fail_rate, drop_rate, delay_seconds
        self.received: list[dict[str, Any]] = []  # events kept, in arrival order
        self._stats = TrackingStats()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._storm = 0
        self._storm_status = 503
        self._drops = 0

    # -- what it saw (start/stop/url: `HTTPStandIn`) -----------------------------------

    @property
    def stats(self) -> TrackingStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    # -- faults -----------------------------------------------------------------------

    def storm(self, requests: int, status: int = 503) -> None:
        """The next `requests` requests are answered `status` (a 5xx storm)."""
        with self._lock:
            self._storm, self._storm_status = requests, status

    def drop(self, requests: int) -> None:
        """The next `requests` requests are hung up on without an answer."""
        with self._lock:
            self._drops = requests

    # -- one request --------------------------------------------------------------------

    def answer(self, target: str, headers: Any, body: bytes) -> tuple[int, bytes] | None:
        """(status, body) for ``POST target``; None: hang up without answering."""
        url = urlsplit(target)
        batch = url.path.rstrip("/") == "/events/batch"
        if not batch and url.path.rstrip("/") != "/events":
            return 404, b'{"error":"not found"}'
        with self._lock:
            self._stats.requests += 1
            if self._drops or (self.drop_rate and self._rng.random() < self.drop_rate):
                self._drops = max(0, self._drops - 1)
                self._stats.dropped += 1
                return None
            if self._storm or (self.fail_rate and self._rng.random() < self.fail_rate):
                self._storm = max(0, self._storm - 1)
                return self._storm_status, b""
        if self.delay_seconds:
            self._stopping.wait(self.delay_seconds)
        query = parse_qs(url.query)
        token = query.get("token", [""])[-1]
        bearer = str(headers.get("Authorization") or "")
        if not token and bearer.lower().startswith("bearer "):
            token = bearer[7:].strip()
        trusted = token == self.token and query.get("tc_s", [""])[-1] == self.site_id
        with self._lock:
            self._stats.largest_body = max(self._stats.largest_body, len(body))
        if len(body) > (self.max_batch_bytes if batch else self.max_event_bytes):
            return 400, b""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, b""
        events = payload.get("batch") if batch and isinstance(payload, dict) else [payload]
        if not isinstance(events, list):
            return 400, b""
        if batch and any(len(orjson.dumps(e)) > self.max_event_bytes for e in events):
            return 400, b""
        if not trusted:
            with self._lock:
                self._stats.discarded += 1
            return (403, b"") if self.strict_auth else (200, b"")
        with self._lock:
            for event in events:
                if not isinstance(event, dict):
                    continue
                self.received.append(event)
                self._stats.events += 1
                context = event.get("context") if isinstance(event.get("context"), dict) else {}
                self._stats.event_ids[str(context.get("event_id"))] += 1
                self._stats.transaction_ids[str(event.get("id"))] += 1
        return 200, b""

    def count(self, status: int) -> None:
        with self._lock:
            self._stats.status_counts[status] += 1
