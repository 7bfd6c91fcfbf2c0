"""A throwaway PostgreSQL server for tests and benchmarks (Debian's ``postgresql``).

Why a real server: the PostgreSQL ledger's guarantees (row locks, SKIP of nothing, the
database clock) are only shown by PostgreSQL itself.  `throwaway_postgres` initialises
a cluster in a temporary folder, starts it on a free loopback port with password
(SCRAM) authentication, waits until it accepts connections and stops it at the end.
PostgreSQL refuses to run as root: as root the commands run as the ``postgres`` user
(``runuser``) in a folder it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from csvbridge.errors import ConfigError


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, dbname: str = "postgres") -> str:
        """The URL without the password (it travels apart, as in production)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), password=self.password, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), password=self.password, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_bin_dir() -> Path | None:
    """Where ``pg_ctl`` and ``initdb`` are (the newest installed version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_postgres(timeout: float = 60.0) -> Iterator[PgServer]:
    """A running server for the duration of the block (ConfigError without binaries)."""
    import psycopg

    bindir = postgres_bin_dir()
    if bindir is None:
        raise ConfigError("PostgreSQL binaries not found (apt-get install postgresql)")
    as_root = os.geteuid() == 0
    run_as: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="csvbridge-pg-"))
    owner = pwd.getpwnam("postgres") if as_root else None
    password = secrets.token_urlsafe(18)
    pwfile = base / "pw"
    pwfile.write_text(password)
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data, log, port = base / "data", base / "server.log", _free_port()
    try:
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
                str(int(timeout)),
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=timeout + 30,
        )
        server = PgServer("127.0.0.1", port, "csvbridge", password)
        deadline = time.monotonic() + timeout
        while True:  # pg_ctl -w saw the socket; wait until TCP logins work too
            try:
                with psycopg.connect(server.url(), password=password, connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        if data.exists():
            subprocess.run(
                [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)
