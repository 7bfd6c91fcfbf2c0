"""How csvbridge writes files: private, atomic where that is safe, never replacing what
is not a plain file.

Everything the tool writes (outputs, reports, rejects, feeds, state) holds customer
data, so it is created readable by its owner only (0600), whatever the umask.  A path
that does not exist yet or is a regular file is written beside itself and renamed into
place, so a reader never sees half of it.  A path that is a device (``/dev/null``,
``/dev/stdout``), a FIFO or a symlink is written *through*: renaming onto it would
replace ``/dev/null`` with a regular file when run as root, or turn a link into a copy.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PRIVATE = 0o600


def replaceable(path: str | Path) -> bool:
    """True when `path` may be replaced by a rename: missing, or a regular file (not a
    link to one)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    return stat.S_ISREG(st.st_mode)


def open_private(path: str | Path, mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """Open `path` for writing, created 0600 whatever the umask (truncated if it is
    there).  A link in the last component is not followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_APPEND if "a" in mode else os.O_TRUNC
    fd = os.open(path, flags, PRIVATE)
    try:
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def write_into_place(dest: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Yield a file to write `dest`'s new content into.

    A regular or new `dest` gets a private temporary file beside it, renamed onto
    `dest` when the block ends without error (removed otherwise).  Anything else is
    opened and written through, never replaced.
    """
    dest = Path(dest)
    if not replaceable(dest):
        with open(dest, mode, **kwargs) as f:
            yield f
        return
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with open_private(part, mode, **kwargs) as f:
            yield f
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def move_into_place(produced: str | Path, dest: str | Path) -> None:
    """Put a finished file at `dest`: renamed when that is safe and on one file system,
    else copied (through a device, FIFO or link; or atomically across file systems)."""
    produced, dest = Path(produced), Path(dest)
    if replaceable(dest):
        try:
            os.chmod(produced, PRIVATE)
            os.replace(produced, dest)
            return
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: another file system, copy instead
                raise
    with open(produced, "rb") as src, write_into_place(dest) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def write_bytes(dest: str | Path, data: bytes) -> None:
    """`Path.write_bytes`, private and atomic (or through a device)."""
    with write_into_place(dest) as f:
        f.write(data)
