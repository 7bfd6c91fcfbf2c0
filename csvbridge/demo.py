"""``csvbridge demo``: the whole job on shipped fixtures, with no account and no server.

It makes a local drop folder, puts the shipped exports in it (a file in the documented
header format with two deliberately broken conversions, and — when present — a Commerce
HQ export with its mapping), starts the built-in API emulator on a free loopback port,
and runs one cron pass over the drop.  Then it shows where everything went.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from pydantic import SecretStr

from csvbridge.config import (
    ApiSettings,
    ConvertSettings,
    Settings,
    SourceSettings,
    StateSettings,
)
from csvbridge.drops.runner import run_once
from csvbridge.testing.emulator import Emulator

TOKEN = "demo-token"
SITE = "1234"


def _demo_files() -> list[Path]:
    folder = resources.files("csvbridge") / "data" / "demo"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".csv"))


def run_demo(base: Path | None = None, out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    """Run the demo; returns 0 when every row was accounted for and delivered as expected."""
    root = Path(base) if base else Path(tempfile.mkdtemp(prefix="csvbridge-demo-"))
    drop = root / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    for f in _demo_files():
        shutil.copy(f, drop / f.name)
    mapping_dir = resources.files("csvbridge") / "data" / "commercehq"
    chq = None
    if (mapping_dir / "orders.csv").is_file():
        chq = root / "drop-commercehq"
        chq.mkdir(exist_ok=True)
        shutil.copy(Path(str(mapping_dir / "orders.csv")), chq / "commercehq-orders.csv")
    with Emulator(token=TOKEN, site_id=SITE) as emulator:
        sources = [
            SourceSettings(name="shop", url=drop.as_uri(), min_age_seconds=0, stable_polls=0)
        ]
        if chq is not None:
            sources.append(
                SourceSettings(
                    name="commercehq",
                    url=chq.as_uri(),
                    min_age_seconds=0,
                    stable_polls=0,
                    convert=ConvertSettings(mapping=Path(str(mapping_dir / "mapping.yaml"))),
                )
            )
        settings = Settings(
            api=ApiSettings(base_url=emulator.url, site_id=SITE, token=SecretStr(TOKEN)),
            sources=sources,
            state=StateSettings(
                ledger=root / "state" / "ledger.sqlite",
                work_dir=root / "state" / "work",
                lock_file=root / "state" / "csvbridge.lock",
            ),
        )
        print(f"csvbridge demo in {root}", file=out)
        print(f"  API emulator: {emulator.url} (site {SITE})", file=out)
        for s in sources:
            print(f"  drop {s.name}: {s.url}", file=out)
        summary = run_once(settings)
        stats = emulator.stats
    print("", file=out)
    print(summary.describe(), file=out)
    for src in summary.sources:
        for f in src.files:
            print(
                f"  {src.name}/{f.file}: {f.state.value} -> {f.moved_to}; "
                f"{f.rows} rows, {f.shipped} shipped, "
                f"{f.rejected} rejected",
                file=out,
            )
    accepted = stats.accepted.get("conversions", 0)
    print(f"  the emulator accepted {accepted} conversions", file=out)
    print("", file=out)
    print("Look at the results:", file=out)
    for folder in sorted(p for p in root.glob("drop*/*") if p.is_dir()):
        for f in sorted(folder.iterdir()):
            print(f"  {f}", file=out)
    shipped = sum(f.shipped for f in summary.files)
    ok = summary.fatal is None and shipped == accepted and shipped > 0
    print("demo finished: " + ("OK" if ok else "something went wrong"), file=out)
    return 0 if ok else 1
