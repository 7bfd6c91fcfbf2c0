"""Sample exports in the documented format, for the benchmarks, the demo and tests.

Realistic values (several cities, a product catalog, quoted newlines in some comments,
1-7 items per conversion) from a seeded generator, so a file is the same every time.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from csvbridge.schema.models import TEMPLATE_HEADER

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
