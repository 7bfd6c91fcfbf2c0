"""Who holds what: the pass lock (one pass per lock file) and process identities.

An `Owner` names a process so that another process can tell, later, whether it is still
running: host, boot, pid *and* the pid's start time (a pid alone is reused).  The pass
lock records its holder for humans; a claim on a file in ``processing/`` records its
owner so that a second daemon never resumes a file the first one is still working on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

from csvbridge.errors import ConfigError, LockedError
from csvbridge.files import PRIVATE

_FIELD = re.compile(r"(\w+)=(\S+)")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie is dead, just not reaped yet
        return None
    return fields[19]


@dataclass(frozen=True, slots=True)
class Owner:
    """A process, identified well enough to know later whether it is still alive."""

    host: str
    boot: str
    pid: int
    start: str  # start ticks since boot ("?" where /proc is not available)

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        """The owner a `token` names, None if the token is not one."""
        parts = token.split("/")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    @property
    def token(self) -> str:
        return f"{self.host}/{self.boot}/{self.pid}/{self.start}"

    def alive(self) -> bool:
        """False only when this owner is certainly gone.

        Another host's process cannot be checked from here: it counts as alive.  After a
        reboot, or when the pid now belongs to a process started at another time, the
        owner is gone."""
        if self.host != socket.gethostname():
            return True
        if self.boot != _boot_id():
            return False
        start = _start_ticks(self.pid)
        if start is None:
            return False
        if "?" in (start, self.start):  # no /proc: the pid alone must do
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return start == self.start


@cache
def this_process() -> Owner:
    """The `Owner` of the running process (cached: forks get their own, see below)."""
    return _current(os.getpid())


def _current(pid: int) -> Owner:
    return Owner(socket.gethostname(), _boot_id(), pid, _start_ticks(pid) or "?")


def me() -> Owner:
    """The running process, also right after a fork (the cache is per pid)."""
    owner = this_process()
    return owner if owner.pid == os.getpid() else _current(os.getpid())


class PassLock:
    """Only one pass at a time: an exclusive ``flock`` on a lock file.

    The kernel releases the lock when the holder dies, even by ``kill -9``, so there is no
    stale lock to clean up.  The file itself is never deleted (deleting it would let two
    processes lock two different files of the same name); it holds the holder's pid and
    start time for humans.  It is opened without following a link and created 0600: a
    lock path made a link to another file must not truncate that file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> PassLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this PassLock")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(
                    "the lock file is a symbolic link: refusing to use it "
                    "(remove it, csvbridge creates its own)",
                    lock_file=str(self.path),
                ) from None
            raise ConfigError(
                f"cannot open the lock file: {exc.strerror}", lock_file=str(self.path)
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = holder.get("pid")
            raise LockedError(
                f"another csvbridge pass is running (pid {pid or 'unknown'})",
                pid=pid,
                since=holder.get("started"),
                lock_file=str(self.path),
            ) from None
        owner = me()
        info = (
            f"pid={owner.pid} started={datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} "
            f"host={owner.host} owner={owner.token}\n"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _read_holder(fd: int) -> dict[str, Any]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            return {}
        fields = dict(_FIELD.findall(text))
        out: dict[str, Any] = {}
        if fields.get("pid", "").isdigit():
            out["pid"] = int(fields["pid"])
        if "started" in fields:
            out["started"] = fields["started"]
        return out

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # while still locked: nobody else is writing
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> PassLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
