"""The PostgreSQL backend of the ledger, for several replicas on several machines.

Why PostgreSQL: replicas on several machines cannot share a SQLite file (its locks do
not work over network filesystems).  Every method is one transaction from a small
psycopg 3 connection pool; rows that decide who works on what (claims, leases, a file's
row in `begin`) are locked with ``SELECT ... FOR UPDATE`` so two replicas deciding at
the same moment are serialised, and lease expiry is measured on the database's clock,
so the replicas' own clocks may disagree.  The password comes from the configuration or
the environment (``PGPASSWORD``, ``~/.pgpass``), never from logs: `location` is the URL
without it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from csvbridge.drops.ledger_base import LedgerError, SqlLedger
from csvbridge.drops.ledger_rows import PG_MIGRATIONS, SCHEMA_VERSION
from csvbridge.errors import TerminalError
from csvbridge.redaction import register_secret

CONNECT_TIMEOUT_SECONDS = 10.0
MIGRATION_LOCK = 0x637362726467  # pg_advisory_xact_lock key: one migrating replica at a time


class _Row(tuple[Any, ...]):
    """A row readable by position and by column name, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> _Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: _Row(values, index)


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (the SQL has no ``%``)."""
    return sql.replace("?", "%s")


class _Tx:
    """A transaction's connection, speaking the shared SQL."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)


def redacted(url: str) -> str:
    """The URL without its password, for logs, errors and ``csvbridge status``."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    params.pop("password", None)
    host, port, db = params.get("host", ""), params.get("port", ""), params.get("dbname", "")
    user = params.get("user")
    return f"postgresql://{user + '@' if user else ''}{host}{':' + str(port) if port else ''}/{db}"


class PostgresLedger(SqlLedger):
    """The ledger in a PostgreSQL database.  Thread-safe (a connection pool)."""

    _for_update = " FOR UPDATE"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        max_connections: int = 4,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.location = redacted(url)
        try:
            given = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError:
            raise TerminalError("the ledger URL is not a PostgreSQL URL") from None
        for secret in (password, given):
            if secret:
                register_secret(str(secret))
        extra: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout))}
        if password:
            extra["password"] = password
        self._pool = ConnectionPool(
            make_conninfo(url, **extra),
            kwargs={"row_factory": _row_factory},
            min_size=1,
            max_size=max(1, max_connections),
            open=False,
            name="csvbridge-ledger",
            timeout=connect_timeout * 3,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise LedgerError(
                "cannot connect to the ledger database (see the server's log, or the "
                "host, port, user and password)",
                ledger=self.location,
            ) from None
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def _translate(self, exc: BaseException) -> Exception:
        """Connection lost, server shutting down, a lock or serialisation conflict, a
        full disk: transient; a broken schema or statement: terminal."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, PoolTimeout | psycopg.OperationalError):
            return LedgerError(f"ledger database error: {text}", ledger=self.location)
        if isinstance(exc, psycopg.errors.InsufficientResources | psycopg.InternalError):
            return LedgerError(f"ledger database error: {text}", ledger=self.location)
        return TerminalError(f"ledger database error: {text}", ledger=self.location)

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One transaction on a pooled connection: committed when the block ends, rolled
        back when it raises."""
        try:
            with self._pool.connection() as conn:
                yield _Tx(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._translate(exc) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._write() as c:
            return c.execute(sql, params).fetchall()

    def _now(self, c: Any) -> float:
        return float(
            c.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
        )

    def _migrate(self) -> None:
        with self._write() as c:
            c.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise TerminalError(
                    f"ledger schema version {current} is newer than this csvbridge "
                    f"supports ({SCHEMA_VERSION}); upgrade csvbridge",
                    ledger=self.location,
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in PG_MIGRATIONS[version]:
                    c.execute(statement)
                c.execute(
                    "INSERT INTO schema_version VALUES (?, extract(epoch FROM now()))", (version,)
                )

    def close(self) -> None:
        self._pool.close()
