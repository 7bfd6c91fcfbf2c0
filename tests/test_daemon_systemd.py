"""`csvbridge watch` under systemd (``Type=notify``): a real process, a real
``NOTIFY_SOCKET`` opened by the test as systemd would, the datagrams read back."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from csvbridge.testing.emulator import Emulator
from tests.test_runner import (
    ROOT,
    TOKEN,
    listing,
    local_source,
    make_settings,
    wait_until,
    write_config,
    write_export,
)


class Systemd:
    """The receiving end of the notify protocol: every datagram, in order."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float = 1.0) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.split("\n"))
        self.messages.append(message)
        return message

    def until(self, want: Callable[[dict[str, str]], bool], timeout: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(max(0.05, deadline - time.monotonic()))
            if message is not None and want(message):
                return message
        raise AssertionError(f"no such notification; got {self.messages[-10:]}")

    def close(self) -> None:
        self.sock.close()


def test_watch_says_ready_status_pings_the_watchdog_and_says_stopping(
    tmp_path: Path, emulator: Callable[..., Emulator]
) -> None:
    emu = emulator(token=TOKEN)
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = make_settings(tmp_path, emu, local_source(drop, poll_interval_seconds=60))
    settings.metrics.port = 0
    config = write_config(tmp_path / "csvbridge.yaml", settings)
    systemd = Systemd(tmp_path / "notify")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NOTIFY_SOCKET": systemd.path,
        "WATCHDOG_USEC": "400000",  # systemd's WatchdogSec=0.4: a ping every 0.2 s
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "csvbridge", "watch", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        first = systemd.until(lambda m: True)
        assert first == {"READY": "1", "STATUS": "watching 1 sources"}  # nothing before READY
        systemd.until(lambda m: m.get("STATUS") == "polling shop")
        systemd.until(lambda m: m.get("STATUS", "").startswith("idle: 1 sources"))

        # idle: the main loop keeps pinging at half the watchdog interval
        start, pings = time.monotonic(), 0
        while time.monotonic() - start < 1.5:
            message = systemd.receive(0.5)
            pings += message == {"WATCHDOG": "1"}
        assert 4 <= pings <= 10, pings

        write_export(drop / "orders.csv", 3)
        systemd.until(lambda m: m.get("STATUS") == "processing shop/orders.csv")
        wait_until(lambda: "orders.csv" in listing(drop)["done"], what="orders.csv done")

        proc.send_signal(signal.SIGTERM)
        stopping = systemd.until(lambda m: "STOPPING" in m)
        assert stopping["STOPPING"] == "1"
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        systemd.close()
    assert proc.returncode == 0
    text = err.decode()
    # the banner: what it watches, where it delivers, where to look
    assert "watching 1 sources" in text
    assert re.search(r"source shop: drop file://\S+/drop \(conversions\), sinks api, watched live", text)
    assert f"destination api: {emu.url} (site {emu.site_id})" in text
    assert re.search(r"status page on http://127\.0\.0\.1:\d+/, metrics on", text)
    assert TOKEN not in text
