"""Benchmark: orders pulled per second from the Commerce HQ stand-in, written as CSV.

Starts the stand-in with N seeded orders (1-4 line items each) on loopback, runs one
full pass (both sorted lists, every page, one CSV file per page) and prints orders/s
and rows/s, then a second, incremental pass after 1% of the orders changed.  The figure
is the client's cost (HTTP, JSON, sifting, CSV writing) plus the stand-in's, on one
machine: a real store adds network latency per page, so page size matters more there.

    python benchmarks/commercehq_pull.py [--orders 20000] [--size 250]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from csvbridge.sources.commercehq import CommerceHQClient, CommerceHQSettings  # noqa: E402
from csvbridge.testing.commercehq import CommerceHQStandIn  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20000, help="orders in the store")
    parser.add_argument("--size", type=int, default=250, help="page size (max 250)")
    args = parser.parse_args(argv)

    with (
        CommerceHQStandIn(orders=args.orders, seed=1) as chq,
        tempfile.TemporaryDirectory(prefix="chq-bench-") as tmp,
    ):
        settings = CommerceHQSettings(
            base_url=chq.url,
            api_key=chq.api_key,
            api_password=chq.api_password,
            page_size=args.size,
        )
        with CommerceHQClient(settings) as client:
            started = time.perf_counter()
            full = client.pull(Path(tmp) / "full")
            seconds = time.perf_counter() - started
            changed = max(1, args.orders // 100)
            chq.advance(60)
            for oid in range(4000, 4000 + changed):
                chq.update_order(oid, paid=-1)
            started = time.perf_counter()
            incr = client.pull(Path(tmp) / "incr", full.cursor)
            incr_seconds = time.perf_counter() - started
    ok = full.accounted and full.written == args.orders and incr.written == changed
    print(
        f"full pass:        {full.written} orders ({full.rows} rows, {full.pages} pages of "
        f"{args.size}) in {seconds:.2f} s"
    )
    print(f"orders pulled/s:  {full.written / seconds:,.0f}")
    print(f"rows written/s:   {full.rows / seconds:,.0f}")
    print(
        f"incremental pass: {incr.written} changed orders of {args.orders} in "
        f"{incr_seconds:.2f} s ({incr.pages} pages)"
    )
    print(f"accounted:        {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
