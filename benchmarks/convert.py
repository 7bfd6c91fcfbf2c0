"""Benchmark: `csvbridge convert` end to end on a large export in the documented format.

Generates a file of N rows (default 1,000,000; about 4 items per conversion, realistic
values, some comments with quoted newlines), then runs ``csvbridge convert`` on it as a
user would (a subprocess writing NDJSON to a file), grouped and ungrouped, and prints
rows/s, wall time and peak RSS (the sum over the process and its workers, sampled every
20 ms, and the largest single process).

    python benchmarks/convert.py                 # 1M rows, grouped, ungrouped, shopify
    python benchmarks/convert.py --rows 200000   # quicker
    python benchmarks/convert.py --only shopify  # the mapped export alone

``shopify`` is a mapped export: Shopify's native Orders layout (79 columns, order
fields on each order's first row only, a tip line on 1 order in 20 (skipped by the preset),
discounts and refunds) converted with ``--preset shopify`` — expressions, per-order
evaluation, row roles and line-index item ids on every row.
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

SHOPIFY_HEADER = ["Name", "Email", "Financial Status", "Paid at", "Fulfillment Status", "Fulfilled at", "Accepts Marketing", "Currency", "Subtotal", "Shipping", "Taxes", "Total", "Discount Code", "Discount Amount", "Shipping Method", "Created at", "Lineitem quantity", "Lineitem name", "Lineitem price", "Lineitem compare at price", "Lineitem sku", "Lineitem requires shipping", "Lineitem taxable", "Lineitem fulfillment status", "Billing Name", "Billing Street", "Billing Address1", "Billing Address2", "Billing Company", "Billing City", "Billing Zip", "Billing Province", "Billing Country", "Billing Phone", "Shipping Name", "Shipping Street", "Shipping Address1", "Shipping Address2", "Shipping Company", "Shipping City", "Shipping Zip", "Shipping Province", "Shipping Country", "Shipping Phone", "Notes", "Note Attributes", "Cancelled at", "Payment Method", "Payment Reference", "Refunded Amount", "Vendor", "Outstanding Balance", "Employee", "Location", "Device ID", "Id", "Tags", "Risk Level", "Source", "Lineitem discount", "Tax 1 Name", "Tax 1 Value", "Tax 2 Name", "Tax 2 Value", "Tax 3 Name", "Tax 3 Value", "Tax 4 Name", "Tax 4 Value", "Tax 5 Name", "Tax 5 Value", "Phone", "Receipt Number", "Duties", "Billing Province Name", "Shipping Province Name", "Payment ID", "Payment Terms Name", "Next Payment Due At", "Payment References"]


def generate_shopify(path: Path, rows: int, seed: int = 7) -> int:
    """A Shopify Orders export of `rows` rows, written as Shopify writes it."""
    import csv
    import random

    rnd = random.Random(seed)
    col = {h: i for i, h in enumerate(SHOPIFY_HEADER)}
    width = len(SHOPIFY_HEADER)
    products = [
        (f"SKU-{n:05d}", f"Product {n} - {rnd.choice(['S', 'M', 'L'])}", rnd.randint(300, 9900) / 100)
        for n in range(2000)
    ]
    statuses = [("paid", "fulfilled")] * 14 + [
        ("paid", "unfulfilled"),
        ("partially_refunded", "fulfilled"),
        ("refunded", "fulfilled"),
        ("pending", ""),
        ("authorized", "partial"),
    ]
    written = 0
    order = 1000
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SHOPIFY_HEADER)
        while written < rows:
            order += 1
            name = f"#{order}"
            email = f"customer{order % 50000}@example.com"
            lines = [rnd.choice(products) for _ in range(rnd.choice((1, 1, 2, 3, 4, 5, 6)))]
            qtys = [rnd.choice((1, 1, 1, 2, 3)) for _ in lines]
            discounts = [round(p * q * 0.1, 2) if order % 4 == 0 else 0.0 for (_, _, p), q in zip(lines, qtys, strict=True)]
            subtotal = round(sum(p * q for (_, _, p), q in zip(lines, qtys, strict=True)) - sum(discounts), 2)
            tip = 2.0 if order % 20 == 0 else 0.0
            total = round(subtotal + 4.9 + tip, 2)
            fin, ful = statuses[order % len(statuses)]
            refunded = total if fin == "refunded" else (round(total / 3, 2) if fin == "partially_refunded" else 0.0)
            created = f"2025-{1 + order % 12:02d}-{1 + order % 28:02d} {order % 24:02d}:{order % 60:02d}:07 +0200"
            for k, ((sku, title, price), qty) in enumerate(zip(lines, qtys, strict=True)):
                if written >= rows:
                    break
                r = [""] * width
                r[col["Name"]] = name
                r[col["Email"]] = email
                r[col["Created at"]] = created
                r[col["Lineitem quantity"]] = str(qty)
                r[col["Lineitem name"]] = title
                r[col["Lineitem price"]] = f"{price:.2f}"
                r[col["Lineitem sku"]] = sku
                r[col["Lineitem requires shipping"]] = "true"
                r[col["Lineitem taxable"]] = "true"
                r[col["Lineitem fulfillment status"]] = ful or "pending"
                r[col["Lineitem discount"]] = f"{discounts[k]:.2f}"
                r[col["Vendor"]] = "Acme"
                if k == 0:  # the order's own fields: first row only
                    for key, value in {
                        "Financial Status": fin,
                        "Paid at": created if fin != "pending" else "",
                        "Fulfillment Status": ful,
                        "Accepts Marketing": "no",
                        "Currency": "EUR",
                        "Subtotal": f"{subtotal:.2f}",
                        "Shipping": "4.90",
                        "Taxes": f"{total / 6:.2f}",
                        "Total": f"{total:.2f}",
                        "Discount Code": "WELCOME10" if order % 4 == 0 else "",
                        "Discount Amount": f"{sum(discounts):.2f}",
                        "Shipping Method": "Standard",
                        "Billing Name": "Sam Doe",
                        "Billing Address1": f"{order % 200} rue de la Paix",
                        "Billing City": "Paris",
                        "Billing Zip": "'75002",
                        "Billing Country": "FR",
                        "Shipping Name": "Sam Doe",
                        "Shipping Address1": f"{order % 200} rue de la Paix",
                        "Shipping City": "Paris",
                        "Shipping Zip": "'75002",
                        "Shipping Country": "FR",
                        "Payment Method": "Shopify Payments",
                        "Refunded Amount": f"{refunded:.2f}",
                        "Outstanding Balance": "0.00",
                        "Id": str(7400000000000 + order),
                        "Risk Level": "Low",
                        "Source": "web",
                        "Tax 1 Name": "TVA 20%",
                        "Tax 1 Value": f"{total / 6:.2f}",
                    }.items():
                        r[col[key]] = value
                w.writerow(r)
                written += 1
            if tip and written < rows:
                r = [""] * width
                r[col["Name"]] = name
                r[col["Email"]] = email
                r[col["Lineitem quantity"]] = "1"
                r[col["Lineitem name"]] = "Tip"
                r[col["Lineitem price"]] = f"{tip:.2f}"
                r[col["Lineitem requires shipping"]] = "false"
                r[col["Lineitem taxable"]] = "false"
                r[col["Lineitem discount"]] = "0.00"
                w.writerow(r)
                written += 1
    return written


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
    ap.add_argument("--only", choices=("grouped", "ungrouped", "shopify"))
    ap.add_argument("--keep", type=Path, help="folder to keep the generated files in")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="csvbridge-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    for layout in ("grouped", "ungrouped", "shopify"):
        if args.only and layout != args.only:
            continue
        src = folder / f"orders-{layout}-{args.rows}.csv"
        if not src.exists():
            t = time.perf_counter()
            if layout == "shopify":
                n = generate_shopify(src, args.rows)
            else:
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
        if layout == "shopify":
            cmd += ["--preset", "shopify"]
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
