"""systemd's notify protocol (``Type=notify``), written by hand because it is one datagram.

The daemon says READY=1 when its sources are set up, STATUS=… with what it is doing,
WATCHDOG=1 from its main loop (systemd restarts it when the pings stop) and STOPPING=1
on shutdown.  Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.  The
protocol: https://www.freedesktop.org/software/systemd/man/sd_notify.html — a
datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means the abstract namespace).  A dependency (sdnotify, systemd-python)
would add nothing but a package to install.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd; silent and harmless when not run by systemd."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # ping at half the timeout, as sd_watchdog_enabled(3) advises
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None
        self._last_ping = 0.0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); True when a datagram went out."""
        if self.address is None:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode("utf-8", "replace"), self.address)
            return True
        except OSError as exc:  # systemd gone or socket unusable: never fatal
            log.debug("systemd notification failed: %s", exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(status=text.replace("\n", " ")[:200])

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(stopping=1, status=status)

    def watchdog(self) -> bool:
        """Ping the watchdog if one is configured and half its interval has passed."""
        if self.watchdog_interval is None:
            return False
        now = time.monotonic()
        if now - self._last_ping < self.watchdog_interval:
            return False
        self._last_ping = now
        return self.notify(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
