"""Who works on what, in SQL both backends share: claims on files, replicas, leases.

Why expiring rows (and not database locks held for a whole file): see
`csvbridge.drops.replicas`.  Decisions are made inside one transaction with the
contested row locked (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and
expiry is measured on the backend's clock (`Backend._now`: the database server's for
PostgreSQL, so replicas' clocks may disagree).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from csvbridge.drops.ledger_rows import ClaimEntry, LeaseEntry, ReplicaEntry
from csvbridge.drops.lock import Owner, me


class Backend:
    """The hooks a ledger backend provides: `_write` (one transaction, yielding
    something with ``execute`` and ``executemany`` that speaks ``?`` placeholders),
    `_read`, `_now` and `_for_update` (the row-lock suffix of a SELECT)."""

    location: str = ""
    _for_update: str = ""  # row lock suffix for a SELECT inside a write transaction

    # -- provided by a backend --------------------------------------------------------

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _now(self, c: Any) -> float:
        return time.time()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LeaseRules(Backend):
    """Claims, replicas and leases (schema 4)."""

    # -- claims -----------------------------------------------------------------------

    def _gone(self, c: Any, token: str, now: float) -> bool:
        """Whether the owner named by `token` is certainly gone: dead on this host, or a
        replica whose heartbeat expired.  An owner on another host without a heartbeat
        row (an older release, a cron pass) counts as alive."""
        holder = Owner.parse(token)
        if holder is None:
            return True
        if holder.host == socket.gethostname() and not holder.alive():
            return True
        row = c.execute("SELECT expires_at FROM replicas WHERE owner = ?", (token,)).fetchone()
        if row is not None:
            return float(row[0]) < now
        return not holder.alive()

    def _take(
        self,
        c: Any,
        table: str,
        key: str,
        key_values: tuple[Any, ...],
        insert_sql: str,
        insert_params: tuple[Any, ...],
    ) -> tuple[Any, bool]:
        """(owner, expires_at) of the row of `table` at `key`, locked for this
        transaction; or (None, True) when the row was created now, ours."""
        expires = "expires_at" if table == "leases" else "NULL"
        select = f"SELECT owner, {expires} FROM {table} WHERE {key}{self._for_update}"
        row = c.execute(select, key_values).fetchone()
        if row is not None:
            return row, False
        if c.execute(insert_sql, insert_params).fetchone() is not None:
            return None, True
        return c.execute(select, key_values).fetchone(), False  # inserted by another

    def claim(self, source: str, path: str, owner: Owner | None = None) -> Owner | None:
        """Claim `path` of `source` for `owner` (this process by default).

        Returns None when the claim is ours (new, already ours, or taken over from an
        owner that is gone), else the live owner holding it: leave that file alone.
        """
        owner = owner or me()
        with self._write() as c:
            now = self._now(c)
            row, created = self._take(
                c,
                "claims",
                "source = ? AND path = ?",
                (source, path),
                "INSERT INTO claims (source, path, owner, claimed_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (source, path) DO NOTHING RETURNING owner",
                (source, path, owner.token, now),
            )
            if created:
                return None
            held_by = row[0]
            if held_by != owner.token and not self._gone(c, held_by, now):
                return Owner.parse(held_by)
            c.execute(
                "UPDATE claims SET owner = ?, claimed_at = ? WHERE source = ? AND path = ?",
                (owner.token, now, source, path),
            )
        return None

    def release(self, source: str, path: str) -> None:
        """Forget the claim on `path` (filed away, or never moved into processing/)."""
        with self._write() as c:
            c.execute("DELETE FROM claims WHERE source = ? AND path = ?", (source, path))

    def claims(self) -> list[ClaimEntry]:
        rows = self._read("SELECT source, path, owner, claimed_at FROM claims ORDER BY claimed_at")
        return [ClaimEntry(r[0], r[1], r[2], float(r[3])) for r in rows]

    # -- replicas and leases ----------------------------------------------------------

    def register_replica(self, owner: Owner, ttl: float) -> None:
        """Announce `owner` as a replica whose heartbeat lasts `ttl` seconds."""
        with self._write() as c:
            now = self._now(c)
            c.execute(
                "INSERT INTO replicas (owner, host, pid, started_at, heartbeat_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at",
                (owner.token, owner.host, owner.pid, now, now, now + ttl),
            )

    def heartbeat(self, owner: Owner, ttl: float) -> tuple[bool, set[str]]:
        """Renew `owner`'s replica row and every lease it holds.

        Returns (``in_time``, leases still held).  ``in_time`` is False when the row had
        expired (or vanished) before this renewal: another replica may have taken over
        this one's claims and leases, so this one must stop shipping."""
        with self._write() as c:
            now = self._now(c)
            row = c.execute(
                f"SELECT expires_at FROM replicas WHERE owner = ?{self._for_update}",
                (owner.token,),
            ).fetchone()
            in_time = row is not None and float(row[0]) >= now
            c.execute(
                "INSERT INTO replicas (owner, host, pid, started_at, heartbeat_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at",
                (owner.token, owner.host, owner.pid, now, now, now + ttl),
            )
            held = c.execute(
                "UPDATE leases SET expires_at = ? WHERE owner = ? RETURNING name",
                (now + ttl, owner.token),
            ).fetchall()
        return in_time, {r[0] for r in held}

    def expired_since(self, owner: Owner) -> float | None:
        """Seconds since `owner`'s row expired, None while it has not (for tests/status)."""
        rows = self._read("SELECT expires_at FROM replicas WHERE owner = ?", (owner.token,))
        if not rows:
            return None
        late = time.time() - float(rows[0][0])
        return late if late > 0 else None

    def unregister_replica(self, owner: Owner) -> None:
        """A clean stop: the replica's row, leases and claims go (its files left in
        processing/ are resumed by whoever comes next, at once)."""
        with self._write() as c:
            c.execute("DELETE FROM leases WHERE owner = ?", (owner.token,))
            c.execute("DELETE FROM claims WHERE owner = ?", (owner.token,))
            c.execute("DELETE FROM replicas WHERE owner = ?", (owner.token,))

    def acquire_lease(self, name: str, owner: Owner, ttl: float) -> str | None:
        """Take (or renew) the lease `name` for `ttl` seconds: None when it is ours, else
        the owner token of the live replica holding it."""
        with self._write() as c:
            now = self._now(c)
            row, created = self._take(
                c,
                "leases",
                "name = ?",
                (name,),
                "INSERT INTO leases (name, owner, acquired_at, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING owner",
                (name, owner.token, now, now + ttl),
            )
            if created:
                return None
            held_by, expires = row[0], float(row[1])
            if held_by == owner.token:
                c.execute("UPDATE leases SET expires_at = ? WHERE name = ?", (now + ttl, name))
                return None
            if expires >= now and not self._gone(c, held_by, now):
                return str(held_by)
            c.execute(
                "UPDATE leases SET owner = ?, acquired_at = ?, expires_at = ? WHERE name = ?",
                (owner.token, now, now + ttl, name),
            )
        return None

    def release_lease(self, name: str, owner: Owner) -> None:
        with self._write() as c:
            c.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner.token))

    def replicas(self) -> list[ReplicaEntry]:
        now = time.time()
        rows = self._read(
            "SELECT owner, host, pid, started_at, heartbeat_at, expires_at FROM replicas "
            "ORDER BY started_at"
        )
        return [
            ReplicaEntry(
                r[0], r[1], int(r[2]), float(r[3]), float(r[4]), float(r[5]), float(r[5]) >= now
            )
            for r in rows
        ]

    def leases(self) -> list[LeaseEntry]:
        now = time.time()
        rows = self._read("SELECT name, owner, acquired_at, expires_at FROM leases ORDER BY name")
        return [LeaseEntry(r[0], r[1], float(r[2]), float(r[3]), float(r[3]) >= now) for r in rows]
