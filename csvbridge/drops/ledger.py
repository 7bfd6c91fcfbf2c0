"""Durable state: the ledger (which files were handled, how far a file got, who holds
a file in ``processing/``, which replicas are alive and which holds which lease).

Why a ledger: a file must never be processed twice, and a ``kill -9`` in the middle of a
file must resume without re-sending the batches the API already accepted and without
losing any.  Two backends implement one interface (`LedgerStore`, rules in
`csvbridge.drops.ledger_base`): SQLite, the embedded default (`SqliteLedger`, also
importable as `Ledger`), and PostgreSQL for replicas on several machines
(`csvbridge.drops.ledger_pg`), chosen by ``state.ledger`` being a path or a
``postgresql://`` URL (`open_ledger`).  The tables are described in
`csvbridge.drops.ledger_rows`; ``csvbridge status`` shows what they hold.
"""

from __future__ import annotations

from pathlib import Path

from csvbridge.drops.ledger_base import AlreadyProcessed, LedgerError, LedgerStore, SqlLedger
from csvbridge.drops.ledger_rows import BatchEntry, FileEntry, make_fingerprint, sha256_file
from csvbridge.drops.ledger_sqlite import SqliteLedger
from csvbridge.errors import ConfigError

__all__ = [
    "AlreadyProcessed",
    "BatchEntry",
    "FileEntry",
    "Ledger",
    "LedgerError",
    "LedgerStore",
    "SqlLedger",
    "SqliteLedger",
    "is_database_url",
    "make_fingerprint",
    "open_ledger",
    "sha256_file",
]

Ledger = SqliteLedger  # the name every caller used before there were two backends

DATABASE_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(target: str | Path) -> bool:
    """True for a ``postgresql://`` URL, False for a SQLite path."""
    return isinstance(target, str) and target.lower().startswith(DATABASE_SCHEMES)


def open_ledger(target: str | Path, *, password: str | None = None) -> LedgerStore:
    """The ledger at `target`: a PostgreSQL URL (`password` from the configuration or
    the environment) or the path of a SQLite file."""
    if not is_database_url(target):
        return SqliteLedger(target)
    try:
        from csvbridge.drops.ledger_pg import PostgresLedger
    except ImportError:
        raise ConfigError(
            "a postgresql:// ledger needs psycopg: pip install 'csvbridge[postgres]'"
        ) from None
    return PostgresLedger(str(target), password=password)
