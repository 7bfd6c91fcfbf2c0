"""pytest fixtures (postgres): a real, throwaway PostgreSQL server for the session
(`csvbridge.testing.postgres`), and a fresh database per test (`pg_url`).

Debian's ``postgresql`` package provides the server (`.ci/run` installs it); tests skip,
saying why, only when its binaries are missing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from csvbridge.testing.postgres import PgServer, postgres_bin_dir, throwaway_postgres

__all__ = ["PgServer", "pg_server", "pg_url"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql; .ci/run does)")
    with throwaway_postgres() as server:
        yield server


_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test; its URL (password: ``pg_server.password``)."""
    name = f"t{os.getpid()}_{next(_numbers)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)
