"""This process as one replica among several sharing a ledger: heartbeat, leases, upkeep.

Why leases with heartbeats (and not PostgreSQL advisory locks or ``FOR UPDATE`` held
for a whole file): a lock lives as long as its database session, so a replica whose
connection is cut mid-file would lose its claim while it still ships, and a file takes
hours, far longer than a transaction should stay open.  A row with an expiry, renewed
every third of `StateSettings.lease_seconds`, works over a connection pool and through
short outages, is visible to ``csvbridge status``, and works the same on SQLite.

* the replica row: while it is renewed, this replica's claims on files in
  ``processing/`` are respected; once it expired (kill -9, machine gone), another
  replica resumes those files from the ledger's per-batch progress;
* one lease per API token (``token:<hash>``): a replica ships with a token only while it
  holds the token's lease, so replicas together never exceed one account's limits (the
  holder's pacer enforces them).  It is taken per file and given back after it;
* a renewal that comes too late (the row had expired) means another replica may
  already work on this one's files: this replica stops (`stop` is set) rather than ship
  them a second time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter

from csvbridge.config import ApiSettings, StateSettings
from csvbridge.drops.ledger_base import LedgerStore
from csvbridge.drops.lock import Owner, me

log = logging.getLogger("csvbridge.drops")

PRUNE_EVERY_SECONDS = 3600.0


def token_lease(api: ApiSettings) -> str | None:
    """The lease name for `api`'s token (a hash: the token is never stored), None when
    there is no token."""
    token = api.token.get_secret_value()
    if not token:
        return None
    digest = hashlib.sha256(f"csvbridge-token\0{api.base_url}\0{token}".encode()).hexdigest()
    return f"token:{digest[:16]}"


class Replica:
    """Keeps this process's replica row and leases alive in `ledger` (a thread)."""

    def __init__(
        self,
        ledger: LedgerStore,
        state: StateSettings,
        *,
        stop: threading.Event | None = None,
        owner: Owner | None = None,
    ) -> None:
        self.ledger = ledger
        self.ttl = state.lease_seconds
        self.retention_days = state.retention_days
        self.stop = stop or threading.Event()
        self.owner = owner or me()
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0
        self.lost = False

    def start(self) -> Replica:
        self.ledger.register_replica(self.owner, self.ttl)
        self._prune()
        self._thread = threading.Thread(target=self._beat, name="csvbridge-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._closed.wait(self.ttl / 3):
            with self._lock:  # not while `hold` takes a lease: it would look lost
                try:
                    in_time, held = self.ledger.heartbeat(self.owner, self.ttl)
                except Exception as exc:  # the database is away: keep trying until expiry
                    log.warning("replica heartbeat failed: %s", exc)
                    continue
                lost = {n for n in self._held if n not in held}
            if not in_time or lost:
                self.lost = True
                log.error(
                    "this replica's lease expired before it was renewed%s: stopping, so "
                    "that no file is shipped twice",
                    f" (lost {', '.join(sorted(lost))})" if lost else "",
                )
                self.stop.set()
                return
            self._prune()

    def _prune(self) -> None:
        """Retention: forget the conversion ids of files done long ago (hourly)."""
        if self.retention_days is None or time.time() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = time.time()
        try:
            n = self.ledger.prune(time.time() - self.retention_days * 86400)
        except Exception as exc:
            log.warning("ledger retention: pruning failed: %s", exc)
            return
        if n:
            log.info("ledger retention: %d conversion ids of finished files pruned", n)

    def hold(self, name: str) -> str | None:
        """Take lease `name` (re-entrant within this process): None when held, else the
        owner token of the replica holding it."""
        with self._lock:
            if self._held[name] == 0:
                holder = self.ledger.acquire_lease(name, self.owner, self.ttl)
                if holder is not None:
                    return holder
            self._held[name] += 1
        return None

    def give_back(self, name: str) -> None:
        with self._lock:
            self._held[name] -= 1
            if self._held[name] > 0:
                return
            del self._held[name]
            try:
                self.ledger.release_lease(name, self.owner)
            except Exception as exc:  # it expires on its own
                log.warning("could not give back lease %s: %s", name, exc)

    def close(self) -> None:
        """A clean stop: the heartbeat ends and this replica's row, leases and claims go."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lost:
            return  # its rows may belong to the replica that took over: leave them
        try:
            self.ledger.unregister_replica(self.owner)
        except Exception as exc:
            log.warning("could not unregister this replica: %s", exc)


def describe_owner(token: str) -> str:
    """``pid 123 on host`` for a message, from an owner token."""
    owner = Owner.parse(token)
    return f"pid {owner.pid} on {owner.host}" if owner else token
