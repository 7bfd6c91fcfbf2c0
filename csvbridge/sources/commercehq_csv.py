"""Commerce HQ API orders as rows of the shipped Commerce HQ CSV export.

The layout is the one of ``csvbridge/data/commercehq/orders.csv`` (one row per line
item, the order's values repeated on each row), so the shipped ``mapping.yaml`` reads a
pulled order exactly as it reads a hand-made export: integer ``status``/``paid`` codes
and the Unix ``order_date`` are written as they come, and mapped there.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from csvbridge.files import write_into_place

# The header of the shipped export (csvbridge/data/commercehq/orders.csv), in its order.
COLUMNS: tuple[str, ...] = (
    "Order ID", "Display Number", "Email", "Order Date (Unix)", "Fulfilment Status", "Paid",
    "Payment Type", "Currency",
    "Billing First Name", "Billing Last Name", "Billing Company", "Billing Street",
    "Billing Suite", "Billing City", "Billing State", "Billing Zip", "Billing Country",
    "Shipping First Name", "Shipping Last Name", "Shipping Company", "Shipping Street",
    "Shipping Suite", "Shipping City", "Shipping State", "Shipping Zip", "Shipping Country",
    "Shipping Method", "Shipping Price", "Tax", "Total",
    "Item SKU", "Item Title", "Item Type", "Item Vendor", "Item Price", "Item Quantity",
    "Variant", "Notes",
)  # fmt: skip
_ADDRESS = ("first_name", "last_name", "company", "street", "suite", "city", "state", "zip",
            "country")  # fmt: skip


def order_rows(order: dict[str, Any], currency: str) -> list[list[str]]:
    """The export's rows for one API order: one per line item (none: no rows)."""
    address = order.get("address") or {}
    if isinstance(address, list):  # the Address reference shows it wrapped in a list
        address = address[0] if address else {}
    billing, shipping_to = address.get("billing") or {}, address.get("shipping") or {}
    shipping = order.get("shipping") or {}
    if isinstance(shipping, list):
        shipping = shipping[0] if shipping else {}
    payment = order.get("payment") or {}
    head = [
        order.get("id"), order.get("display_number"), order.get("email"),
        order.get("order_date"), order.get("status"), order.get("paid"),
        payment.get("type"), currency,
        *(billing.get(k) for k in _ADDRESS), *(shipping_to.get(k) for k in _ADDRESS),
        shipping.get("description"), shipping.get("price"), order.get("tax"), order.get("total"),
    ]  # fmt: skip
    head = [_cell(v) for v in head]
    notes = _cell(order.get("notes"))
    rows = []
    for data, status in _line_items(order.get("items")):
        variant = (data.get("variant") or {}).get("variant") or []
        qty = status.get("quantity", data.get("quantity"))
        item = [data.get("sku"), data.get("title"), data.get("type"), data.get("vendor"),
                data.get("price"), qty, " / ".join(str(v) for v in variant if v is not None)]  # fmt: skip
        rows.append([*head, *(_cell(v) for v in item), notes])
    return rows


def _line_items(items: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``[{data, status}, ...]`` as in the example; also ``{data: [...], status: [...]}``
    as the attribute table reads."""
    if isinstance(items, dict):
        data, status = items.get("data") or [], items.get("status") or []
        items = [
            {"data": d, "status": status[k] if k < len(status) else {}} for k, d in enumerate(data)
        ]
    for item in items or []:
        yield (item.get("data") or {}), (item.get("status") or {})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def write_export(path: Path, rows: list[list[str]]) -> None:
    with write_into_place(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
