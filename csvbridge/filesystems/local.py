"""A local (or mounted) folder behind the same interface as the remote drops.

Mostly thin wrappers over `os`; the only policy is that a missing root folder is
`SourceUnavailable` (an unmounted share comes back), while a missing file inside it is a
plain FileNotFoundError like everywhere else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from csvbridge.errors import SourceUnavailable
from csvbridge.filesystems.base import FileInfo, FileSystem, child, local_target, normalize

_CHUNK = 1024 * 1024


class LocalFileSystem(FileSystem):
    """A directory on this machine; `file:///srv/drop` or a plain path."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()

    def _path(self, path: str) -> Path:
        rel = normalize(path)
        return self.root / rel if rel else self.root

    def list(self, path: str = "") -> list[FileInfo]:
        rel = normalize(path)
        if not self.root.is_dir():
            raise SourceUnavailable(f"folder {self.root} is not available", url=self.url)
        out = []
        with os.scandir(self._path(rel)) as entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:  # vanished between readdir and stat
                    continue
                out.append(
                    FileInfo(
                        entry.name,
                        child(rel, entry.name),
                        st.st_size,
                        st.st_mtime,
                        entry.is_dir(),
                    )
                )
        return out

    def info(self, path: str) -> FileInfo:
        rel = normalize(path)
        st = self._path(rel).stat()
        name = rel.rsplit("/", 1)[-1]
        return FileInfo(name, rel, st.st_size, st.st_mtime, os.path.isdir(self._path(rel)))

    def get(self, path: str, local: Path) -> None:
        with self._path(path).open("rb") as src, local_target(local) as out:
            shutil.copyfileobj(src, out, _CHUNK)

    def put(self, local: Path, path: str) -> None:
        with Path(local).open("rb") as src, self._path(path).open("wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)

    def read_bytes(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    def write_bytes(self, path: str, data: bytes) -> None:
        self._path(path).write_bytes(data)

    def rename(self, src: str, dst: str) -> None:
        os.replace(self._path(src), self._path(dst))

    def remove(self, path: str) -> None:
        self._path(path).unlink()

    def mkdir(self, path: str) -> None:
        self._path(path).mkdir(parents=True, exist_ok=True)

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def close(self) -> None:
        """Nothing to release."""
