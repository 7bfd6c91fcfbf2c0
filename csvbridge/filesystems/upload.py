"""Uploads a concurrent poller can never see half-written: temporary name, then rename.

The temporary name is configurable because servers police names: pure-ftpd with
``ProhibitDotFilesWrite`` answers ``553 Prohibited file name`` to the classic hidden
``.feed.csv.part``.  The default tries the hidden name and, when the server refuses it,
the visible ``feed.csv.<random>.part`` (which importers matching ``*.csv`` still skip);
an explicit template or a temporary folder is used as configured, nothing else.

A refusal is an `UploadRefused`: a `TransientError`, so the caller leaves the source
file for a retry instead of filing it as failed, and the message quotes the server.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from csvbridge.errors import ConfigError, CsvBridgeError, TransientError
from csvbridge.filesystems.base import FileSystem, IncompleteTransfer, child, normalize
from csvbridge.filesystems.names import NAME_MAX, fit_name
from csvbridge.filesystems.remote import describe

log = logging.getLogger("csvbridge.filesystems")

HIDDEN = ".{name}.{token}.part"
VISIBLE = "{name}.{token}.part"


class UploadRefused(TransientError):
    """The server refused to store or rename an upload (5xx, permission, name policy).
    Transient for the caller: the file it came from stays for a retry."""


@dataclass(frozen=True)
class TempNaming:
    """How temporary uploads are named.

    `template` uses ``{name}`` (the final name) and ``{token}`` (random, required); None
    means "hidden, else visible" as described above.  `folder` (relative to the target
    folder, e.g. ``tmp``) keeps temporaries out of the watched folder altogether.
    """

    template: str | None = None
    folder: str = ""

    def __post_init__(self) -> None:
        if self.template is not None:
            if "{token}" not in self.template:
                raise ConfigError("upload_temp_name must contain {token} (uniqueness)")
            try:
                probe = self.template.format(name="x", token="t")
            except (KeyError, IndexError, ValueError):
                raise ConfigError(
                    f"upload_temp_name {self.template!r} may only use {{name}} and {{token}}"
                ) from None
            if "/" in probe or probe in (".", ".."):
                raise ConfigError("upload_temp_name must give a plain file name")
        normalize(self.folder)

    def candidates(self) -> list[str]:
        return [self.template] if self.template else [HIDDEN, VISIBLE]

    def path(self, rel: str, template: str) -> str:
        """A fresh temporary path for the upload of `rel` (always within NAME_MAX)."""
        parent, name = posixpath.split(rel)
        folder = normalize(posixpath.join(parent, self.folder)) if self.folder else parent
        token = secrets.token_hex(6)
        overhead = len(template.format(name="", token=token).encode("utf-8"))
        short = fit_name(name, max_bytes=NAME_MAX - overhead)
        return child(folder, template.format(name=short, token=token))


def put_atomic(
    fs: FileSystem,
    local: Path,
    path: str,
    *,
    attempts: int = 3,
    backoff: float = 0.5,
    naming: TempNaming | None = None,
) -> None:
    """Upload so that `path` only ever shows the complete file.

    Uploads under a temporary name (`naming`, else the filesystem's `temp_naming`), checks
    the remote size, then renames over `path`.  Transient failures are retried `attempts`
    times with exponential backoff; the temporary file is removed after any failure.  A
    refusal by the server raises `UploadRefused` (never a bare OSError).
    """
    local = Path(local)
    rel = normalize(path)
    if not rel:
        raise ValueError("put_atomic needs a file path")
    naming = naming or fs.temp_naming or TempNaming()
    size = local.stat().st_size
    templates = naming.candidates()
    if naming.folder:
        _make_folder(fs, posixpath.dirname(naming.path(rel, templates[0])), rel)
    attempt = 0
    while True:
        attempt += 1
        tmp = naming.path(rel, templates[0])
        done = False
        try:
            _upload(fs, local, tmp, rel, size)
            done = True
            return
        except UploadRefused as exc:
            if exc.context.get("stage") == "store" and len(templates) > 1:
                log.warning(
                    "%s refused the temporary name %s (%s); using visible temporary names "
                    "(set upload_temp_name to choose)",
                    fs.url,
                    posixpath.basename(tmp),
                    exc.message,
                )
                templates = templates[1:]
                continue
            raise
        except TransientError as exc:
            if attempt >= attempts:
                raise
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "upload of %s to %s failed (%s); retry %d/%d in %.1fs",
                rel,
                fs.url,
                exc,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
        finally:
            if not done:
                _discard(fs, tmp)


def _upload(fs: FileSystem, local: Path, tmp: str, rel: str, size: int) -> None:
    try:
        fs.put(local, tmp)
    except (PermissionError, FileNotFoundError, IsADirectoryError) as exc:
        if isinstance(exc, FileNotFoundError) and not local.exists():
            raise
        raise UploadRefused(
            f"server refused to store {posixpath.basename(tmp)}: {_reason(exc)}",
            url=fs.url,
            path=rel,
            stage="store",
        ) from None
    remote = fs.info(tmp).size
    if remote != size:
        raise IncompleteTransfer(f"uploaded {remote} of {size} bytes", url=fs.url, path=rel)
    try:
        fs.rename(tmp, rel)
    except CsvBridgeError:
        raise
    except OSError as exc:
        raise UploadRefused(
            f"server refused to rename the upload into place: {_reason(exc)}",
            url=fs.url,
            path=rel,
            stage="rename",
        ) from None


def _make_folder(fs: FileSystem, folder: str, rel: str) -> None:
    try:
        fs.mkdir(folder)
    except OSError as exc:
        raise UploadRefused(
            f"cannot create the temporary upload folder {folder}: {_reason(exc)}",
            url=fs.url,
            path=rel,
            stage="mkdir",
        ) from None


def _reason(exc: OSError) -> str:
    return describe(exc) if not exc.strerror else exc.strerror


def _discard(fs: FileSystem, tmp: str) -> None:
    """Best-effort removal of a temporary upload; never masks the original error."""
    try:
        fs.remove(tmp)
    except FileNotFoundError:
        pass
    except Exception as exc:
        log.warning("could not remove temporary file %s on %s: %s", tmp, fs.url, describe(exc))
