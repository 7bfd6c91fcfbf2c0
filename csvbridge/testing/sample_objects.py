"""Sample API objects: realistic, valid conversions for demos, tests and the ship benchmark.

(Sample CSV *exports* are made by `csvbridge.testing.samples`.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from csvbridge.fold.assemble import Record
from csvbridge.schema.models import format_date

_CATALOG = (
    ("MUG-001", "Mug Commanders Act", "Home", "Kitchen", 10.0, "Commanders Act"),
    ("TEE-042", "Organic cotton T-shirt", "Clothing", "Tops", 24.9, "Fairwear"),
    ("BAG-007", "Canvas tote bag", "Accessories", "Bags", 15.5, "Fairwear"),
    ("LMP-310", "Desk lamp LED", "Home", "Lighting", 39.0, "Lumen"),
    ("BTL-120", "Insulated bottle 500 ml", "Outdoor", "Hydration", 19.9, "Trail"),
    ("NTB-005", "Dotted notebook A5", "Office", "Paper", 7.5, "Paperco"),
    ("HDP-900", "Wireless headphones", "Electronics", "Audio", 89.0, "Sonique"),
    ("SCK-011", "Merino socks (2 pairs)", "Clothing", "Socks", 18.0, "Trail"),
)
_STATUSES = ("in_progress", "shipped", "delivered", "partially_shipped", "pending_shipment")
_PAYMENTS = ("card", "online_payment_system", "by_invoice", "coupon")
_CITIES = (("Paris", "75009", "Ile-de-France"), ("Lyon", "69002", "Auvergne-Rhone-Alpes"))


def sample_conversion(n: int, rng: random.Random | None = None) -> dict[str, Any]:
    """A realistic, valid conversion (1-4 items) for demos, tests and the benchmark."""
    rng = rng or random.Random(n)
    order_id = f"ORD-{n:07d}"
    items = []
    for k, (sku, name, cat1, cat2, price, brand) in enumerate(
        rng.sample(_CATALOG, rng.randint(1, 4)), start=1
    ):
        qty = float(rng.randint(1, 3))
        items.append(
            {
                "id": f"{order_id}-{k}",
                "original_quantity": qty,
                "final_quantity": qty,
                "price": price,
                "original_amount": round(qty * price, 2),
                "final_amount": round(qty * price, 2),
                "product": {
                    "id": sku,
                    "name": name,
                    "category_1": cat1,
                    "category_2": cat2,
                    "price": price,
                    "currency": "EUR",
                    "brand": brand,
                },
            }
        )
    subtotal = round(sum(i["final_amount"] for i in items), 2)
    shipping = 0.0 if subtotal >= 50 else 4.9
    city, postal_code, region = rng.choice(_CITIES)
    created = datetime(2024, 3, 1, 9, tzinfo=timezone(timedelta(hours=1))) + timedelta(
        minutes=7 * n
    )
    return {
        "id": order_id,
        "user": {"email": f"customer{n % 9973}@example.com"},
        "type": "online",
        "status": rng.choice(_STATUSES),
        "created": format_date(created),
        "currency": "EUR",
        "payment_method": rng.choice(_PAYMENTS),
        "billing_address": {
            "country": "France",
            "iso_country_code": "FR",
            "locality": city,
            "postal_code": postal_code,
            "region": region,
        },
        "original_amount": round(subtotal + shipping, 2),
        "shipping_amount": shipping,
        "tax_amount": round(subtotal / 6, 2),
        "final_amount": round(subtotal + shipping, 2),
        "conversion_items": items,
    }


def sample_records(n: int, *, seed: int = 0, first: int = 0) -> Iterator[Record]:
    """`n` valid conversions as Records, with CSV line numbers as one item per row."""
    rng = random.Random(seed)
    line = 2  # line 1 is the header
    for i in range(first, first + n):
        conversion = sample_conversion(i, rng)
        rows = len(conversion["conversion_items"])
        yield Record(conversion["id"], orjson.dumps(conversion), tuple(range(line, line + rows)))
        line += rows
