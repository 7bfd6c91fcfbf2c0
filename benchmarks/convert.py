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
import csv
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csvbridge.schema.models import TEMPLATE_HEADER  # noqa: E402

CITIES = [
    ("Paris", "75009", "Ile-de-France", "FR", "France", 48.857764, 2.33935),
    ("Lyon", "69002", "Auvergne-Rhone-Alpes", "FR", "France", 45.764043, 4.835659),
    ("Berlin", "10115", "Berlin", "DE", "Germany", 52.520008, 13.404954),
    ("Madrid", "28001", "Madrid", "ES", "Spain", 40.416775, -3.703790),
    ("Bourg-en-Bresse", "01000", "Auvergne-Rhone-Alpes", "FR", "France", 46.2052, 5.2255),
]
PRODUCTS = [
    (f"SKU-{i:06d}", name, cat)
    for i, (name, cat) in enumerate(
        (f"{adj} {noun}", cat)
        for adj in ("White", "Black", "Red", "Large", "Small", "Vintage", "Eco", "Pro")
        for noun, cat in (
            ("Mug", "Kitchen"),
            ("T-shirt", "Apparel"),
            ("Lamp", "Home"),
            ("Backpack", "Bags"),
            ("Notebook", "Office"),
            ("Sneakers", "Shoes"),
            ("Teapot", "Kitchen"),
            ("Poster", "Decor"),
            ("Scarf", "Apparel"),
            ("Candle", "Home"),
        )
    )
]
CATALOG_PRICE = {sku: f"{5 + (i * 37) % 110}.99" for i, (sku, _, _) in enumerate(PRODUCTS)}
STATUSES = ["delivered", "shipped", "in_progress", "pending", "canceled", "returned"]
PAYMENTS = ["card", "online_payment_system", "by_invoice", "coupon", "other"]


def conversion_rows(n_conv: int, rnd: random.Random) -> list[list[str]]:
    """The rows of one conversion (1-7 items, mean about 4)."""
    cid = f"ORD-{n_conv:09d}-{rnd.randrange(16**6):06x}"
    city = rnd.choice(CITIES)
    day = 1 + n_conv % 28
    created = f"2026-{1 + n_conv % 12:02d}-{day:02d}T{n_conv % 24:02d}:{n_conv % 60:02d}:{(n_conv * 7) % 60:02d}.{n_conv % 1000:03d}+01:00"
    email = f"customer{rnd.randrange(10**7)}@example.com"
    comment = "Leave at the door" if rnd.random() < 0.3 else ""
    if rnd.random() < 0.01:
        comment = "Ring twice,\nthen wait"  # a quoted newline
    n_items = rnd.choice((1, 2, 3, 4, 4, 5, 6, 7))
    items = []
    total = 0.0
    for k in range(n_items):
        sku, name, cat = rnd.choice(PRODUCTS)
        price = round(rnd.uniform(3, 120), 2)
        qty = rnd.randint(1, 3)
        total += price * qty
        items.append((f"{cid}-{k + 1}", sku, name, cat, price, qty))
    shipping = rnd.choice((0, 4.99, 9.9))
    conv = {
        "id": cid,
        "user.user_email": email,
        "consent_categories": rnd.choice(("1|3", "1", "2|3|4")),
        "type": rnd.choice(("online", "offline")),
        "status": rnd.choice(STATUSES),
        "created": created,
        "updated": created,
        "acknowledged": rnd.choice(("true", "false")),
        "currency": "EUR",
        "comment": comment,
        "shipping_provider": rnd.choice(("UPS", "DHL", "La Poste")),
        "shipping_tracking_code": f"TRK{rnd.randrange(10**10):010d}",
        "payment_method": rnd.choice(PAYMENTS),
        "original_amount": f"{total + shipping:.2f}",
        "shipping_amount": str(shipping),
        "tax_amount": f"{total * 0.2:.2f}",
        "final_amount": f"{total + shipping:.2f}",
    }
    for kind in ("billing_address", "contact_address", "shipping_address"):
        conv.update(
            {
                f"{kind}.country": city[4],
                f"{kind}.iso_country_code": city[3],
                f"{kind}.region": city[2],
                f"{kind}.locality": city[0],
                f"{kind}.postal_code": city[1],
                f"{kind}.recipient": f"Customer {n_conv}",
                f"{kind}.street_address": f"{rnd.randint(1, 200)} Rue de la Paix",
                f"{kind}.label": "home",
                f"{kind}.coordinates.latitude": str(city[5]),
                f"{kind}.coordinates.longitude": str(city[6]),
            }
        )
    rows = []
    for item_id, sku, name, cat, price, qty in items:
        item = {
            "conversion_items.id": item_id,
            "conversion_items.original_quantity": str(qty),
            "conversion_items.final_quantity": str(qty),
            "conversion_items.original_amount": f"{price * qty:.2f}",
            "conversion_items.final_amount": f"{price * qty:.2f}",
            "conversion_items.price": f"{price:.2f}",
            "conversion_items.original_item": "true",
            "conversion_items.product.id": sku,
            "conversion_items.product.name": name,
            "conversion_items.product.description": f"{name}: a fine product for every day.",
            "conversion_items.product.category_1": cat,
            "conversion_items.product.category_2": "All",
            "conversion_items.product.tags": "new|popular",
            "conversion_items.product.condition": "new",
            "conversion_items.product.availability": "in_stock",
            "conversion_items.product.price": CATALOG_PRICE[sku],
            "conversion_items.product.currency": "EUR",
            "conversion_items.product.image_link": f"https://shop.example.com/img/{sku}.jpg",
            "conversion_items.product.link": f"https://shop.example.com/p/{sku}",
            "conversion_items.product.brand": "Example",
            "conversion_items.product.colors": "white|red",
            "conversion_items.product.gtin": f"{3000000000000 + int(sku[4:]):013d}",
            "conversion_items.product.mpn": f"MPN{sku[4:]}",
        }
        merged = {**conv, **item}
        rows.append([merged.get(h, "") for h in TEMPLATE_HEADER])
    return rows


def generate(path: Path, n_rows: int, *, grouped: bool = True, seed: int = 7) -> int:
    """Write a documented-format export of about `n_rows` rows; returns the row count."""
    rnd = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(TEMPLATE_HEADER)
        n = 0
        window: list[list[str]] = []
        while written < n_rows:
            rows = conversion_rows(n, rnd)[: n_rows - written]
            n += 1
            written += len(rows)
            if grouped:
                w.writerows(rows)
            else:
                # interleave the rows of a window of conversions: ids come back later
                window.extend(rows)
                if len(window) >= 4000:
                    rnd.shuffle(window)
                    w.writerows(window)
                    window = []
        if window:
            rnd.shuffle(window)
            w.writerows(window)
    return written


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
