"""Excel (.xlsx) exports: workbooks written by openpyxl with typed cells, as an ERP writes
them, read by `convert`, `send` and the drops; every cell as the text Excel shows.

The oracle for the typed cells is a CSV written by hand with the text a person sees in
Excel: the workbook must convert to exactly the same NDJSON bytes as that CSV.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

openpyxl = pytest.importorskip("openpyxl")

from csvbridge.config import ConvertSettings, Settings, SourceSettings, StateSettings  # noqa: E402
from csvbridge.drops.runner import run_once  # noqa: E402
from csvbridge.errors import InputError  # noqa: E402
from csvbridge.fold.output import convert_file  # noqa: E402
from csvbridge.pipeline import send_file  # noqa: E402
from csvbridge.read.xlsx import cell_text, number_text  # noqa: E402
from csvbridge.report import FileState  # noqa: E402
from csvbridge.testing.emulator import Emulator  # noqa: E402
from tests.plugins.api import settings_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAPPING = """\
options:
  timezone: Europe/Paris
fields:
  id: Order ID
  user.email: Email
  created: Order Date
  updated: Paid On
  type: {value: online}
  status: {value: delivered}
  currency: Currency
  final_amount: Total
  billing_address.postal_code: Zip
  shipping_address.postal_code: Ship Zip
  shipping_tracking_code: Tracking
  comment: Notes
  conversion_items.product.id: SKU
  conversion_items.product.gtin: GTIN
  conversion_items.original_quantity: Qty
  conversion_items.price: Price
"""
HEADER = [
    "Order ID", "Email", "Order Date", "Paid On", "Currency", "Total", "Zip", "Ship Zip",
    "Tracking", "Notes", "SKU", "GTIN", "Qty", "Price",
]  # fmt: skip


def typed_rows() -> list[list[Any]]:
    """Rows as an ERP writes them: numbers, dates, text, empty cells."""
    when = dt.datetime(2026, 3, 4, 9, 30, 15)
    paid = dt.date(2026, 3, 5)
    return [
        # a gtin stored as an integer, postal codes as text and as a "00000" number
        ["SO-1001", "a@example.com", when, paid, "EUR", 45.5, "01000", 1000,
         123456789012345, "Leave at the door", "SKU-1", 3000000000123, 2, 12.25],
        # the same gtin family stored as a float (Excel's own type for numbers)
        ["SO-1001", "a@example.com", when, paid, "EUR", 45.5, "01000", 1000,
         123456789012345, "Leave at the door", "SKU-2", 3000000000124.0, 1.0, 21.0],
        # empty cells: no notes, no tracking code
        ["SO-1002", "b@example.com", dt.datetime(2026, 3, 4, 0, 0), paid, "EUR", 0.3, "75009",
         75009, None, None, "SKU-3", 4006381333931, 3, 0.1],
    ]  # fmt: skip


EXPECTED_CSV = (
    "Order ID,Email,Order Date,Paid On,Currency,Total,Zip,Ship Zip,Tracking,Notes,SKU,GTIN,Qty,Price\n"
    "SO-1001,a@example.com,2026-03-04T09:30:15,2026-03-05,EUR,45.5,01000,01000,123456789012345,"
    "Leave at the door,SKU-1,3000000000123,2,12.25\n"
    "SO-1001,a@example.com,2026-03-04T09:30:15,2026-03-05,EUR,45.5,01000,01000,123456789012345,"
    "Leave at the door,SKU-2,3000000000124,1,21\n"
    "SO-1002,b@example.com,2026-03-04T00:00:00,2026-03-05,EUR,0.3,75009,75009,,,SKU-3,"
    "4006381333931,3,0.1\n"
)


def write_book(
    path: Path, rows: list[list[Any]], *, sheet: str = "Orders", before: str | None = None
) -> Path:
    """A workbook with `rows` under HEADER in sheet `sheet` (typed cells as given);
    `before` names a sheet put first (a "read me" sheet some ERPs add)."""
    wb = openpyxl.Workbook()
    ws = wb.active
    if before is not None:
        ws.title = before
        ws.append(["This export was made by Acme ERP"])
        ws = wb.create_sheet(sheet)
    else:
        ws.title = sheet
    ws.append(HEADER)
    ship_zip = HEADER.index("Ship Zip") + 1
    for r in rows:
        ws.append(r)
        if r:
            cell = ws.cell(row=ws.max_row, column=ship_zip)
            if isinstance(cell.value, int):
                cell.number_format = "00000"  # a postal code kept as a number
    wb.save(path)
    return path


@pytest.fixture
def mapping(tmp_path: Path) -> Path:
    p = tmp_path / "mapping.yaml"
    p.write_text(MAPPING)
    return p


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "csvbridge", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


# --------------------------------------------------------------------------- cells


@pytest.mark.parametrize(
    ("value", "fmt", "text"),
    [
        (3000000000123, "General", "3000000000123"),
        (3000000000123.0, "General", "3000000000123"),  # never "...123.0"
        (1e20, "General", "100000000000000000000"),  # never "1e+20"
        (12345678901234567890.0, "General", "12345678901234600000"),  # Excel's 15 digits
        (0.1 + 0.2, "General", "0.3"),
        (1e-7, "General", "0.0000001"),
        (-0.0, "General", "0"),
        (2.0, "0.00", "2"),
        (1000, "00000", "01000"),
        (1000.0, "00000", "01000"),
        (42, "00000", "00042"),
        (True, "General", "TRUE"),
        (dt.datetime(2026, 3, 4), "yyyy-mm-dd", "2026-03-04"),
        (dt.datetime(2026, 3, 4), "yyyy-mm-dd h:mm:ss", "2026-03-04T00:00:00"),
        (dt.datetime(2026, 3, 4, 9, 5), "dd/mm/yyyy hh:mm", "2026-03-04T09:05:00"),
        (dt.time(9, 5), "h:mm", "09:05:00"),
        (dt.timedelta(hours=26, minutes=3), "[h]:mm", "26:03:00"),
        (None, "General", ""),
        ("01000", "@", "01000"),
    ],
)
def test_cell_text_is_what_excel_shows(value: Any, fmt: str, text: str) -> None:
    assert cell_text(value, fmt) == text


def test_number_text_never_uses_an_exponent() -> None:
    for exp in range(-9, 22):
        assert "e" not in number_text(10.0**exp).lower()


# --------------------------------------------------------------------------- convert


def test_typed_workbook_converts_like_the_csv_a_person_reads(tmp_path: Path, mapping: Path) -> None:
    book = write_book(tmp_path / "orders.xlsx", typed_rows())
    oracle = tmp_path / "orders.csv"
    oracle.write_text(EXPECTED_CSV)
    settings = ConvertSettings(mapping=mapping, workers=1)

    report = convert_file(book, tmp_path / "book.ndjson", settings=settings)
    want = convert_file(oracle, tmp_path / "csv.ndjson", settings=settings)

    assert report.objects_valid == want.objects_valid == 2 and report.accounted
    assert (tmp_path / "book.ndjson").read_bytes() == (tmp_path / "csv.ndjson").read_bytes()
    first, second = (json.loads(x) for x in (tmp_path / "book.ndjson").read_text().splitlines())
    assert [i["product"]["gtin"] for i in first["conversion_items"]] == [
        "3000000000123",
        "3000000000124",
    ]
    assert first["billing_address"]["postal_code"] == "01000"
    assert first["shipping_address"]["postal_code"] == "01000"
    assert first["shipping_tracking_code"] == "123456789012345"
    assert first["created"] == "2026-03-04T09:30:15.000+01:00"
    assert "shipping_tracking_code" not in second and "comment" not in second
    assert report.dialect["sheet"] == "Orders"


def test_cli_rows_are_named_by_sheet_row_even_after_a_multiline_cell(
    tmp_path: Path, mapping: Path
) -> None:
    rows = typed_rows()
    rows[0][HEADER.index("Notes")] = rows[1][HEADER.index("Notes")] = "Leave at\nthe\ndoor"
    bad = list(rows[2])
    bad[0], bad[HEADER.index("Currency")] = "SO-1003", "euro"
    # sheet rows: 1 header, 2-3 SO-1001 (three-line notes), 4 SO-1002, 5 blank, 6 SO-1003
    book = write_book(tmp_path / "orders.xlsx", [rows[0], rows[1], rows[2], [], bad])

    run = cli(
        "convert", book, "-o", "out.ndjson", "--mapping", mapping, "--report", "report.json",
        "--rejects", "rejects.csv", "--workers", "1", cwd=tmp_path,
    )  # fmt: skip

    assert run.returncode == 1, run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows"] == {
        "read": 5, "converted": 3, "rejected": 1, "skipped": 1,
        "shipped": 0, "rejected_by_api": 0, "not_shipped": 0,
    }  # fmt: skip
    assert report["accounted"]
    (error,) = report["errors"]
    assert error["meta"]["line_numbers"] == [6]  # the sheet's row, not the CSV's line 10
    assert "lines 6 " in run.stderr
    # the rejects are a CSV: the sheet's header, the row as Excel shows it, the reason
    with open(tmp_path / "rejects.csv", encoding="utf-8", newline="") as f:
        rejects = list(csv.reader(f))
    assert rejects[0] == [*HEADER, "csvbridge_error"]
    want = next(csv.reader([EXPECTED_CSV.splitlines()[3]]))  # SO-1002's row as Excel shows it
    want[0], want[HEADER.index("Currency")] = "SO-1003", "euro"
    assert rejects[1][:-1] == want
    assert rejects[1][HEADER.index("GTIN")] == "4006381333931"
    assert rejects[1][-1].startswith("line 6: ")


def test_sheet_chosen_by_name(tmp_path: Path, mapping: Path) -> None:
    book = write_book(tmp_path / "orders.xlsx", typed_rows(), before="Read me")

    first = cli("convert", book, "-o", "a.ndjson", "--mapping", mapping, cwd=tmp_path)
    named = cli("convert", book, "-o", "b.ndjson", "--mapping", mapping, "--sheet", "Orders",
                cwd=tmp_path)  # fmt: skip
    missing = cli("convert", book, "-o", "c.ndjson", "--mapping", mapping, "--sheet", "Order",
                  cwd=tmp_path)  # fmt: skip

    assert first.returncode == 2 and "'Order ID'" in first.stderr
    assert "the workbook also has 'Orders': choose one with --sheet" in first.stderr
    assert named.returncode == 0, named.stderr
    assert len((tmp_path / "b.ndjson").read_text().splitlines()) == 2
    assert missing.returncode == 2
    assert "no sheet 'Order'" in missing.stderr and "'Read me', 'Orders'" in missing.stderr
    # the same choice from settings (config: convert.sheet)
    report = convert_file(
        book, tmp_path / "d.ndjson", settings=ConvertSettings(mapping=mapping, sheet="Orders")
    )
    assert report.objects_valid == 2


def test_without_openpyxl_the_workbook_is_refused_with_the_extra_to_install(
    tmp_path: Path, mapping: Path
) -> None:
    book = write_book(tmp_path / "orders.xlsx", typed_rows())
    code = (
        "import sys; sys.modules['openpyxl'] = None\n"  # as if the extra were not installed
        "from csvbridge.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "convert", str(book), "-o", "x.ndjson", "--mapping",
         str(mapping)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert run.returncode == 2
    assert "Excel workbook" in run.stderr and "pip install" not in run.stderr
    assert "install csvbridge[pandas]" in run.stderr
    assert not (tmp_path / "x.ndjson").exists()


def test_a_damaged_workbook_is_an_input_error(tmp_path: Path, mapping: Path) -> None:
    book = tmp_path / "orders.xlsx"
    with zipfile.ZipFile(book, "w") as z:  # looks like a workbook, is not one
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "not xml at all")
    with pytest.raises(InputError, match="cannot be read"):
        convert_file(book, tmp_path / "x.ndjson", settings=ConvertSettings(mapping=mapping))
    assert not (tmp_path / "x.ndjson").exists()


def test_an_empty_workbook_is_reported_not_crashed(tmp_path: Path, mapping: Path) -> None:
    wb = openpyxl.Workbook()
    wb.save(tmp_path / "empty.xlsx")
    run = cli("convert", tmp_path / "empty.xlsx", "-o", "x.ndjson", "--mapping", mapping,
              cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr


# --------------------------------------------------------------------------- send, drops


@pytest.fixture
def emu(emulator: Any) -> Emulator:
    return emulator()


def test_send_ships_a_workbook(tmp_path: Path, mapping: Path, emu: Emulator) -> None:
    book = write_book(tmp_path / "orders.xlsx", typed_rows())
    settings = Settings(api=settings_for(emu), convert=ConvertSettings(mapping=mapping))

    outcome = send_file(book, settings)

    assert outcome.state is FileState.DONE, outcome.report.summary()
    assert outcome.report.objects_shipped == 2
    assert set(emu.stats.received_ids) == {"SO-1001", "SO-1002"}


def test_drop_pass_takes_xlsx_by_default(tmp_path: Path, mapping: Path, emu: Emulator) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = typed_rows()
    bad = list(rows[2])
    bad[0], bad[HEADER.index("Currency")] = "SO-1003", "euro"
    write_book(drop / "good.xlsx", rows)
    write_book(drop / "bad.xlsx", [bad])
    source = SourceSettings(
        name="erp",
        url=drop.as_uri(),
        min_age_seconds=0,
        stable_polls=0,
        convert=ConvertSettings(mapping=mapping),
    )
    settings = Settings(
        api=settings_for(emu),
        sources=[source],
        state=StateSettings(
            ledger=tmp_path / "state" / "ledger.sqlite",
            work_dir=tmp_path / "state" / "work",
            lock_file=tmp_path / "state" / "csvbridge.lock",
        ),
    )

    summary = run_once(settings)

    assert summary.exit_code == 1, summary.describe()
    assert sorted(p.name for p in (drop / "done").iterdir()) == [
        "good.xlsx",
        "good.xlsx.report.json",
    ]
    assert sorted(p.name for p in (drop / "failed").iterdir()) == [
        "bad.xlsx",
        "bad.xlsx.rejects.csv",
        "bad.xlsx.report.json",
    ]
    assert set(emu.stats.received_ids) == {"SO-1001", "SO-1002"}
    report = json.loads((drop / "failed" / "bad.xlsx.report.json").read_text())
    assert report["errors"][0]["meta"]["line_numbers"] == [2]
    assert report["dialect"]["sheet"] == "Orders"
    with open(drop / "failed" / "bad.xlsx.rejects.csv", encoding="utf-8", newline="") as f:
        rejects = list(csv.reader(f))
    assert rejects[0][-1] == "csvbridge_error" and rejects[1][0] == "SO-1003"
    # the workbook itself is filed untouched
    assert zipfile.is_zipfile(drop / "failed" / "bad.xlsx")
