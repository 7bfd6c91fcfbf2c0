"""The DataFrame face: frames through the same engine as a CSV (same objects, same
report with row labels), rejects and conversions back as frames, shipping to the real
emulator, and docs/pandas.md's example run as written."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

pd = pytest.importorskip("pandas")

import csvbridge  # noqa: E402
from csvbridge.config import ConvertSettings, Settings  # noqa: E402
from csvbridge.dataframe import frame_to_csv, value_text  # noqa: E402
from csvbridge.fold.output import convert_file  # noqa: E402
from csvbridge.fold.workdir import read_records  # noqa: E402
from csvbridge.report import FileState  # noqa: E402
from csvbridge.testing.emulator import Emulator  # noqa: E402
from tests.plugins.api import settings_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "csvbridge" / "data" / "demo" / "orders-2026-11-21.csv"
DEMO_INVALID = {"ORD-000000007-f8883f", "ORD-000000019-ee8da1"}
ONE = ConvertSettings(workers=1)


def objects(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def demo_frame() -> pd.DataFrame:
    """The demo export as pandas reads it by default (floats, ints, bools, NaN), but for
    postal codes: pandas itself would read ``01000`` as the number 1000."""
    postal = [c for c in pd.read_csv(DEMO, nrows=0).columns if c.endswith("postal_code")]
    df = pd.read_csv(DEMO, dtype=dict.fromkeys(postal, str))
    assert df["billing_address.coordinates.latitude"].dtype == "float64"
    return df


# --------------------------------------------------------------------------- convert


def test_frame_gives_the_objects_of_the_csv(tmp_path: Path) -> None:
    df = demo_frame()
    # a gap in the gtin column makes it float64: 3000000000069.0 must not reach the API
    gap = 3
    df.loc[gap, "conversion_items.product.gtin"] = None
    assert df["conversion_items.product.gtin"].dtype == "float64"
    with open(DEMO, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    g = rows[0].index("conversion_items.product.gtin")
    rows[gap + 1][g] = ""
    for row in rows[1:]:  # the demo's spreadsheet-damaged gtin: pandas reads a float
        if row[g] == "3.00000000001E+12":
            row[g] = "3000000000010"
    edited = tmp_path / "edited.csv"
    with open(edited, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    want = convert_file(edited, tmp_path / "want.ndjson", settings=ONE)

    with csvbridge.convert_dataframe(df, settings=ONE) as done:
        got = objects(done.ndjson)
        report = done.report

    assert got == objects(tmp_path / "want.ndjson")  # numbers equal (142.2 == 142.20)
    gtins = [i["product"].get("gtin") for o in got for i in o["conversion_items"]]
    assert "3000000000069" in gtins and not any(g and "." in g for g in gtins)
    assert (report.objects_valid, report.objects_rejected) == (want.objects_valid, 2)
    assert report.rows_read == want.rows_read == len(df) and report.accounted


def test_report_and_rejects_name_rows_by_label(tmp_path: Path) -> None:
    df = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
    df.index = [f"order-row-{i}" for i in range(len(df))]
    # a comment on three lines before the rejected rows: labels must not shift
    first = df["id"] == df["id"].iloc[0]
    df.loc[first, "comment"] = "ring twice\nthen wait\nthank you"
    bad = df.index[df["id"].isin(DEMO_INVALID)]

    done = csvbridge.convert_dataframe(df, tmp_path / "work", settings=ONE)

    as_dict = json.loads(done.report.to_json())
    labelled = {n for e in as_dict["errors"] for n in e["meta"]["line_numbers"]}
    assert labelled <= set(bad) and labelled, labelled
    assert not (set(df.index[first]) & labelled)
    rejects = done.rejects
    assert list(rejects.index) == list(bad)
    assert rejects.columns[-1] == "csvbridge_error"
    assert (rejects.drop(columns="csvbridge_error") == df.loc[bad]).all().all()
    assert all(not e.startswith("line ") for e in rejects["csvbridge_error"])
    assert "order-row-" in done.report.summary()
    # with a work folder given, the objects stay there
    assert (tmp_path / "work" / "work" / "objects.ndjson").exists()


def test_default_range_index_labels_and_the_header(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {"id": ["A", "B"], "type": ["online", "online"], "status": ["delivered", "lost"],
         "created": ["2026-01-01T00:00:00+01:00"] * 2, "currency": ["EUR"] * 2,
         "user.email": ["a@example.com", "b@example.com"],
         "conversion_items.original_quantity": [1, 1],
         "conversion_items.product.id": ["P1", "P2"], "unknown column": ["x", "y"]}
    )  # fmt: skip
    with csvbridge.convert_dataframe(df, settings=ONE) as done:
        rep = json.loads(done.report.to_json())
        assert done.report.objects_valid == 1
        assert list(done.rejects.index) == [1]
    (err,) = rep["errors"]
    assert err["meta"]["line_numbers"] == [1]  # the label, not line 3
    warnings = {w["code"]: w["meta"]["line_numbers"] for w in rep["warnings"]}
    assert warnings.get("IGNORED_COLUMN") == ["header"]


def test_value_text_of_frame_cells() -> None:
    assert value_text(3000000000123.0) == "3000000000123"
    assert value_text(float("nan")) == ""
    assert value_text(None) == "" and value_text(pd.NaT) == "" and value_text(pd.NA) == ""
    assert value_text(pd.Timestamp("2026-03-04 09:30")) == "2026-03-04T09:30:00"
    assert value_text(True) == "true"
    import numpy as np

    assert value_text(np.int64(7)) == "7" and value_text(np.float32(0.5)) == "0.5"


def test_frame_is_written_in_chunks_with_the_lines_of_each_row(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": ["x", "two\nlines", "y", "z"], "b": [1, 2, 3, 4]}, index=list("pqrs"))
    out = frame_to_csv(df, tmp_path / "f.csv", chunk_rows=3)
    assert out.starts == [2, 3, 5, 6]
    assert [out.label(n) for n in (1, 2, 3, 4, 5, 6)] == ["header", "p", "q", "q", "r", "s"]
    assert list(csv.reader(io.StringIO((tmp_path / "f.csv").read_text()))) == [
        ["a", "b"], ["x", "1"], ["two\nlines", "2"], ["y", "3"], ["z", "4"],
    ]  # fmt: skip


# --------------------------------------------------------------------------- to_dataframe


def test_to_dataframe_of_conversions_records_and_rejects(tmp_path: Path) -> None:
    report = convert_file(DEMO, tmp_path / "out.ndjson", settings=ONE,
                          rejects_path=tmp_path / "rejects.csv")  # fmt: skip
    frame = csvbridge.to_dataframe(tmp_path / "out.ndjson")
    assert len(frame) == report.objects_valid == 28
    assert "billing_address.postal_code" in frame.columns
    assert frame["billing_address.postal_code"].iloc[0] == "75009"
    assert isinstance(frame["conversion_items"].iloc[0], list)

    items = csvbridge.to_dataframe(tmp_path / "out.ndjson", items=True)
    assert len(items) == sum(len(x) for x in frame["conversion_items"]) == report.rows_converted
    assert "conversion_items.product.gtin" in items.columns

    lines = (tmp_path / "out.ndjson").read_bytes().splitlines()
    assert csvbridge.to_dataframe(json.loads(x) for x in lines).equals(frame)
    assert csvbridge.to_dataframe(lines).equals(frame)

    rejects = csvbridge.to_dataframe(tmp_path / "rejects.csv")
    assert set(rejects["id"]) == DEMO_INVALID and len(rejects) == 8
    assert rejects["csvbridge_error"].str.match(r"line \d+: ").all()


def test_to_dataframe_of_records_and_restored_cells(tmp_path: Path) -> None:
    df = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
    df.loc[df["id"].isin(DEMO_INVALID), "comment"] = '=HYPERLINK("http://x")'
    with csvbridge.convert_dataframe(df, settings=ONE) as done:
        recs = list(read_records(done.ndjson, done.converted.index))
        assert len(csvbridge.to_dataframe(recs)) == 28
        assert set(done.rejects["comment"]) == {'=HYPERLINK("http://x")'}  # not "'=..."


# --------------------------------------------------------------------------- ship


@pytest.fixture
def emu(emulator: Any) -> Emulator:
    return emulator()


def test_ship_dataframe_delivers_and_names_rows(tmp_path: Path, emu: Emulator) -> None:
    df = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
    df.index = [f"r{i}" for i in range(len(df))]
    settings = Settings(api=settings_for(emu))

    outcome = csvbridge.ship_dataframe(df, settings, work_dir=tmp_path)

    assert outcome.state is FileState.FAILED and outcome.exit_code == 1
    assert outcome.report.objects_shipped == 28
    assert set(emu.stats.received_ids) == set(df["id"]) - DEMO_INVALID
    assert set(outcome.rejects["id"]) == DEMO_INVALID
    assert list(outcome.rejects.index) == list(df.index[df["id"].isin(DEMO_INVALID)])
    rep = json.loads(outcome.report.to_json())
    assert all(str(n).startswith("r") for e in rep["errors"] for n in e["meta"]["line_numbers"])
    assert list(tmp_path.iterdir()) == []  # the temporary work folder is gone
    assert csvbridge.to_dataframe(outcome) is outcome.rejects


# --------------------------------------------------------------------------- docs


def test_docs_example_runs_as_written(tmp_path: Path, emu: Emulator, monkeypatch: Any) -> None:
    text = (ROOT / "docs" / "pandas.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    (tmp_path / "csvbridge.yaml").write_text(
        f"api:\n  base_url: {emu.url}\n  site_id: '{emu.site_id}'\n"
        f"  token: {emu.token}\n  backoff_base_seconds: 0.02\n"
    )
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith("CSVBRIDGE_")]:
        monkeypatch.delenv(var)
    ns: dict[str, Any] = {}
    exec(compile(blocks[0], "docs/pandas.md", "exec"), ns)  # noqa: S102
    exec(compile(blocks[1], "docs/pandas.md", "exec"), ns)  # noqa: S102
    outcome = ns["outcome"]
    assert outcome.report.objects_shipped == 2
    assert set(emu.stats.received_ids) == {"SO-1001", "SO-1002"}
    assert list(outcome.rejects.index) == ["d"]
    assert "lines d" in outcome.report.summary()
