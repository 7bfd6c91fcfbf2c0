"""pytest fixtures (postgres): a real, throwaway PostgreSQL server for the session.

Debian's ``postgresql`` package (``initdb`` and ``pg_ctl`` under
/usr/lib/postgresql/*/bin; `.ci/run` installs it).  The cluster lives in a temporary
folder, listens on a free loopback port with password (SCRAM) authentication, and is
stopped at the end of the session.  PostgreSQL refuses to run as root: as root the
commands run as the ``postgres`` user (``runuser``), in a folder it owns.  Every test
gets its own database (`pg_url`).  Tests skip, saying why, only when the binaries are
missing.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import wait_until


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, dbname: str = "postgres") -> str:
        """The URL without the password (it travels apart, as in production)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql; .ci/run does)")
    import psycopg

    as_root = os.geteuid() == 0
    run_as: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="csvbridge-pg-"))
    if as_root:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    password = secrets.token_urlsafe(18)
    pwfile = base / "pw"
    pwfile.write_text(password)
    if as_root:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    data, log, port = base / "data", base / "server.log", _free_port()
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "csvbridge",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c max_connections=200 -c shared_buffers=32MB"
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    server = PgServer("127.0.0.1", port, "csvbridge", password)

    def ready() -> bool:
        try:
            with psycopg.connect(server.url(), password=password, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    try:
        wait_until(ready, timeout=60, what="PostgreSQL accepting connections")
        yield server
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test; its URL (password: ``pg_server.password``)."""
    import psycopg

    name = f"t{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(pg_server.url(), password=pg_server.password, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url(), password=pg_server.password, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
