"""The daemon's status page, in a real headless Chromium (Debian's package) driven over
the DevTools protocol: it renders offline, shows the file in progress with its bar and
ETA, updates itself, links the reports it wrote -- and nothing else, and no secret."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csvbridge.config import SourceSettings
from csvbridge.progress import Telemetry
from csvbridge.statuspage import StatusPage
from csvbridge.testing.emulator import Emulator
from tests.test_daemon import daemon
from tests.test_runner import (
    TOKEN,
    listing,
    local_source,
    make_settings,
    wait_until,
    write_export,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FTP_PASSWORD = "ftp-pw-Zq81-secret"  # a failing source's password: never on the page
HOSTILE = "<img src=x onerror=document.title='pwned'>.csv"  # a name someone dropped


class Browser:
    """Headless Chromium with a fresh profile; `evaluate` runs JavaScript in the page."""

    def __init__(self, url: str, profile: Path) -> None:
        import websocket  # websocket-client, in the test extra

        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = profile / "DevToolsActivePort"
        port = wait_until(
            lambda: active.exists() and active.read_text().split("\n")[0],
            timeout=60,
            what="Chromium's DevTools port",
        )

        def page() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        self.ws = websocket.create_connection(wait_until(page, what="the page"), timeout=20)
        self._id = 0

    def evaluate(self, expression: str) -> Any:
        self._id += 1
        self.ws.send(
            json.dumps(
                {
                    "id": self._id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True, "awaitPromise": True},
                }
            )
        )
        while True:
            answer = json.loads(self.ws.recv())
            if answer.get("id") == self._id:
                result = answer["result"]
                assert "exceptionDetails" not in result, result
                return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser_factory(tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver)")
    opened: list[Browser] = []

    def open_(url: str) -> Browser:
        profile = tmp_path / f"chromium-profile-{len(opened)}"
        profile.mkdir()
        opened.append(Browser(url, profile))
        return opened[-1]

    yield open_
    for b in opened:
        b.close()


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_status_page_in_a_real_browser_shows_progress_updates_and_links_reports(
    tmp_path: Path,
    emulator: Callable[..., Emulator],
    caplog: pytest.LogCaptureFixture,
    browser_factory: Callable[[str], Browser],
) -> None:
    emu = emulator(token=TOKEN, speed=1)  # 30 objects/s: 150 conversions take ~5 s
    drop = tmp_path / "drop"
    drop.mkdir()
    broken = SourceSettings(
        name="partner-ftp",
        url="ftp://partner@127.0.0.1:1/",  # nothing listens on port 1
        username="partner",
        password=FTP_PASSWORD,
        min_age_seconds=0,
        stable_polls=0,
        poll_interval_seconds=60,
    )
    settings = make_settings(
        tmp_path, emu, local_source(drop, poll_interval_seconds=60), broken,
        max_objects_per_request=10,
    )  # fmt: skip
    settings.metrics.port = 0
    with daemon(settings, caplog) as d:
        url = d["url"]
        wait_until(lambda: (drop / "processing").is_dir(), what="the first pass")
        ids, _ = write_export(drop / HOSTILE, 150)
        b = browser_factory(url + "/")

        # renders, offline: no request ever left for another host (CSP: default-src 'none')
        wait_until(
            lambda: b.evaluate("document.body && document.body.dataset.updates"), what="an update"
        )
        assert b.evaluate("document.title") == "csvbridge"

        # the file in progress, with its bar and ETA
        def shipping() -> Any:
            return b.evaluate(
                "(() => { const l = document.getElementById('current-line');"
                " return l && l.textContent.includes('shipped') && l.textContent.includes('obj/s')"
                " && parseFloat(document.getElementById('current-bar').style.width) > 0"
                " && document.getElementById('current-eta').textContent.startsWith('ETA ')"
                " ? [l.textContent, document.getElementById('current-bar').style.width,"
                " Number(document.body.dataset.updates)] : null })()"
            )

        line, width, updates = wait_until(shipping, timeout=30, what="the shipping bar")
        assert HOSTILE in line  # shown as text...

        # ...and it updates by itself
        def moved() -> Any:
            now = shipping()
            return now if now and now[1] != width and now[2] > updates else None

        wait_until(moved, timeout=30, what="the bar to move")

        # meanwhile /metrics has the file's objects remaining and its ETA
        def in_flight() -> tuple[float, float] | None:
            _, text = fetch(url + "/metrics")
            found = {
                s.name: s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.labels == {"source": "shop"}
            }
            left = found.get("csvbridge_file_objects_remaining", 0)
            eta = found.get("csvbridge_file_eta_seconds", 0)
            return (left, eta) if 0 < left < 150 and eta > 0 else None

        left, eta = wait_until(in_flight, timeout=30, what="remaining objects and ETA")
        assert eta < 60  # 30 objects/s

        # sources, with the failing one's state and reason
        wait_until(
            lambda: b.evaluate(
                "[...document.querySelectorAll('#sources tr')].some(r =>"
                " r.textContent.includes('partner-ftp') && r.textContent.includes('failing'))"
            ),
            what="the failing source on the page",
        )

        wait_until(lambda: HOSTILE in listing(drop)["done"], timeout=60, what="the file done")
        row = wait_until(
            lambda: b.evaluate(
                "(() => { const r = [...document.querySelectorAll('#files tr')].find(r =>"
                " r.textContent.includes('done')); const a = r && r.querySelector('a');"
                " return a ? [r.textContent, a.href] : null })()"
            ),
            what="the finished file with its report link",
        )
        assert HOSTILE in row[0] and "150" in row[0]
        report = json.loads(b.evaluate(f"fetch({json.dumps(row[1])}).then(r => r.text())"))
        assert report["file"] == HOSTILE and report["conversions"]["shipped"] == 150
        chart = b.evaluate("document.querySelectorAll('#chart rect').length")
        assert chart == 60  # a bar per minute of the last hour
        assert b.evaluate("Math.max(...[...document.querySelectorAll('#chart rect')]"
                          ".map(r => parseFloat(r.getAttribute('height'))))") > 0  # fmt: skip

        # the dropped name never became markup
        assert b.evaluate("document.title") == "csvbridge"
        assert b.evaluate("document.querySelectorAll('main img').length") == 0

        # secrets never on the page, its data, or a report
        html = b.evaluate("document.documentElement.outerHTML")
        status, data = fetch(url + "/status.json")
        assert status == 200
        for text in (html, data, json.dumps(report)):
            assert TOKEN not in text and FTP_PASSWORD not in text
        assert "partner-ftp" in data

        # only the reports it wrote: by number, never by path
        report_id = row[1].rsplit("/", 1)[1]
        assert fetch(f"{url}/reports/{report_id}")[0] == 200
        for probe in ("0", "999", "../ledger.sqlite", "%2e%2e%2fledger.sqlite", "1/../../etc/passwd", "-1"):
            assert fetch(f"{url}/reports/{probe}")[0] == 404, probe
    assert ids


def test_status_page_serves_reports_by_number_only(tmp_path: Path) -> None:
    tel = Telemetry()
    page = StatusPage(tel)
    tel.file_finished(source="s", file="a.csv", state="done", report=b'{"file": "a.csv"}')
    tel.file_finished(source="s", file="b.csv", state="failed", report=b"x" * (2 << 20))
    assert page.answer("/reports/1").body == b'{"file": "a.csv"}'  # type: ignore[union-attr]
    assert page.answer("/reports/2").status == 404  # type: ignore[union-attr]  # too big to keep
    assert page.answer("/reports/a.csv") is None  # not a route: the server answers 404
    snapshot = json.loads(page.answer("/status.json").body)  # type: ignore[union-attr]
    assert [f["file"] for f in snapshot["finished"]] == ["b.csv", "a.csv"]
    assert [f["has_report"] for f in snapshot["finished"]] == [False, True]
    for n in range(3, 30):  # only the last files are kept, and their reports with them
        tel.file_finished(source="s", file=f"{n}.csv", state="done", report=b"{}")
    assert page.answer("/reports/1").status == 404  # type: ignore[union-attr]
    assert os.fspath(tmp_path)  # nothing of the file system is reachable from a URL
