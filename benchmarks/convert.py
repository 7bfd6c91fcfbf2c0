"""Benchmark: `csvbridge convert` end to end on a large export in the documented format.

Generates a file of N rows (default 1,000,000; about 4 items per conversion, realistic
values, some comments with quoted newlines), then runs ``csvbridge convert`` on it as a
user would (a subprocess writing NDJSON to a file), grouped and ungrouped, and prints
rows/s, wall time and peak RSS (the sum over the process and its workers, sampled every
20 ms, and the largest single process).

    python benchmarks/convert.py                 # 1M rows, grouped and ungrouped
    python benchmarks/convert.py --rows 200000   # quicker
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csvbridge.testing.samples import generate  # noqa: E402


def measure(cmd: list[str]) -> tuple[float, int, int, int]:
    """Run `cmd`; return (seconds, peak summed PSS, peak single RSS, exit code).

    PSS (proportional set size) splits pages shared between the main process and its
    forked workers among them, so the sum is the real memory of the whole tree; plain
    RSS would count the shared pages once per process.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak_sum = peak_one = 0
    ticks = 0
    while proc.poll() is None:
        # RSS is cheap to read; PSS needs /proc/*/smaps, so it is sampled less often
        # (reading smaps itself costs CPU that the measured run would not have)
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak_one = max(peak_one, *(p.memory_info().rss for p in procs))
            if ticks % 10 == 0:
                peak_sum = max(peak_sum, sum(p.memory_full_info().pss for p in procs))
        except psutil.Error:
            pass
        ticks += 1
        time.sleep(0.025)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr.read().decode(errors="replace") if proc.stderr else "")
    return seconds, peak_sum, peak_one, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--only", choices=("grouped", "ungrouped"))
    ap.add_argument("--keep", type=Path, help="folder to keep the generated files in")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="csvbridge-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    for layout in ("grouped", "ungrouped"):
        if args.only and layout != args.only:
            continue
        src = folder / f"orders-{layout}-{args.rows}.csv"
        if not src.exists():
            t = time.perf_counter()
            n = generate(src, args.rows, grouped=layout == "grouped")
            print(
                f"generated {n} rows ({src.stat().st_size / 1e6:.0f} MB) in "
                f"{time.perf_counter() - t:.1f} s: {src}"
            )
        out = folder / f"out-{layout}.ndjson"
        cmd = [
            sys.executable,
            "-m",
            "csvbridge",
            "convert",
            str(src),
            "-o",
            str(out),
            "--report",
            str(folder / f"report-{layout}.json"),
        ]
        seconds, peak_sum, peak_one, code = measure(cmd)
        lines = 0
        if out.exists():
            with open(out, "rb") as f:
                lines = sum(1 for _ in f)
        print(
            f"{layout:9s}: {args.rows} rows in {seconds:.2f} s = {args.rows / seconds:,.0f} "
            f"rows/s; {lines} conversions written; peak memory {peak_sum / 2**20:.0f} MB "
            f"(PSS, all processes), {peak_one / 2**20:.0f} MB (largest RSS); exit {code}"
        )


if __name__ == "__main__":
    main()
