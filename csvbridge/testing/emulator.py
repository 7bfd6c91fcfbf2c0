"""A local stand-in for the Commanders Act bulk API (conversions and products).

Why: csvbridge must be testable and demonstrable without a real account.  The emulator
answers exactly what the reference documents -- every body (202, 400 partial acceptance,
PARSE_ERROR, the four 401s, 403, the two 429s, 500), the three rate limits, the slowing of
bulk uploads to ``objects_per_second``, the ``overwrite`` query parameter -- and it can
misbehave on purpose (500s, dropped connections, slow answers) so retries are exercised
over real HTTP.  ``speed`` scales the rate limits so tests run in seconds: at speed 10 it
takes 300 requests/s, 300 connections and 300 objects/s.

Several sites and tokens (``sites=``, ``csvbridge emulator --site 1234:token-a --site
5678:token-b:60``): each token is an account with its own three limits, shared by its
sites (`csvbridge.testing.emulator_accounts`); a token may only ship to its own sites
(else the documented 403).  The connection limit counts requests being processed, as
the request limit counts the requests admitted during the last second (a sliding window).  Objects are processed one
request after the other (first come, first served) at the object rate, so three requests
of 100 objects sent together are all answered after 10 s at speed 1, the last one last.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import orjson
from pydantic import BaseModel, ValidationError

from csvbridge.config import RateLimits
from csvbridge.errors import ConfigError
from csvbridge.schema.models import Conversion, Product, api_error_code, error_property
from csvbridge.testing.api_answers import (
    SERVER_ERROR_DETAIL,
    UNKNOWN_TOKEN_DETAIL,
    ErrorGroup,
    Reply,
    error_body,
    new_group,
)
from csvbridge.testing.emulator_accounts import Account, SiteSpec, accounts_for
from csvbridge.testing.emulator_http import EmulatorHandler, EmulatorServer
from csvbridge.testing.http_standin import HTTPStandIn, StandInServer

log = logging.getLogger("csvbridge.testing.emulator")

MODELS: dict[str, type[BaseModel]] = {"conversions": Conversion, "products": Product}
_BULK_PATH = re.compile(r"/v2/([^/]+)/(conversions|products)/bulk/?")


REQUEST_LOG_SIZE = 1000  # requests kept for GET /_emulator/requests


@dataclass
class EmulatorStats:
    """What the emulator saw; `Emulator.stats` hands out a copy."""

    requests: int = 0
    status_counts: Counter[int] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)  # objects accepted, per kind
    rejected: Counter[str] = field(default_factory=Counter)  # objects refused, per kind
    received_ids: Counter[str] = field(default_factory=Counter)  # times each id was accepted
    dropped: int = 0  # connections closed without an answer (drop_rate)
    max_concurrent: int = 0  # most requests processed at once
    sites: dict[str, SiteStats] = field(default_factory=dict)  # the same, per site

    @property
    def resent(self) -> set[str]:
        """Ids accepted more than once: a client that re-sends what was already accepted."""
        return {i for i, n in self.received_ids.items() if n > 1}


@dataclass
class SiteStats:
    """What one site saw (its account's limits are shared with the token's other sites)."""

    requests: int = 0
    status_counts: Counter[int] = field(default_factory=Counter)
    accepted: int = 0  # objects accepted
    received_ids: Counter[str] = field(default_factory=Counter)
    max_concurrent: int = 0  # most requests of its account processed at once
    first_accepted_at: float | None = None  # time.monotonic() of the first acceptance
    last_accepted_at: float | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (when, accepted)

    def accepted_between(self, start: float, end: float) -> int:
        """Objects accepted by requests answered in ``(start, end]``."""
        return sum(n for t, n in self.timeline if start < t <= end)

    @property
    def resent(self) -> set[str]:
        return {i for i, n in self.received_ids.items() if n > 1}


class Emulator(HTTPStandIn):
    """The bulk API on ``http://host:port``; see the module docstring for what it does.

    ``start()`` serves from a daemon thread (returns once listening), ``serve_forever()``
    from the calling thread; ``stop()`` ends either.  ``store[kind][id]`` holds accepted
    objects (of the first site; ``stores[site]`` per site), ``stats`` what happened.
    ``limits`` (default: the documented ones) are multiplied by ``speed``.

    ``sites`` serves several sites and tokens (an agency, a group of brands): each a
    `SiteSpec` or ``"SITE[:TOKEN[:OBJECTS/S[:REQUESTS/S[:CONNECTIONS]]]]"``; each token
    is an account with its own limits (times ``speed``), shared by its sites.  Without
    it: the one site `site_id` for `token` at `limits`.
    """

    max_examples = 100  # line numbers and ids listed per aggregated error ("some examples")
    server_class = EmulatorServer
    handler_class = EmulatorHandler
    thread_name = "emulator"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "emulator-token",
        site_id: str = "1234",
        speed: float = 1.0,
        fail_rate: float = 0.0,
        drop_rate: float = 0.0,
        slow_rate: float = 0.0,
        slow_seconds: float = 5.0,
        seed: int | None = None,
        limits: RateLimits | None = None,
        sites: Sequence[SiteSpec | str] | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        specs = [
            spec if isinstance(spec, SiteSpec) else SiteSpec.parse(spec, token)
            for spec in (sites or [SiteSpec(str(site_id), token, limits or RateLimits())])
        ]
        if not specs:
            raise ConfigError("the emulator needs at least one site")
        super().__init__(host, port)
        self.token, self.site_id, self.speed = specs[0].token, specs[0].site_id, speed
        self.sites = specs
        self.accounts = accounts_for(specs, speed)  # token -> account
        self._account_of = {site: a for a in self.accounts.values() for site in a.sites}
        self.fail_rate, self.drop_rate, self.slow_rate = fail_rate, drop_rate, slow_rate
        self.slow_seconds = slow_seconds
        first = self.accounts[self.token]
        self.requests_per_second = first.requests_per_second
        self.max_connections = first.max_connections
        self.objects_per_second = first.objects_per_second
        self.stores: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
            spec.site_id: {kind: {} for kind in MODELS} for spec in specs
        }
        self._stats = EmulatorStats(sites={spec.site_id: SiteStats() for spec in specs})
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._in_flight = 0
        self._log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)  # GET /_emulator/

    # -- life cycle -------------------------------------------------------------------

    def _bind(self) -> StandInServer:
        try:
            return super()._bind()
        except (OSError, OverflowError) as exc:  # port taken, out of range, bad host
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(
                f"the emulator cannot listen on {self.host}:{self.port}: {reason}"
                + (" (choose another --port, or 0 for any free one)" if self.port else ""),
                host=self.host,
                port=self.port,
            ) from None

    def serve_forever(self) -> None:
        """Serve from the calling thread until `stop()` is called from another one."""
        self._bind().serve_forever(poll_interval=0.1)

    @property
    def store(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The accepted objects of the first site, per kind then id."""
        return self.stores[self.site_id]

    def token_of(self, site_id: str) -> str:
        return self._account_of[site_id].token

    @property
    def stats(self) -> EmulatorStats:
        """A consistent copy, safe to read while requests are being served."""
        with self._lock:
            return copy.deepcopy(self._stats)

    # -- one request --------------------------------------------------------------------

    def answer_post(self, target: str, headers: Mapping[str, str], body: bytes) -> Reply | None:
        """The answer to ``POST target``; None means: hang up without answering."""
        url = urlsplit(target)
        match = _BULK_PATH.fullmatch(url.path)
        if match is None:
            return Reply(404, error_body("NOT_FOUND", f"No route for POST {url.path}"))
        site, kind = match.groups()
        with self._lock:
            self._stats.requests += 1
            if site in self._stats.sites:
                self._stats.sites[site].requests += 1
            if self._chance(self.drop_rate):
                self._stats.dropped += 1
                return None
        account, refused = self._check_auth(headers.get("Authorization"))
        if refused is not None:
            return self._counted(site, refused)
        assert account is not None
        if site not in account.sites:
            forbidden = error_body("SITE_ACCESS_FORBIDDEN", "You cannot access this site")
            return self._counted(site, Reply(403, forbidden))
        with self._lock:
            self._in_flight += 1
            account.in_flight += 1
            self._stats.max_concurrent = max(self._stats.max_concurrent, self._in_flight)
            mine = self._stats.sites[site]
            mine.max_concurrent = max(mine.max_concurrent, account.in_flight)
        try:
            limited = account.admit()
            if limited is not None:
                return self._counted(site, limited)
            with self._lock:
                fail, slow = self._chance(self.fail_rate), self._chance(self.slow_rate)
            if fail:
                return self._counted(
                    site, Reply(500, error_body("SERVER_ERROR", SERVER_ERROR_DETAIL))
                )
            if slow:
                self._stopping.wait(self.slow_seconds / self.speed)
            overwrite = parse_qs(url.query).get("overwrite", ["false"])[-1].lower() == "true"
            return self._counted(site, self._bulk(site, account, kind, body, overwrite))
        finally:
            with self._lock:
                self._in_flight -= 1
                account.in_flight -= 1

    def _counted(self, site: str, reply: Reply) -> Reply:
        """`reply`, counted in its site's status counts (a known site)."""
        with self._lock:
            if site in self._stats.sites:
                self._stats.sites[site].status_counts[reply.status] += 1
        return reply

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate  # caller holds the lock

    def _check_auth(self, header: str | None) -> tuple[Account | None, Reply | None]:
        """The account of the Bearer token, or the documented 401 refusing it."""
        if not header:
            return None, Reply(
                401,
                error_body(
                    "MISSING_AUTHORIZATION_HEADER", 'The "Authorization" header is required'
                ),
            )
        scheme, _, token = header.strip().partition(" ")
        if not token:
            return None, Reply(
                401, error_body("UNKNOWN_TOKEN_TYPE", "The token type is missing")
            )
        if scheme.lower() != "bearer":
            detail = f'The token type "{scheme}" is invalid. Expecting "Bearer" instead'
            return None, Reply(401, error_body("INVALID_TOKEN_TYPE", detail))
        account = self.accounts.get(token.strip())
        if account is None:
            return None, Reply(401, error_body("UNKNOWN_TOKEN", UNKNOWN_TOKEN_DETAIL))
        return account, None

    def _bulk(
        self, site: str, account: Account, kind: str, body: bytes, overwrite: bool
    ) -> Reply:
        objects: list[tuple[int, Any]] = []
        for number, raw in enumerate(body.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                objects.append((number, orjson.loads(raw)))
            except orjson.JSONDecodeError:
                return Reply(400, {**error_body("PARSE_ERROR", "Cannot parse nd-json"), "data": {}})
        valid, groups = self._validate(kind, objects)
        account.process(len(objects), self._stopping)
        rejected = len(objects) - len(valid)
        with self._lock:
            table = self.stores[site][kind]
            mine = self._stats.sites[site]
            for obj in valid:
                oid = obj["id"]
                old = table.get(oid)
                table[oid] = obj if overwrite or old is None else {**old, **obj}
                self._stats.received_ids[oid] += 1
                mine.received_ids[oid] += 1
            if valid:
                now = time.monotonic()
                mine.first_accepted_at = mine.first_accepted_at or now
                mine.last_accepted_at = now
                mine.timeline.append((now, len(valid)))
            mine.accepted += len(valid)
            self._stats.accepted[kind] += len(valid)
            self._stats.rejected[kind] += rejected
        data = {"accepted_object_count": len(valid), "rejected_object_count": rejected}
        if not rejected:
            return Reply(202, {"data": data})
        return Reply(400, {"errors": [g.as_dict() for g in groups], "data": data})

    def _validate(
        self, kind: str, objects: list[tuple[int, Any]]
    ) -> tuple[list[dict[str, Any]], list[ErrorGroup]]:
        """Valid objects, and the errors of the others aggregated per (code, property)."""
        model = MODELS[kind]
        valid: list[dict[str, Any]] = []
        groups: dict[tuple[str, str], ErrorGroup] = {}
        for number, obj in objects:
            try:
                model.model_validate(obj)
            except ValidationError as exc:
                oid = obj.get("id") if isinstance(obj, dict) else None
                seen: set[tuple[str, str]] = set()
                for err in exc.errors():
                    key = (api_error_code(err["type"]), error_property(err["loc"]))
                    if key in seen:  # one object counts once per error type
                        continue
                    seen.add(key)
                    group = groups.get(key) or groups.setdefault(key, new_group(*key, err))
                    group.count += 1
                    if len(group.lines) < self.max_examples:
                        group.lines.append(number)
                    if isinstance(oid, str) and len(group.ids) < self.max_examples:
                        group.ids.append(oid)
            else:
                valid.append(obj)
        return valid, list(groups.values())

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._stats.status_counts[status] += 1

    # -- what it received (a rehearsal's way to look: GET /_emulator/...) ---------------

    def _log_request(self, method: str, target: str, answer: Reply) -> None:
        data = answer.body.get("data") if isinstance(answer.body, dict) else None
        entry: dict[str, Any] = {"time": time.time(), "method": method, "path": target}
        entry["status"] = answer.status
        if isinstance(data, dict) and "accepted_object_count" in data:
            entry["accepted"] = data["accepted_object_count"]
            entry["rejected"] = data["rejected_object_count"]
        with self._lock:
            self._log.append(entry)

    def answer_get(self, target: str) -> Reply:
        """``GET /_emulator/objects[?kind=conversions]``: the accepted objects by kind;
        ``GET /_emulator/requests``: the last `REQUEST_LOG_SIZE` requests and answers."""
        url = urlsplit(target)
        with self._lock:
            if url.path == "/_emulator/requests":
                return Reply(200, {"requests": list(self._log)})
            if url.path == "/_emulator/objects":
                kinds = parse_qs(url.query).get("kind") or list(self.store)
                return Reply(200, {k: list(self.store.get(k, {}).values()) for k in kinds})
        return Reply(404, error_body("NOT_FOUND", f"No route for GET {url.path}"))


# -- command line -------------------------------------------------------------------------


def run_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    token: str = "emulator-token",
    site_id: str = "1234",
    speed: float = 1.0,
    fail_rate: float = 0.0,
    drop_rate: float = 0.0,
    slow_rate: float = 0.0,
    out: TextIO | None = None,
    sites: Sequence[str] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (``csvbridge emulator``); writes where to point csvbridge
    to `out` (the CLI passes stdout; by default it is logged).  `sites`: several sites
    and tokens (``SITE[:TOKEN[:OBJECTS/S[:REQUESTS/S[:CONNECTIONS]]]]``, see `Emulator`).

    Raises `ConfigError` (no traceback: the CLI prints it, exit 2) when it cannot listen,
    e.g. the port is already in use.
    """
    emulator = Emulator(
        host,
        port,
        token,
        site_id,
        speed,
        fail_rate=fail_rate,
        drop_rate=drop_rate,
        slow_rate=slow_rate,
        sites=sites,
    ).start()
    say = _teller(out)
    site_id = emulator.site_id
    shown = emulator.token if emulator.token == "emulator-token" else "<the token you gave>"
    say(f"csvbridge emulator listening on {emulator.url} (site {site_id}, speed {speed:g})")
    say(
        f"  point csvbridge at it: CSVBRIDGE_API_URL={emulator.url} "
        f"CSVBRIDGE_SITE_ID={site_id} CSVBRIDGE_TOKEN={shown}"
    )
    say(f"  what it received: {emulator.url}/_emulator/objects, {emulator.url}/_emulator/requests")
    if len(emulator.sites) > 1:  # tokens are the operator's own: never echoed
        for n, account in enumerate(emulator.accounts.values(), start=1):
            limits = account.limits
            say(
                f"  account {n}: sites {', '.join(account.sites)}, "
                f"{limits.objects_per_second:g} objects/s, "
                f"{limits.requests_per_second:g} requests/s, "
                f"{limits.concurrent_connections} connections (x speed {speed:g})"
            )
    done = threading.Event()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: only stop() ends it
            previous[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        emulator.stop()
    stats = emulator.stats
    say(
        f"emulator stopped: {stats.requests} requests, {sum(stats.accepted.values())} objects "
        f"accepted, {sum(stats.rejected.values())} refused"
    )
    return 0


def _teller(out: TextIO | None) -> Callable[[str], None]:
    """Lines for a person: to `out` when given (flushed), else to the log."""
    if out is None:
        return lambda line: log.info("%s", line)

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    return say
