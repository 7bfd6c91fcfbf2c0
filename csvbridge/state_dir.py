"""The default state folder: where the system expects a service's state, not beside its
config (a config in ``/etc`` once put the ledger in ``/etc/csvbridge-state/``).

In order: ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; the first of a
colon-separated list), ``/var/lib/csvbridge`` for root, ``$XDG_STATE_HOME/csvbridge``,
``~/.local/state/csvbridge`` (the XDG default).  One folder per user: two configs run by
the same user share it (its ledger and lock) unless one sets ``state.dir``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SYSTEM_STATE_DIR = Path("/var/lib/csvbridge")


@dataclass(frozen=True)
class StateDir:
    path: Path
    why: str  # which rule chose it, for `csvbridge config show`


def default_state_dir(env: Mapping[str, str] | None = None, euid: int | None = None) -> StateDir:
    """The folder for the ledger, work files and lock when the config names none.

    `env` and `euid` default to this process's (parameters so tests need not be root)."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    systemd = [p for p in env.get("STATE_DIRECTORY", "").split(":") if p]
    if systemd:
        return StateDir(Path(systemd[0]), "$STATE_DIRECTORY (systemd StateDirectory=)")
    if euid == 0:
        return StateDir(SYSTEM_STATE_DIR, "root: the system state folder")
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is ignored
        return StateDir(Path(xdg) / "csvbridge", "$XDG_STATE_HOME")
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return StateDir(home / ".local" / "state" / "csvbridge", "XDG default (~/.local/state)")
