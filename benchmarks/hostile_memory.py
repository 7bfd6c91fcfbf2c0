"""Benchmark: peak memory of `csvbridge convert` on hostile files (issue 8, item 4).

Generates, in a temporary folder, files a careless or hostile exporter could drop:

* one conversion id repeated on every row of a 200 MB file (a conversion may have at
  most 150 items: its rows must be counted, not collected);
* a single 50 MB cell;
* a gzip bomb: a small .csv.gz expanding to several GB (one id on every row).

Each is converted by a ``csvbridge convert`` subprocess, as a user would run it; the
peak memory of the whole process tree (summed PSS, as `benchmarks/convert.py` measures
it), the exit code and the first line of stderr are printed.  Target: <= 300 MB each.
A run is killed past ``--kill-mb`` (default 2000) or ``--timeout`` seconds, so a
regression cannot make a shared machine swap.

    python benchmarks/hostile_memory.py
    python benchmarks/hostile_memory.py --only bomb --bomb-gb 1
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from convert import measure  # noqa: E402  (benchmarks/convert.py)

HEADER = (
    "id,user.email,type,status,created,currency,comment,conversion_items.id,"
    "conversion_items.original_quantity,conversion_items.price,conversion_items.product.id,"
    "conversion_items.product.name\n"
)
TARGET_MB = 300


def row(cid: str, k: int, comment: str = "") -> str:
    return (
        f"{cid},shopper@example.com,online,pending,2024-05-02T10:00:00Z,EUR,{comment},"
        f"item-{k},1,19.90,SKU-{k % 1000:06d},Product number {k % 1000}\n"
    )


def one_id(path: Path, size: int) -> None:
    """`size` bytes of rows that all belong to one conversion, between two ordinary ones."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + row("before", 0))
        written, k = 0, 0
        while written < size:
            block = "".join(row("ORDER-1", k + i) for i in range(10_000))
            f.write(block)
            written += len(block)
            k += 10_000
        f.write(row("after", 0))


def big_cell(path: Path, size: int) -> None:
    """One row whose comment cell is `size` bytes (quoted, with a few line breaks)."""
    cell = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    cell = cell[: size // 2] + "\n" + cell[size // 2 :]
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + row("before", 0))
        f.write(row("BIG", 0, '"' + cell + '"'))
        f.write(row("after", 0))


def bomb(path: Path, size: int) -> None:
    """A .csv.gz of a few MB that expands to `size` bytes (one row, repeated: gzip only
    sees repeats within 32 KB)."""
    block = row("ORDER-1", 1).encode() * 10_000
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(HEADER.encode())
        for _ in range(size // len(block) + 1):
            f.write(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("one-id", "cell", "bomb"))
    ap.add_argument("--one-id-mb", type=int, default=200)
    ap.add_argument("--cell-mb", type=int, default=50)
    ap.add_argument("--bomb-gb", type=float, default=4)
    ap.add_argument("--kill-mb", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", type=Path, help="folder to keep the generated files in")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="csvbridge-hostile-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, str, Callable[[Path, int], None], int]] = [
        ("one-id", "one-id.csv", one_id, args.one_id_mb << 20),
        ("cell", "big-cell.csv", big_cell, args.cell_mb << 20),
        ("bomb", "bomb.csv.gz", bomb, int(args.bomb_gb * (1 << 30))),
    ]
    failed = False
    try:
        for what, name, make, size in cases:
            if args.only and what != args.only:
                continue
            src = folder / name
            if not src.exists():
                make(src, size)
            out = folder / f"{what}.ndjson"
            cmd = [sys.executable, "-m", "csvbridge", "convert", str(src), "-o", str(out)]
            cmd += ["--report", str(folder / f"{what}.report.json")]
            m = measure(cmd, max_pss=args.kill_mb << 20, timeout=args.timeout)
            first = next((line for line in m.stderr.splitlines() if line.strip()), "")
            ok = m.stopped is None and m.pss_peak <= TARGET_MB << 20
            failed |= not ok
            print(
                f"{what:7s}: {src.stat().st_size / 2**20:,.1f} MB on disk, "
                f"{m.seconds:.1f} s, peak {m.pss_peak / 2**20:.0f} MB (PSS, all processes), "
                f"{m.rss_peak / 2**20:.0f} MB (largest RSS); "
                f"{m.stopped or f'exit {m.exit_code}'}; "
                f"{'ok' if ok else f'OVER {TARGET_MB} MB'}\n"
                f"         stderr: {first[:200]}",
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
