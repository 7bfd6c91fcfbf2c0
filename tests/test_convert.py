"""The convert engine: grouped/ungrouped files, chunking, parallelism, sources, the report."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

import csvbridge.read.csvfile
from csvbridge.config import ConvertSettings
from csvbridge.errors import InputError
from csvbridge.fold.engine import convert, read_records
from csvbridge.fold.output import convert_file
from csvbridge.fold.rejects import neutralise, restore, write_rejects
from csvbridge.schema.models import Conversion

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TEMPLATE = Path("/work/shared/reference/commandersact-conversions-csv-template.csv")
HEADER = [
    "id", "user.email", "type", "status", "created", "currency", "comment",
    "conversion_items.id", "conversion_items.original_quantity", "conversion_items.price",
    "conversion_items.product.id", "conversion_items.product.name",
]  # fmt: skip


def row(
    cid: str, item: int, *, status: str = "pending", comment: str = "", name: str = ""
) -> list[str]:
    return [cid, "u@example.com", "online", status, "2019-04-29T13:47:47Z", "EUR", comment,
            f"i{item}", "1", "9.5", f"p{item}", name or f"Product {item}"]  # fmt: skip


def to_csv(
    rows: list[list[str]], header: list[str] = HEADER, *, delimiter: str = ",", eol: str = "\n"
) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator=eol)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def run(tmp_path: Path, data: bytes | Path, name: str = "in.csv", **kw: Any):
    """(ndjson bytes, report, Converted) for `data`."""
    settings = kw.pop("settings", None) or ConvertSettings(
        workers=kw.pop("workers", 1), **kw.pop("s", {})
    )
    if isinstance(data, bytes):
        src = tmp_path / name
        src.write_bytes(data)
    else:
        src = data
    work = tmp_path / f"work-{len(list(tmp_path.iterdir()))}"
    done = convert(src, work, settings=settings, **kw)
    return done.ndjson.read_bytes(), done.report, done


def conversions_of(nd: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in nd.splitlines()]


def grouped_rows(n: int, seed: int = 0) -> list[list[str]]:
    """n conversions of 1-4 items, a few invalid, comments with delimiters and newlines."""
    rnd = random.Random(seed)
    rows = []
    for c in range(n):
        status = "bogus" if rnd.random() < 0.1 else "pending"
        comment = rnd.choice(["", "a, b", 'say "hi"', "two\nlines", "crlf\r\nhere"])
        for k in range(rnd.randint(1, 4)):
            rows.append(
                row(
                    f"c{c:04d}",
                    k,
                    status=status,
                    comment=comment,
                    name=rnd.choice(["x", "y,z", "é\n"]),
                )
            )
    return rows


def ungroup(rows: list[list[str]], seed: int = 0) -> list[list[str]]:
    """Interleave the rows of conversions, keeping first appearances and each one's row order."""
    rnd = random.Random(seed)
    by_id: dict[str, list[list[str]]] = {}
    for r in rows:
        by_id.setdefault(r[0], []).append(r)
    out: list[list[str]] = []
    pending: list[list[list[str]]] = []
    for group in by_id.values():
        out.append(group[0])
        if group[1:]:
            pending.append(list(group[1:]))
        while pending and rnd.random() < 0.6:
            queue = rnd.choice(pending)
            out.append(queue.pop(0))
            if not queue:
                pending.remove(queue)
    while pending:
        queue = rnd.choice(pending)
        out.append(queue.pop(0))
        if not queue:
            pending.remove(queue)
    return out


# --------------------------------------------------------------------------- grouping


def test_grouped_and_ungrouped_files_give_byte_identical_output(tmp_path):
    rows = grouped_rows(40)
    shuffled = ungroup(rows)
    assert shuffled != rows
    nd1, rep1, _ = run(tmp_path, to_csv(rows))
    nd2, rep2, _ = run(tmp_path, to_csv(shuffled))
    assert nd1 == nd2 and nd1
    assert (rep1.objects_valid, rep1.objects_rejected) == (
        rep2.objects_valid,
        rep2.objects_rejected,
    )
    assert rep2.objects_rejected > 0
    assert [w["code"] for w in rep2.problems.warnings] == ["UNGROUPED_FILE"]
    assert not rep1.problems.warnings
    assert rep1.accounted and rep2.accounted


def test_ungrouped_file_keeps_items_in_file_order_and_reports_source_lines(tmp_path):
    data = to_csv([row("a", 1), row("b", 1), row("a", 2), row("b", 2), row("a", 3)])
    nd, _, done = run(tmp_path, data)
    objs = conversions_of(nd)
    assert [o["id"] for o in objs] == ["a", "b"]
    assert [i["id"] for i in objs[0]["conversion_items"]] == ["i1", "i2", "i3"]
    assert [(r.id, r.lines) for r in read_records(done.ndjson, done.index)] == [
        ("a", (2, 4, 6)),
        ("b", (3, 5)),
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_larger_ungrouped_file_with_small_chunks(tmp_path, workers):
    rows = grouped_rows(500, seed=1)
    reference, ref_report, _ = run(tmp_path, to_csv(rows))
    nd, report, _ = run(tmp_path, to_csv(ungroup(rows, seed=2)), chunk_bytes=4096, workers=workers)
    assert nd == reference
    assert report.objects_valid == ref_report.objects_valid
    assert report.rows_read == len(rows) and report.accounted


def grouped_like(rows: list[list[str]], shuffled: list[list[str]]) -> list[list[str]]:
    """The grouped file with its conversions in the order `shuffled` first shows them:
    what regrouping `shuffled` must give."""
    order = list(dict.fromkeys(r[0] for r in shuffled))
    by_id: dict[str, list[list[str]]] = {}
    for r in rows:
        by_id.setdefault(r[0], []).append(r)
    return [r for cid in order for r in by_id[cid]]


def files_of(done) -> tuple[bytes, bytes, bytes]:
    return (done.ndjson.read_bytes(), done.index.read_bytes(), done.rejected.read_bytes())


@pytest.mark.parametrize("workers", [1, 2])
def test_ungrouped_rejects_and_problems_come_out_in_the_grouped_order(
    tmp_path, monkeypatch, workers
):
    """The bucket sort builds conversions bucket by bucket, but the merge puts every
    valid line, every reject and every problem back in order of first appearance."""
    import csvbridge.fold.regroup as rg

    monkeypatch.setattr(rg, "BUCKET_BYTES", 512)  # many small buckets
    rows = grouped_rows(300, seed=11)
    shuffled = ungroup(rows, seed=12)
    regrouped = grouped_like(rows, shuffled)
    _, rep1, done1 = run(tmp_path, to_csv(regrouped))
    _, rep2, done2 = run(tmp_path, to_csv(shuffled), chunk_bytes=2048, workers=workers)
    nd1, ix1, rj1 = files_of(done1)
    nd2, ix2, rj2 = files_of(done2)
    assert nd2 == nd1 and nd1
    assert rj1 and rj2.count(b"\n") == rj1.count(b"\n")
    assert rep2.objects_rejected == rep1.objects_rejected > 0
    # lines differ (the files differ), ids and their order do not
    assert [line.split(b"\t")[0] for line in ix2.splitlines()] == [
        line.split(b"\t")[0] for line in ix1.splitlines()
    ]
    errors1 = [(e["code"], e["meta"]["ids"]) for e in rep1.problems.errors]
    errors2 = [(e["code"], e["meta"]["ids"]) for e in rep2.problems.errors]
    assert errors2 == errors1
    assert len(list((done2.ndjson.parent).glob("buckets"))) == 0  # cleaned up


def test_ungrouped_export_read_through_a_mapping_is_regrouped(tmp_path):
    """Mapped files do not take the fast lane: their runs are parked as parsed rows."""
    src = FIXTURES / "commercehq" / "orders.csv"
    mapping = FIXTURES / "commercehq" / "mapping.yaml"
    header, *records = list(csv.reader(io.StringIO(src.read_text(encoding="utf-8"))))
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    assert shuffled != records
    nd1, rep1, _ = run(tmp_path, src, mapping=mapping)
    nd2, rep2, _ = run(tmp_path, to_csv(shuffled, header), mapping=mapping)
    assert "UNGROUPED_FILE" in [w["code"] for w in rep2.problems.warnings]
    one = {o["id"]: o for o in conversions_of(nd1)}
    two = {o["id"]: o for o in conversions_of(nd2)}
    assert one.keys() == two.keys() and len(one) > 5
    for cid, conv in one.items():
        # same conversion, items in the (shuffled) file order
        items = sorted(conv["conversion_items"], key=lambda i: i["id"])
        assert sorted(two[cid]["conversion_items"], key=lambda i: i["id"]) == items
    assert rep2.objects_valid == rep1.objects_valid


def test_ungrouped_file_whose_chunks_mix_both_lanes(tmp_path):
    """A bare CR sends some chunks to the csv module (parked as runs) while others park
    raw lines: the regrouped output is still the grouped one."""
    rows = grouped_rows(120, seed=13)
    marked = {r[0] for r in rows[::37]}
    for r in rows:
        if r[0] in marked:
            r[6] = "old,\rmac"  # quoted (for its comma); a bare CR inside
    shuffled = ungroup(rows, seed=14)
    regrouped = grouped_like(rows, shuffled)
    nd1, rep1, _ = run(tmp_path, to_csv(regrouped))
    nd2, rep2, _ = run(tmp_path, to_csv(shuffled), chunk_bytes=700)
    assert nd2 == nd1 and b"old,\\rmac" in nd1
    assert rep2.objects_rejected == rep1.objects_rejected


@pytest.mark.parametrize("chunk", [64, 300, 1500])
def test_chunk_size_never_changes_the_output(tmp_path, chunk):
    data = to_csv(grouped_rows(60, seed=3), eol="\r\n") + b"\n\n"
    nd1, rep1, _ = run(tmp_path, data)
    nd2, rep2, _ = run(tmp_path, data, chunk_bytes=chunk)
    assert nd1 == nd2
    assert rep1.problems.errors == rep2.problems.errors
    assert (
        (rep1.rows_read, rep1.rows_skipped)
        == (rep2.rows_read, rep2.rows_skipped)
        == (len(grouped_rows(60, seed=3)) + 2, 2)
    )


def test_parallel_workers_give_the_same_output(tmp_path):
    data = to_csv(grouped_rows(400, seed=4))
    nd1, rep1, _ = run(tmp_path, data)
    nd2, rep2, _ = run(tmp_path, data, chunk_bytes=2048, workers=2)
    assert nd1 == nd2
    assert rep1.problems.errors == rep2.problems.errors


# --------------------------------------------------------------------------- quotes


def line_of(cells: list[str]) -> str:
    one = io.StringIO()
    csv.writer(one, lineterminator="\n").writerow(cells)
    return one.getvalue()


@pytest.mark.parametrize("grouped", [True, False])
def test_stray_quote_in_an_unquoted_field_still_converts_correctly(tmp_path, grouped):
    rows = grouped_rows(30, seed=5)
    rows = rows if grouped else ungroup(rows, seed=6)
    target = next(i for i, r in enumerate(rows) if r[3] == "pending" and i > 20)
    rows[target][11] = '5" screen'  # written unquoted by a careless exporter
    text = line_of(HEADER) + "".join(
        line_of(r) if i != target else line_of(r[:-1])[:-1] + ',5" screen\n'
        for i, r in enumerate(rows)
    )
    assert ',5" screen\n' in text
    expected, report, _ = run(tmp_path, text.encode())  # one chunk: the csv module copes
    assert '"name":"5\\" screen"' in expected.decode()
    assert report.objects_rejected == len({r[0] for r in rows if r[3] != "pending"})
    for chunk in (64, 256, 1024):
        nd, report, _ = run(tmp_path, text.encode(), chunk_bytes=chunk)
        assert nd == expected, chunk
        assert report.accounted
    assert "UNBALANCED_QUOTES" in [w["code"] for w in report.problems.warnings]


def test_quote_that_never_closes_is_an_input_error(tmp_path):
    data = (
        line_of(HEADER)
        + line_of(row("a", 1))
        + 'b,u@example.com,online,pending,2019-04-29T13:47:47Z,EUR,"never closed\n'
        + line_of(row("c", 1))
    ).encode()
    for chunk in (64, 1 << 20):
        try:
            nd, report, _ = run(tmp_path, data, chunk_bytes=chunk)
        except InputError as exc:  # refusing the file is fine too
            assert "quote" in str(exc)
            continue
        # the rest of the file is one cell of row b: nothing after it may be emitted
        assert [o["id"] for o in conversions_of(nd)] == ["a"]
        assert report.objects_rejected == 1 and report.accounted
        assert 3 in report.problems.errors[0]["meta"]["line_numbers"]


# --------------------------------------------------------------------------- sources


def test_gzip_and_stream_sources(tmp_path):
    raw = TEMPLATE.read_bytes()
    s = {"conflict": "first"}
    plain, _, _ = run(tmp_path, raw, s=s)
    zipped, report, _ = run(tmp_path, gzip.compress(raw), name="t.csv.gz", s=s)
    assert zipped == plain and report.dialect["gzip"] is True
    stream, _, _ = run(tmp_path, io.BytesIO(raw), s=s)  # type: ignore[arg-type]
    assert stream == plain


class _Untouchable(io.RawIOBase):
    """stdin/stdout for a library call: reading or writing them fails the test."""

    @property
    def buffer(self) -> _Untouchable:
        return self

    def readinto(self, b: Any) -> int:
        raise AssertionError("the library read sys.stdin")

    def write(self, b: Any) -> int:
        raise AssertionError("the library wrote sys.stdout")


def test_the_library_never_touches_stdin_or_stdout(tmp_path, monkeypatch):
    """stdin and stdout are the command line's: the library takes paths and streams,
    and a path named "-" is a file."""
    raw = TEMPLATE.read_bytes()
    monkeypatch.setattr(sys, "stdin", _Untouchable())
    monkeypatch.setattr(sys, "stdout", _Untouchable())
    s = ConvertSettings(workers=1, conflict="first")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").write_bytes(raw)
    done = convert("-", tmp_path / "w", settings=s)
    assert done.report.objects_valid == 5 and done.report.file == "-"
    stream = convert(io.BytesIO(raw), tmp_path / "w2", settings=s, name="upload.csv")
    assert stream.report.file == "upload.csv"
    assert stream.ndjson.read_bytes() == done.ndjson.read_bytes()
    out = io.BytesIO()
    report = convert_file(io.BytesIO(raw), out, settings=s)
    assert out.getvalue() == done.ndjson.read_bytes() and report.objects_valid == 5


def test_french_semicolon_cp1252_and_its_utf8_bom_tab_sibling(tmp_path):
    semi, rep1, _ = run(tmp_path, FIXTURES / "orders_semicolon_cp1252.csv")
    tab, rep2, _ = run(tmp_path, FIXTURES / "orders_bom.csv")
    assert rep1.dialect["encoding"] == "cp1252" and rep1.dialect["delimiter"] == ";"
    assert rep1.dialect["decimal_comma"] is True
    assert rep2.dialect["bom"] is True and rep2.dialect["delimiter"] == "\t"
    assert rep2.dialect["decimal_comma"] is False
    assert semi == tab
    objs = conversions_of(semi)
    assert rep1.objects_valid == 3 and rep1.objects_rejected == 0
    first = objs[0]
    assert first["comment"] == "Livrer à la loge; merci"
    assert first["billing_address"]["postal_code"] == "01000"
    assert [i["price"] for i in first["conversion_items"]] == [12.5, 7.5]
    assert objs[1]["final_amount"] == 1249
    assert first["conversion_items"][0]["product"]["tags"] == ["fait-main", "grès"]
    assert first["conversion_items"][0]["product"]["gtin"] == "3017620422003"
    for o in objs:
        Conversion.model_validate(o)


def test_decimal_comma_is_only_assumed_for_semicolon_files(tmp_path):
    rows = [row("a", 1)]
    rows[0][9] = "9,5"
    nd, report, _ = run(tmp_path, to_csv(rows, delimiter=";"))
    assert conversions_of(nd)[0]["conversion_items"][0]["price"] == 9.5
    nd, report, _ = run(tmp_path, to_csv(rows, delimiter="\t"))
    assert not nd and report.problems.errors[0]["code"] == "INVALID_PROPERTY_TYPE"
    nd, report, _ = run(tmp_path, to_csv(rows, delimiter="\t"), s={"decimal_comma": True})
    assert conversions_of(nd)[0]["conversion_items"][0]["price"] == 9.5


def test_bad_bytes_after_the_detection_sample_reject_their_row(tmp_path, monkeypatch):
    monkeypatch.setattr(csvbridge.read.csvfile, "SAMPLE_BYTES", 512)
    rows = [row(f"c{n:02d}", 1) for n in range(20)]
    rows[15][11] = "CAFE"
    data = to_csv(rows).replace(b"CAFE", b"Caf\xe9")
    assert data.index(b"\xe9") > 512
    nd, report, _ = run(tmp_path, data)
    assert report.dialect["encoding"] == "utf-8"  # the sample decided
    assert report.objects_valid == 19
    (err,) = report.problems.errors
    assert err["code"] == "ENCODING_ERROR"
    assert err["meta"]["line_numbers"] == [17] and err["meta"]["ids"] == ["c15"]


# --------------------------------------------------------------------------- the report


def test_every_row_is_accounted_for(tmp_path):
    rows = [
        row("a", 1),
        row("a", 2),
        row("b", 1, status="nope"),
        row("c", 1)[:5],
        row("", 1),
        row("d", 1),
    ]
    data = to_csv(rows) + b"\n\n"
    nd, report, _ = run(tmp_path, data)
    assert report.rows_read == 8
    assert report.rows_skipped == 2
    assert report.rows_converted == 3  # a (2 rows) and d
    assert report.rows_rejected == 3  # b, the ragged c, the row without id
    assert report.objects_valid == 2 and report.objects_rejected == 3
    assert report.accounted


def test_ragged_rows_are_rejected_with_their_line_never_padded(tmp_path):
    rows = [row("a", 1), row("a", 2)[:-2], row("b", 1), [*row("c", 1), "extra"]]
    nd, report, _ = run(tmp_path, to_csv(rows))
    assert [o["id"] for o in conversions_of(nd)] == ["b"]
    ragged = [e for e in report.problems.errors if e["code"] == "ROW_LENGTH_MISMATCH"]
    assert sorted((e["meta"]["line_numbers"], e["meta"]["ids"]) for e in ragged) == [
        ([3], ["a"]),
        ([5], ["c"]),
    ]
    assert "10 cells" in ragged[0]["detail"] and "13 cells" in ragged[1]["detail"]


def test_rows_without_id(tmp_path):
    nd, report, _ = run(tmp_path, to_csv([row("", 1), row("", 2), row("x", 1)]))
    assert [o["id"] for o in conversions_of(nd)] == ["x"]
    (err,) = report.problems.errors
    assert (err["code"], err["meta"]["property"], err["meta"]["line_numbers"]) == (
        "MISSING_REQUIRED_PROPERTY",
        "id",
        [2, 3],
    )


def test_aggregated_error_shape(tmp_path):
    rows = [
        row("a", 1, status="Pending"),
        row("b", 1, status="Pending"),
        row("c", 1, status="lost"),
    ]
    rows[2][10] = "1.35E+17"
    _, report, _ = run(tmp_path, to_csv(rows))
    d = json.loads(report.to_json())
    assert d["accounted"] is True
    (err,) = d["errors"]
    assert err["code"] == "INVALID_PROPERTY_FORMAT"
    assert isinstance(err["detail"], str) and err["detail"]
    assert err["meta"]["property"] == "status" and err["meta"]["column"] == "status"
    assert err["meta"]["line_numbers"] == [2, 3, 4]
    assert err["meta"]["error_count"] == 3
    assert err["meta"]["ids"] == ["a", "b", "c"]
    assert err["meta"]["values"] == ["Pending", "lost"]
    (warn,) = d["warnings"]
    assert warn["code"] == "SPREADSHEET_DAMAGE"
    assert warn["meta"]["property"] == "conversion_items.product.id"
    assert warn["meta"]["line_numbers"] == [4]
    assert d["rows"]["read"] == 3 and d["conversions"]["rejected"] == 3


def test_template_file(tmp_path):
    nd, report, _ = run(tmp_path, TEMPLATE)
    assert (report.objects_valid, report.objects_rejected) == (2, 3)
    conflict = next(e for e in report.problems.errors if e["code"] == "CONFLICTING_VALUES")
    assert conflict["meta"]["property"] == "user.consent_categories"
    assert conflict["meta"]["column"] == "consent_categories"
    assert conflict["meta"]["line_numbers"] == [2, 3, 4, 5, 6, 7, 8]
    damage = report.problems.warnings[0]
    assert damage["code"] == "SPREADSHEET_DAMAGE" and damage["meta"]["error_count"] == 9

    nd, report, _ = run(tmp_path, TEMPLATE, s={"conflict": "first"})
    objs = conversions_of(nd)
    assert [len(o["conversion_items"]) for o in objs] == [3, 2, 2, 1, 1]
    assert objs[0]["user"]["consent_categories"] == ["3"]
    assert objs[0]["conversion_items"][0]["product"]["gtin"] == "1.35E+17"
    for o in objs:
        Conversion.model_validate(o)

    _, strict, _ = run(tmp_path, TEMPLATE, s={"conflict": "first", "strict": True})
    assert strict.objects_valid == 0 and strict.objects_rejected == 5


def test_ignored_columns_are_reported_once(tmp_path):
    header = [*HEADER, "original_quantity", "Colour"]
    rows = [[*row("a", 1), "3", "red"], [*row("a", 2), "3", "red"]]
    nd, report, _ = run(tmp_path, to_csv(rows, header))
    assert "original_quantity" not in conversions_of(nd)[0]
    warned = {w["meta"]["column"]: w for w in report.problems.warnings}
    assert set(warned) == {"original_quantity", "Colour"}
    assert warned["original_quantity"]["meta"]["line_numbers"] == [1]


def test_missing_required_column_is_an_input_error(tmp_path):
    header = [h for h in HEADER if h != "currency"]
    with pytest.raises(InputError, match="currency"):
        run(tmp_path, to_csv([], header))


# --------------------------------------------------------------------------- no rows


def test_a_header_that_swallows_the_file_is_never_a_success(tmp_path):
    """A header cell with an odd number of quotes (`Screen size (")`) made the whole
    file read as header: 0 rows, exit 0.  The header is now read by the body's rules (a
    quote inside an unquoted cell is literal), and a header that opens a quote it never
    closes is refused: bytes after a header never end as an empty success."""
    body = TEMPLATE.read_text(encoding="utf-8")
    header, _, rows = body.partition("\n")
    literal = (header.replace("comment", 'Screen size (")') + "\n" + rows).encode()
    _, report, _ = run(tmp_path, literal, s={"conflict": "first"})
    assert report.rows_read == len(rows.strip().splitlines()) and report.objects_valid
    unclosed = (header.replace("comment", '"Screen size') + "\n" + rows).encode()
    with pytest.raises(InputError):
        run(tmp_path, unclosed, name="unclosed.csv", s={"conflict": "first"})


def test_a_header_and_blank_lines_is_an_empty_export(tmp_path):
    header = TEMPLATE.read_text(encoding="utf-8").partition("\n")[0]
    for n, text in enumerate([header, header + "\n", header + "\r\n\r\n,,,\n\n"]):
        out, report, _ = run(tmp_path, text.encode(), name=f"e{n}.csv")
        assert out == b"" and report.rows_converted == report.rows_rejected == 0
        assert [w["code"] for w in report.problems.warnings] == ["EMPTY_EXPORT"], text


# --------------------------------------------------------------------------- bounded memory


def _one_id_file(n: int, *, mixed: bool) -> list[list[str]]:
    """`n` rows of conversion "big" (one id repeated), between two ordinary ones; with
    `mixed`, other conversions' rows are interleaved (the file is not grouped)."""
    rows = [row("first", 0)]
    for k in range(n):
        rows.append(row("big", k, comment="x" if k % 7 else ""))  # quoted runs, plain runs
        if mixed and k % 50 == 0:
            rows.append(row(f"o{k}", 0))
            rows.append(row("first", k + 1))
    rows.append(row("last", 0))
    return rows


@pytest.mark.parametrize(
    ("mixed", "chunk_bytes", "workers"),
    [(False, 4096, 1), (False, 4096, 2), (False, 1 << 24, 1), (True, 4096, 1), (True, 4096, 2)],
    ids=["grouped-carry", "grouped-workers", "inside-one-chunk", "regroup", "regroup-workers"],
)
def test_a_conversion_past_150_items_is_counted_not_collected(
    tmp_path, mixed, chunk_bytes, workers
):
    n = 3000
    rows = _one_id_file(n, mixed=mixed)
    data = to_csv(rows)
    nd, report, done = run(tmp_path, data, chunk_bytes=chunk_bytes, workers=workers)
    ids = [c["id"] for c in conversions_of(nd)]
    assert "big" not in ids and ids[0] == "first" and ids[-1] == "last"
    assert report.objects_rejected == 1 and report.rows_rejected == n
    assert report.rows_read == report.rows_converted + report.rows_rejected == len(rows)
    (err,) = report.problems.errors
    assert err["code"] == "TOO_MANY_ITEMS" and f"{n} rows" in err["detail"]
    assert err["meta"]["ids"] == ["big"]
    # the rejects file holds every row of it, once, with the reason
    rejects = tmp_path / "r.csv"
    assert write_rejects(done, done.work.source, rejects) == n
    with open(rejects, newline="", encoding="utf-8") as f:
        back = list(csv.reader(f))
    assert [r[:-1] for r in back[1:]] == [r for r in rows if r[0] == "big"]
    assert all("TOO_MANY_ITEMS" in r[-1] for r in back[1:])


def test_one_id_on_every_row_keeps_memory_flat(tmp_path):
    """The rows of an endless conversion are not kept: peak memory (traced, this
    process does the work) stays far below the size of its rows in memory."""
    import tracemalloc

    src = tmp_path / "big.csv"
    src.write_bytes(to_csv([row("big", k) for k in range(60_000)]))  # ~6 MB
    tracemalloc.start()
    try:
        done = convert(
            src, tmp_path / "w", settings=ConvertSettings(workers=1), chunk_bytes=1 << 16
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.report.rows_rejected == 60_000
    assert peak < 8 << 20, f"peak {peak / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- rejects file


# (a quoted bare CR inside a cell is split by the reader today: "\rcr" is checked in
# test_neutralise_and_restore_are_inverse only)
TRICKY = ["=HYPERLINK(\"http://x\")", "+33 6 12 34 56 78", "-2+3+cmd|' /C calc'!A0",
          "@SUM(A1)", "\ttab", "'=quoted already", "''-twice", "'plain quote", "fine"]  # fmt: skip


def test_rejects_are_neutralised_for_spreadsheets_and_a_fixed_file_gives_the_originals(
    tmp_path,
):
    """Cells a spreadsheet would run as formulas get a leading quote in *.rejects.csv;
    the fixed file dropped again gives exactly the original values (and its error
    column is not a column of the export)."""
    rows = [
        row(f"c{n}", 0, status="bogus", comment=cell, name=TRICKY[-1 - n])
        for n, cell in enumerate(TRICKY)
    ] + [row("ok", 0, comment="=1+1")]
    _, report, done = run(tmp_path, to_csv(rows))
    assert report.objects_rejected == len(TRICKY) and report.objects_valid == 1
    rejects = tmp_path / "in.rejects.csv"
    assert write_rejects(done, done.work.source, rejects) == len(TRICKY)
    with open(rejects, newline="", encoding="utf-8") as f:
        back = list(csv.reader(f))
    assert back[0] == [*HEADER, "csvbridge_error"]
    comments = [r[HEADER.index("comment")] for r in back[1:]]
    assert comments == [
        "'=HYPERLINK(\"http://x\")", "'+33 6 12 34 56 78", "'-2+3+cmd|' /C calc'!A0",
        "'@SUM(A1)", "'\ttab", "''=quoted already", "'''-twice", "'plain quote", "fine",
    ]  # fmt: skip
    assert not any(c and c[0] in "=+-@\t\r" for r in back for c in r)
    # a person fixes the status in the spreadsheet and drops the file again
    for r in back[1:]:
        r[HEADER.index("status")] = "pending"
    fixed = io.StringIO()
    csv.writer(fixed, lineterminator="\r\n").writerows(back)
    again, report2, _ = run(tmp_path, fixed.getvalue().encode(), name="fixed.csv")
    assert report2.objects_valid == len(TRICKY) and not report2.problems.errors
    assert not report2.problems.warnings  # csvbridge_error is not an "ignored column"
    expected = [[*r[:3], "pending", *r[4:]] for r in rows[:-1]]
    direct, _, _ = run(tmp_path, to_csv(expected), name="direct.csv")
    assert again == direct
    got = [
        (c["comment"], c["conversion_items"][0]["product"]["name"]) for c in conversions_of(again)
    ]
    assert got == [(cell, TRICKY[-1 - n]) for n, cell in enumerate(TRICKY)]


def test_a_fixed_rejects_file_rejected_again_keeps_one_error_column(tmp_path):
    rows = [row("c1", 0, status="bogus", comment="-minus")]
    _, _, done = run(tmp_path, to_csv(rows))
    first = tmp_path / "one.rejects.csv"
    write_rejects(done, done.work.source, first)
    _, report, done2 = run(tmp_path, first)  # dropped again unfixed: rejected again
    assert report.objects_rejected == 1
    second = tmp_path / "two.rejects.csv"
    write_rejects(done2, done2.work.source, second)
    with open(second, newline="", encoding="utf-8") as f:
        back = list(csv.reader(f))
    assert back[0] == [*HEADER, "csvbridge_error"]
    assert back[1][HEADER.index("comment")] == "'-minus"


def test_neutralise_and_restore_are_inverse():
    cells = [*TRICKY, "\rcr", "", "'", "''", "'x", "a=b", "'\t", "''\r", "-", "=", "@"]
    numbers = ["-3.70379", "+12", "-1e5", "-0,5", "'-3.7", "-1+1", "-3.7 ", "+33 6 12"]
    for c in cells + numbers:
        assert restore(neutralise(c)) == c, c
    for c in cells + numbers[4:]:
        assert neutralise(c)[:1] not in ("=", "+", "-", "@", "\t", "\r"), c
    assert [neutralise(c) for c in numbers[:4]] == numbers[:4]  # numbers, not formulas


# --------------------------------------------------------------------------- products


@pytest.mark.parametrize(("workers", "chunk_bytes"), [(1, 1 << 21), (2, 256)])
def test_a_products_file_that_repeats_an_id_rejects_the_later_ones(tmp_path, workers, chunk_bytes):
    """Later repeats are rejected naming the first one's line, across chunks too."""
    ids = ["P1", "P2", "P1", "P3", "P2"] + [f"Q{n}" for n in range(100)] + ["P1"]
    data = "id,name,price\n" + "".join(f"{p},Name {n},{n}.5\n" for n, p in enumerate(ids))
    nd, report, done = run(
        tmp_path, data.encode(), kind="products", workers=workers, chunk_bytes=chunk_bytes
    )
    got = [(p["id"], p["name"]) for p in conversions_of(nd)]
    assert got[:3] == [("P1", "Name 0"), ("P2", "Name 1"), ("P3", "Name 3")]
    assert len(got) == 103 and len({i for i, _ in got}) == 103
    assert report.objects_rejected == report.rows_rejected == 3 and report.rows_skipped == 0
    (err,) = report.problems.errors
    assert err["code"] == "DUPLICATE_PRODUCT_ID" and err["meta"]["line_numbers"] == [4, 6, 107]
    assert err["meta"]["ids"] == ["P1", "P2"] and err["meta"]["error_count"] == 3
    details = [p.detail for p in report.problems.raw if p.code == "DUPLICATE_PRODUCT_ID"]
    assert [d.split(";")[0] for d in details] == [
        f"product id already given on line {n}" for n in (2, 3, 2)
    ]
    rejects = tmp_path / "p.rejects.csv"
    assert write_rejects(done, done.work.source, rejects) == 3


def test_products_taken_from_conversions_skip_repeats_with_a_reason(tmp_path):
    rows = [row(f"c{n}", k) for n in range(4) for k in range(3)]  # p0, p1, p2 four times
    nd, report, _ = run(tmp_path, to_csv(rows), products_from_conversions=True)
    assert [p["id"] for p in conversions_of(nd)] == ["p0", "p1", "p2"]
    assert report.rows_converted == 3 and report.rows_skipped == 9 and not report.problems.errors
    (note,) = report.problems.warnings
    assert note["code"] == "REPEATED_PRODUCT_SKIPPED" and note["detail"].startswith("9 rows")


def test_configured_read_caps_reach_every_process(tmp_path):
    """The caps come from the settings (not only the reader's defaults), in the main
    process and in the workers alike."""
    body = TEMPLATE.read_text(encoding="utf-8")
    header, _, rows = body.partition("\n")
    cols = next(csv.reader([header]))
    first = next(csv.reader([rows.splitlines()[0]]))
    first[cols.index("comment")] = "x" * 3000
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(first)
    data = (header + "\n" + out.getvalue()).encode()
    _, report, _ = run(tmp_path, data, s={"conflict": "first"})  # default cap: read
    assert report.rows_read == 1
    for workers in (1, 2):
        with pytest.raises(InputError, match="max_cell_chars=1,000"):
            run(tmp_path, data, name=f"w{workers}.csv", workers=workers,
                s={"conflict": "first", "max_cell_chars": 1000})  # fmt: skip


def test_a_guessed_encoding_is_a_warning_in_the_report(tmp_path):
    header = "id,type,status,created,currency,user.user_email,"
    header += "conversion_items.original_quantity,conversion_items.product.id\n"
    row = "Dąbrowska-1,online,pending,2026-01-01T00:00:00Z,PLN,a@b.pl,1,p\n"
    _, report, _ = run(tmp_path, (header + row).encode("cp1250"))
    warned = {p.code: p.detail for p in report.problems.raw if p.warning}
    assert "cp1250" in warned.get("ENCODING_GUESSED", ""), warned
