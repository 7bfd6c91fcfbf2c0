"""Realistic Commerce HQ orders for the stand-in: a small catalogue, a few customers,
and orders built from them in the shape the orders API answers (with every relation).

Why apart from the stand-in: what an order looks like (line items, addresses, payment,
the integer ``status``/``paid`` codes) is data, not API behaviour; reading it here
shows at a glance what the Commerce HQ source has to turn into CSV rows.
"""

from __future__ import annotations

import random
from typing import Any

_CATALOG = (  # sku, title, type, vendor, price, variants
    ("0170301", "Amazing necklace", "Necklace", None, 13.94, ("Purple", "Gold")),
    ("BR-2231", "Braided leather bracelet", "Bracelet", "Lumen & Co", 24.50, ("Brown", "Black")),
    ("TS-100", "Organic cotton tee", "T-Shirt", "Greenthread", 19.99, ("S / Navy", "L / Navy")),
    ("CAN-3", "Soy candle, cedar", "Home", None, 16.50, ()),
    ("MUG-12", "Stoneware mug 350 ml", "Kitchen", "Clayworks", 11.00, ("White", "Sand")),
    ("BAG-7", "Canvas tote bag", "Bags", "Greenthread", 15.50, ()),
    ("0042007", "Silver ring", "Ring", "Lumen & Co", 39.00, ("6", "7", "8")),
    ("LMP-310", "Desk lamp LED", "Home", "Lumen", 39.90, ()),
)
_PEOPLE = (
    ("Jack", "Black", "Grove str. 12", None, "Los Santos", "CA", "90250", "US"),
    ("Maria", "Gonzalez", "77 Elm Street", "Apt 4B", "Amherst", "MA", "01002", "US"),
    ("Oliver", "Hughes", "3 King's Road", None, "London", "England", "SW3 4TY", "GB"),
    ("Liam", "Smith", "18 Harbor Ave", "Suite 200", "Portland", "ME", "04101", "US"),
    ("Emma", "Müller", "Hauptstraße 5", None, "Berlin", "BE", "10115", "DE"),
    ("Chloé", "Martin", "12 rue de la Paix", None, "Paris", "IDF", "75002", "FR"),
)
_PAYMENTS = ("Visa", "MasterCard", "PayPal", "Amex", "Discover")
_SHIPPING = (("USPS First-Class", "4.25"), ("Super fast shipping", "7.95"), ("Free", "0.00"))
_PAID = (1, 1, 1, 1, 0, -1, -2)


def new_order(
    rng: random.Random, oid: int, created: int, n_items: int | None = None
) -> dict[str, Any]:
    """Order `oid` placed at `created` with `n_items` line items (None: 1 to 4), drawn
    from `rng` (a seeded one gives the same orders every run)."""
    items = []
    for sku, title, kind, vendor, price, variants in rng.sample(
        _CATALOG, rng.randint(1, 4) if n_items is None else n_items
    ):
        variant = rng.choice(variants) if variants else None
        qty = rng.choice((1, 1, 1, 2, 3))
        items.append(
            {
                "data": {
                    "id": oid * 10 + len(items),
                    "product_id": 40 + _CATALOG.index((sku, title, kind, vendor, price, variants)),
                    "title": title,
                    "is_multi": bool(variants),
                    "type": kind,
                    "is_giftcard": False,
                    "vendor": vendor,
                    "sku": f"{sku}-{variant[:1]}" if variant and sku == "TS-100" else sku,
                    "price": price,
                    "compare_price": round(price * 1.5, 2),
                    "image": None,
                    "variant": {"id": 30 + len(items), "variant": [variant]} if variant else None,
                },
                "status": {
                    "quantity": qty,
                    "not_fulfilled": qty,
                    "fulfilled": 0,
                    "shipped": 0,
                    "restocked": 0,
                },
            }
        )
    first, last, street, suite, city, state, zip_, country = rng.choice(_PEOPLE)
    method, ship_price = rng.choice(_SHIPPING)
    subtotal = sum(i["data"]["price"] * i["status"]["quantity"] for i in items)
    tax = round(subtotal * 0.06, 2)
    address = {
        "first_name": first,
        "last_name": last,
        "company": None,
        "street": street,
        "suite": suite,
        "city": city,
        "country": country,
        "state": state,
        "zip": zip_,
    }
    payment = rng.choice(_PAYMENTS)
    return {
        "id": oid,
        "display_number": f"CH-{oid}",
        "email": f"{first.lower()}.{oid}@example.com",
        "status": rng.randint(0, 5),
        "paid": rng.choice(_PAID),
        "discounts": [],
        "shipping": {"description": method, "price": ship_price},
        "tax": tax,
        "total": round(subtotal + tax + float(ship_price), 2),
        "ip": "203.0.113.7",
        "items": items,
        "fulfilments": [],
        "shipments": [],
        "restocks": [],
        "customer": {
            "id": 2000 + oid % 97,
            "email": f"{first.lower()}.{oid}@example.com",
            "first_name": first,
            "last_name": last,
        },
        "address": {"shipping": dict(address), "billing": dict(address), "phone": None},
        "payment": {"type": payment, "last4": None if payment == "PayPal" else "4242"},
        "conversion": {"landing_page": "https://shop.example.com/", "referrer": None},
        "risk_level": {
            "ip_fail": False,
            "address_fail": False,
            "zip_fail": False,
            "cvc_fail": False,
        },
        "refunded": 0,
        "refund_possible": True,
        "order_date": created,
        "updated_at": None,
        "notes": rng.choice(
            (
                None,
                None,
                None,
                "Gift wrap, please",
                "Please call before delivery,\nthe buzzer is broken",
            )
        ),
    }
