"""``csvbridge demo``: the whole job on shipped fixtures, with no account and no server.

On free loopback ports it starts the bulk API emulator, the tracking API stand-in, the
Commerce HQ stand-in and csvbridge's own FTP drop, then runs one cron pass over:

* ``shop``: a local drop with the shipped export in the documented header format (two
  conversions in it are deliberately broken: they are rejected with their reasons);
* ``commercehq``: orders pulled from the Commerce HQ stand-in, shipped to the bulk API
  *and* sent as ``purchase`` events to the tracking stand-in;
* ``ftpdrop``: a file uploaded with ftplib into csvbridge's own FTP drop.

Then it says where everything went, in a few lines.
"""

from __future__ import annotations

import ftplib
import io
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TextIO

from pydantic import SecretStr

from csvbridge.config import (
    ApiSettings,
    EventsSettings,
    Settings,
    SourceSettings,
    StateSettings,
)
from csvbridge.drops.ftpserver import FtpDrop, FtpDropSettings, hash_password
from csvbridge.drops.inboxes import ftp_drop_settings
from csvbridge.drops.outcome import PassSummary
from csvbridge.drops.runner import run_once
from csvbridge.testing.commercehq import CommerceHQStandIn
from csvbridge.testing.emulator import Emulator
from csvbridge.testing.samples import generate
from csvbridge.testing.tracking import TrackingStandIn

TOKEN = "demo-token"
SITE = "1234"
EVENTS_KEY = "demo-source-key"
FTP_USER, FTP_PASSWORD = "erp", "demo-ftp-password"
ORDERS = 40  # in the Commerce HQ stand-in's shop


def _demo_files() -> list[Path]:
    folder = resources.files("csvbridge") / "data" / "demo"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".csv"))


def _sources(root: Path, shop: CommerceHQStandIn) -> list[SourceSettings]:
    drop = root / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    for f in _demo_files():
        shutil.copy(f, drop / f.name)
    ftp = FtpDropSettings(
        root=root / "ftp-drop",
        users=[{"name": FTP_USER, "password_hash": hash_password(FTP_PASSWORD, iterations=1000)}],
        allow_plain_ftp=True,  # loopback only; a real drop uses tls_cert/tls_key
    )
    return [
        SourceSettings(name="shop", url=drop.as_uri(), min_age_seconds=0, stable_polls=0),
        SourceSettings(
            name="commercehq",
            url=f"commercehq+http://{shop.host}:{shop.port}",
            api_key=shop.api_key,
            api_password=shop.api_password,
            sinks=["api", "events"],
        ),
        SourceSettings(name="ftpdrop", url="ftpserver://127.0.0.1:0/", ftpserver=ftp),
    ]


def _upload(source: SourceSettings, export: Path) -> str:
    """Push `export` into csvbridge's own FTP drop with ftplib, as an ERP would."""
    with FtpDrop(ftp_drop_settings(source), on_file=lambda _: None) as drop:
        host, port = drop.address
        client = ftplib.FTP()
        client.connect(host, port, timeout=10)
        client.login(FTP_USER, FTP_PASSWORD)
        client.storbinary(f"STOR {export.name}", io.BytesIO(export.read_bytes()))
        client.quit()
    return f"ftp://{FTP_USER}@{host}:{port}/{export.name}"


def run_demo(base: Path | None = None, *, out: TextIO) -> int:
    """Run the demo; returns 0 when every row was accounted for and delivered as expected."""
    root = Path(base) if base else Path(tempfile.mkdtemp(prefix="csvbridge-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    with (
        Emulator(token=TOKEN, site_id=SITE) as emulator,
        TrackingStandIn(token=EVENTS_KEY, site_id=SITE) as tracking,
        CommerceHQStandIn(orders=ORDERS, seed=1) as shop,
    ):
        sources = _sources(root, shop)
        settings = Settings(
            api=ApiSettings(base_url=emulator.url, site_id=SITE, token=SecretStr(TOKEN)),
            events=EventsSettings(base_url=tracking.url, site_id=SITE, token=SecretStr(EVENTS_KEY)),
            sources=sources,
            state=StateSettings(
                ledger=root / "state" / "ledger.sqlite",
                work_dir=root / "state" / "work",
                lock_file=root / "state" / "csvbridge.lock",
            ),
        )
        print(f"csvbridge demo in {root}", file=out)
        print(f"  bulk API emulator {emulator.url}, tracking API stand-in {tracking.url}", file=out)
        print(f"  Commerce HQ stand-in {shop.url} ({ORDERS} orders)", file=out)
        export = root / "erp-export.csv"
        generate(export, 20, seed=11)
        print(f"  uploaded {_upload(sources[2], export)}", file=out)
        summary = run_once(settings)
        accepted = emulator.stats.accepted.get("conversions", 0)
        events = tracking.stats
    return _show(summary, accepted, events.events, len(events.resent), root, out)


def _show(
    summary: PassSummary, accepted: int, events: int, resent: int, root: Path, out: TextIO
) -> int:
    print(summary.describe(), file=out)
    for src in summary.sources:
        files = src.files
        states = ", ".join(f"{f.file}: {f.state.value}" for f in files[:3])
        more = f" (+{len(files) - 3} more)" if len(files) > 3 else ""
        shipped = sum(f.shipped for f in files)
        rejected = sum(f.rejected for f in files)
        print(f"  {src.name}: {shipped} shipped, {rejected} rejected; {states}{more}", file=out)
    print(f"  bulk API accepted {accepted} conversions; tracking API got {events} events", file=out)
    print(f"  the rejected rows and their reasons: {root}/drop/failed/", file=out)
    shipped = sum(f.shipped for f in summary.files if "commercehq" not in f.source)
    chq = [s for s in summary.sources if s.name == "commercehq"]
    pulled = chq[0].pulled if chq else None
    ok = (
        summary.fatal is None
        and not any(s.error for s in summary.sources)
        and accepted > 0
        and pulled is not None
        and pulled.written > 0
        and events == pulled.written
        and resent == 0
        and shipped > 0
    )
    print("demo finished: " + ("OK" if ok else "something went wrong"), file=out)
    return 0 if ok else 1
