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
import contextlib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csvbridge.testing.samples import generate  # noqa: E402


@dataclass
class Measured:
    """One run of a command: wall time, peak memory, how it ended."""

    seconds: float
    pss_peak: int  # summed over the process tree (the real memory of the whole run)
    rss_peak: int  # the largest single process
    exit_code: int
    stderr: str
    stopped: str | None = None  # why the run was killed (over a limit), if it was


def measure(
    cmd: list[str], *, max_pss: int | None = None, timeout: float | None = None
) -> Measured:
    """Run `cmd`; sample its memory every 25 ms until it ends (or passes a limit).

    PSS (proportional set size) splits pages shared between the main process and its
    forked workers among them, so the sum is the real memory of the whole tree; plain
    RSS would count the shared pages once per process.  With `max_pss` or `timeout`
    the tree is killed when it goes past them (a shared machine must not swap).
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        ps = psutil.Process(proc.pid)
        peak_sum = peak_one = 0
        ticks = 0
        stopped = None
        while proc.poll() is None:
            # RSS is cheap to read; PSS needs /proc/*/smaps, so it is sampled less often
            # (reading smaps itself costs CPU that the measured run would not have)
            try:
                procs = [ps, *ps.children(recursive=True)]
                peak_one = max(peak_one, *(p.memory_info().rss for p in procs))
                if ticks % 10 == 0 or (max_pss and peak_one > max_pss // 2):
                    peak_sum = max(peak_sum, sum(p.memory_full_info().pss for p in procs))
            except psutil.Error:
                procs = []
            if max_pss is not None and peak_sum > max_pss:
                stopped = f"killed: over {max_pss / 2**20:.0f} MB"
            elif timeout is not None and time.perf_counter() - start > timeout:
                stopped = f"killed: still running after {timeout:.0f} s"
            if stopped:
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                proc.wait()
                break
            ticks += 1
            time.sleep(0.025)
        seconds = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Measured(seconds, peak_sum, peak_one, proc.returncode, stderr, stopped)


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
        m = measure(cmd)
        if m.exit_code not in (0, 1):
            sys.stderr.write(m.stderr)
        lines = 0
        if out.exists():
            with open(out, "rb") as f:
                lines = sum(1 for _ in f)
        print(
            f"{layout:9s}: {args.rows} rows in {m.seconds:.2f} s = {args.rows / m.seconds:,.0f} "
            f"rows/s; {lines} conversions written; peak memory {m.pss_peak / 2**20:.0f} MB "
            f"(PSS, all processes), {m.rss_peak / 2**20:.0f} MB (largest RSS); exit {m.exit_code}"
        )


if __name__ == "__main__":
    main()
