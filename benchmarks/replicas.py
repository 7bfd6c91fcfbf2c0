"""Benchmark (replicas): two `csvbridge watch` replicas vs one, sharing
two drops and one PostgreSQL ledger, shipping to the emulator at speed 10.

Starts a throwaway PostgreSQL (Debian's postgresql package) and the emulator (one token:
limit 300 objects/s at speed 10), writes D drops of F files of N conversions, starts R
replicas (R = 1, then 2, each on a fresh database and fresh drops) and measures from
their start until every file is in done/.  Prints, per R: files done, conversions the
emulator received, the aggregate rate as a share of the token's limit, 429 answers, ids
received twice, and the files each replica processed.  With one token the replicas
share one shipping lease: two replicas are for failover, not for more than the
account's limit, so the aggregate rate is expected to stay at the limit, not double.

    python benchmarks/replicas.py [--drops 2] [--files 6] [--conversions 500] [--speed 10]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a plain checkout

from csvbridge.drops.ledger import open_ledger  # noqa: E402
from csvbridge.report import FileState  # noqa: E402
from csvbridge.schema.models import TEMPLATE_HEADER  # noqa: E402
from csvbridge.testing.emulator import Emulator  # noqa: E402
from csvbridge.testing.postgres import PgServer, throwaway_postgres  # noqa: E402
from csvbridge.testing.samples import conversion_rows  # noqa: E402

TOKEN = "bench-token-multisite"


def write_export(path: Path, n: int, first: int) -> None:
    rnd = random.Random(first)
    tmp = path.with_name(f".{path.name}.writing")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(TEMPLATE_HEADER)
        for k in range(first, first + n):
            w.writerows(conversion_rows(k, rnd))
    tmp.replace(path)


def run(server: PgServer, replicas: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    emu = Emulator(token=TOKEN, speed=args.speed).start()
    db = f"bench_r{replicas}_{os.getpid()}"
    url = server.create_database(db)
    base = tmp / f"r{replicas}"
    drops = [base / f"shop-{d}" for d in range(args.drops)]
    for d, drop in enumerate(drops):
        drop.mkdir(parents=True)
        for n in range(args.files):
            write_export(drop / f"orders-{n}.csv", args.conversions, (d * 1000 + n) * 100_000)
    procs, logs = [], []
    limit = 30 * args.speed
    try:
        for r in range(replicas):
            config = {
                "api": {
                    "base_url": emu.url,
                    "site_id": emu.site_id,
                    "token": TOKEN,
                    "limits": {
                        "requests_per_second": limit,
                        "concurrent_connections": int(limit),
                        "objects_per_second": limit,
                    },
                },
                "sources": [
                    {
                        "name": d.name,
                        "url": d.as_uri(),
                        "min_age_seconds": 0,
                        "stable_polls": 0,
                        "poll_interval_seconds": 0.5,
                    }
                    for d in drops
                ],
                "state": {
                    "ledger": url,
                    "work_dir": str(base / f"replica-{r}" / "work"),
                    "lock_file": str(base / f"replica-{r}" / "lock"),
                    "lease_seconds": 5,
                },
                "logging": {"level": "INFO"},
            }
            path = base / f"replica-{r}.yaml"
            path.write_text(yaml.safe_dump(config))
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "CSVBRIDGE_LEDGER_PASSWORD": server.password,
            }
            log = base / f"replica-{r}.log"
            logs.append(log)
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "csvbridge", "watch", "--config", str(path)],
                        env=env,
                        stdout=out,
                        stderr=out,
                    )
                )
        total = args.drops * args.files
        started = time.monotonic()
        with open_ledger(url, password=server.password) as ledger:  # type: ignore[attr-defined]
            while True:
                done = [e for e in ledger.files(FileState.DONE, limit=10_000)]
                if len(done) >= total or time.monotonic() - started > args.timeout:
                    break
                time.sleep(0.2)
            first = min(e.started_at for e in done) if done else 0.0
            last = max(e.finished_at or 0.0 for e in done) if done else 0.0
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        stats = emu.stats
        emu.stop()
        server.drop_database(db)
    received = sum(stats.received_ids.values())
    shipping = max(last - first, 1e-9)
    per_replica = [log.read_text(errors="replace").count(": done") for log in logs]
    return {
        "replicas": replicas,
        "files_done": len(done),
        "files": total,
        "received": received,
        "wall_s": elapsed,
        "shipping_s": shipping,
        "rate": received / shipping,
        "share": received / shipping / limit,
        "429": stats.status_counts[429],
        "resent": len(stats.resent),
        "per_replica": per_replica,  # type: ignore[dict-item]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=2)
    parser.add_argument("--files", type=int, default=6, help="files per drop")
    parser.add_argument("--conversions", type=int, default=500, help="per file")
    parser.add_argument("--speed", type=float, default=10.0, help="emulator speed")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    with throwaway_postgres() as server, tempfile.TemporaryDirectory(prefix="multisite-") as t:
        for replicas in (1, 2):
            r = run(server, replicas, args, Path(t))
            print(
                f"{r['replicas']} replica(s): {r['files_done']}/{r['files']} files done, "
                f"{r['received']} conversions in {r['shipping_s']:.1f} s of shipping "
                f"({r['wall_s']:.1f} s wall) = {r['rate']:.0f}/s, {r['share']:.2f} x the "
                f"token's limit; 429: {r['429']}, re-sent: {r['resent']}; "
                f"file outcomes logged per replica: {r['per_replica']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
