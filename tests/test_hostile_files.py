"""Files made the way careless or hostile people make them, written to disk for real.

Each cap of `ReadLimits` is shown to trigger with a message that says where; memory
figures belong to benchmarks/, these tests show the behaviour.  Gzip bombs are written
with zlib in streaming mode, so the file on disk stays small while it expands to
hundreds of megabytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
import zlib
from pathlib import Path

import pytest

from csvbridge.config import ConvertSettings
from csvbridge.errors import InputError
from csvbridge.fold.engine import convert
from csvbridge.read.csvfile import CsvFile, parse_chunk
from csvbridge.read.limits import CellTooLong, GzipBomb, ReadLimits, RecordTooLong
from csvbridge.report import MAX_VALUE_CHARS, Problem, ProblemLog

HEADER = [
    "id", "user.email", "type", "status", "created", "currency", "comment",
    "conversion_items.id", "conversion_items.original_quantity", "conversion_items.price",
    "conversion_items.product.id", "conversion_items.product.name",
]  # fmt: skip


def order(cid: str, item: int = 1, **cells: str) -> list[str]:
    values = dict(zip(HEADER, [
        cid, "u@example.com", "online", "pending", "2019-04-29T13:47:47Z", "EUR", "",
        f"i{item}", "1", "9.5", f"p{item}", f"Product {item}",
    ], strict=True))  # fmt: skip
    values.update({k.replace("__", "."): v for k, v in cells.items()})
    return list(values.values())


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER, **fmt: str) -> Path:
    with open(path, "w", encoding=fmt.pop("encoding", "utf-8"), newline="") as f:
        w = csv.writer(f, lineterminator="\n", **fmt)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_rows(source: Path | bytes, **kw: object) -> tuple[CsvFile, list[tuple[int, list[str]]]]:
    src = io.BytesIO(source) if isinstance(source, bytes) else source
    out: list[tuple[int, list[str]]] = []
    with CsvFile(src, **kw) as f:  # type: ignore[arg-type]
        for data, first in f.chunks():
            out += [(r.line, r.cells) for r in parse_chunk(data, first, f.dialect).rows]
    return f, out


def gzip_stream(path: Path, parts: list[tuple[bytes, int]]) -> Path:
    """Write `piece` x `times` for each part through one streaming compressor."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    with open(path, "wb") as f:
        for piece, times in parts:
            block = piece * max(1, (1 << 20) // len(piece))
            left = len(piece) * times
            while left > 0:
                chunk = block[:left]
                f.write(comp.compress(chunk))
                left -= len(chunk)
        f.write(comp.flush())
    return path


# --------------------------------------------------------------------------- huge cells


def test_a_50_mb_cell_is_refused_naming_its_line_and_column(tmp_path):
    big = tmp_path / "big-cell.csv"
    with open(big, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerow(order("c1"))
        w.writerow(order("c2", comment="x" * (50 << 20)))  # pasted a log file, unquoted
        w.writerow(order("c3"))
    with pytest.raises(CellTooLong) as err:
        convert(big, tmp_path / "work")
    msg = str(err.value)
    assert "line 3, column 7 ('comment')" in msg
    # read up to the record cap only, not the whole 50 MB
    assert "a cell of at least 16,7" in msg and "max_cell_chars=1,000,000" in msg


def test_a_quoted_multiline_cell_over_the_cap_is_refused(tmp_path):
    # line breaks every 80 characters: no single line is long, the cell is
    text = "\n".join(["lorem ipsum dolor sit amet " * 3] * 20_000)  # 1.6 M characters
    path = write_csv(tmp_path / "notes.csv", [order("c1"), order("c2", comment=text)])
    with pytest.raises(CellTooLong, match=r"line 3, column 7: a cell of 1,6\d\d,\d\d\d"):
        convert(path, tmp_path / "work")


def test_the_cell_cap_is_configurable_and_big_cells_under_it_pass(tmp_path):
    path = write_csv(tmp_path / "long.csv", [order("c1", comment="y" * 300_000)])
    _, rows = read_rows(path)
    assert len(rows[0][1][6]) == 300_000
    with pytest.raises(
        CellTooLong, match=r"line 2, column 7 \('comment'\): .*max_cell_chars=100,000"
    ):
        read_rows(path, limits=ReadLimits(max_cell_chars=100_000))


def test_a_long_cell_in_the_sequential_reader_is_refused_too(tmp_path):
    # a stray quote sends the engine to `rows()`; the cap holds there as well
    data = 'id,"a",b\n1,x"y,2\n2,' + "z" * 5000 + ",3\n"
    limits = ReadLimits(max_cell_chars=1000)
    with (
        CsvFile(io.BytesIO(data.encode()), limits=limits) as f,
        pytest.raises(CellTooLong, match="line 3, column 2 .'a'."),
    ):
        list(f.rows())


# --------------------------------------------------------------------------- huge records


def test_a_500_mb_line_is_refused_without_reading_it_whole(tmp_path):
    # gzip keeps the test file small: a header, then 500 MB without a line break
    bomb = gzip_stream(tmp_path / "one-line.csv.gz", [(b"id,name\n", 1), (b"ab,", 170 << 20)])
    assert bomb.stat().st_size < 2 << 20
    limits = ReadLimits(max_gzip_ratio=None)  # only the record cap
    with pytest.raises(RecordTooLong) as err, CsvFile(bomb, limits=limits) as f:
        for _ in f.chunks():
            pass
    assert "record starting at line 2 is longer than 16.0 MiB (max_record_bytes)" in str(err.value)
    assert f._stream.expanded < 64 << 20  # stopped at the cap, not at the end of the line


def test_the_record_cap_is_configurable(tmp_path):
    path = write_csv(tmp_path / "r.csv", [order("c1"), order("c2", comment="w" * (6 << 20))])
    limits = ReadLimits(max_record_bytes=4 << 20, max_cell_chars=None)
    with pytest.raises(RecordTooLong, match="line 3 is longer than 4.0 MiB"):
        read_rows(path, limits=limits)
    assert len(read_rows(path, limits=ReadLimits(max_cell_chars=None))[1]) == 2


def test_an_open_quote_past_the_record_cap_is_refused_by_the_sequential_reader(tmp_path):
    # a real quoted field that never closes: chunks cut at a line break, the csv module
    # notices, and the one-stream reader stops at the cap
    body = "".join(f"{i},fine\n" for i in range(3)) + '3,"never closed\n' + "x\n" * 800_000
    path = tmp_path / "open.csv"
    path.write_text("id,name\n" + body)
    limits = ReadLimits(max_record_bytes=1 << 20)
    with CsvFile(path, limits=limits) as f:
        oks = [parse_chunk(d, n, f.dialect).boundary_ok for d, n in f.chunks(1 << 18)]
    assert False in oks
    with CsvFile(path, limits=limits) as f, pytest.raises(RecordTooLong, match="line 5"):
        list(f.rows())


def test_stray_quotes_in_a_file_longer_than_the_record_cap_still_read(tmp_path):
    # one lone quote makes quote parity wrong for the rest of the file; the cap must
    # not turn that into "record too long": the csv module reads it as the body does
    rows = [f'{i},size 15",n{i}\n' if i == 10 else f"{i},s,n{i}\n" for i in range(200_000)]
    path = tmp_path / "stray.csv"
    path.write_text("id,size,name\n" + "".join(rows))
    _, got = read_rows(path, limits=ReadLimits(max_record_bytes=256 << 10))
    assert len(got) == 200_000 and got[10] == (12, ["10", 'size 15"', "n10"])


# --------------------------------------------------------------------------- wide headers


def wide_header(n: int, width: int = 90) -> list[str]:
    return HEADER + [f"attr_{i:06d}_".ljust(width, "x") for i in range(n)]


def test_a_header_over_1_mib_is_read_whole(tmp_path):
    header = wide_header(14_000)  # ~1.3 MB of header
    rows = [order("c1") + ["v"] * 14_000, order("c2") + ["w"] * 14_000]
    path = write_csv(tmp_path / "wide.csv", rows, header)
    assert len(",".join(header)) > 1 << 20
    f, got = read_rows(path)
    assert f.header == header  # not cut (cut, it gave a false duplicate-column error)
    assert [(n, len(c)) for n, c in got] == [(2, len(header)), (3, len(header))]
    done = convert(path, tmp_path / "work")
    assert done.report.rows_read == 2 and done.report.objects_valid == 2


def test_a_header_over_its_cap_is_a_clear_error(tmp_path):
    path = write_csv(tmp_path / "wide.csv", [], wide_header(14_000))
    with pytest.raises(
        RecordTooLong, match=r"header row is longer than 1.0 MiB \(max_header_bytes\)"
    ):
        CsvFile(path, limits=ReadLimits(max_header_bytes=1 << 20))


def test_50000_columns_are_refused_by_the_column_cap(tmp_path):
    path = write_csv(tmp_path / "50k.csv", [order("c1") + [""] * 50_000], wide_header(50_000, 20))
    with pytest.raises(InputError, match="50,012 columns, more than 20,000 .max_columns."):
        convert(path, tmp_path / "work")
    f, rows = read_rows(path, limits=ReadLimits(max_columns=60_000))
    assert len(f.header) == 50_012 and len(rows[0][1]) == 50_012


# --------------------------------------------------------------------------- gzip bombs


def test_a_gzip_bomb_is_refused_by_its_expansion_ratio(tmp_path):
    # valid orders, the same row over and over: ~500 MB from a file of well under 1 MB
    row = ",".join(order("c1")).encode() + b"\n"
    bomb = gzip_stream(
        tmp_path / "bomb.csv.gz", [(",".join(HEADER).encode() + b"\n", 1), (row, 5_000_000)]
    )
    assert bomb.stat().st_size < 2 << 20
    with CsvFile(bomb) as f, pytest.raises(GzipBomb) as err:  # the default limits
        for _ in f.chunks():
            pass
    assert "expands more than 250 times its compressed size" in str(err.value)
    assert f._stream.expanded < 24 << 20  # stopped soon after the 16 MiB grace


def test_a_gzip_bomb_is_refused_by_convert(tmp_path):
    # orders whose comment is a megabyte of padding (just under the cell cap): few rows
    # to parse, hundreds of times smaller on disk
    rows = [
        (",".join(order(f"c{i}", comment="x" * 999_000)).encode() + b"\n", 1) for i in range(80)
    ]
    bomb = gzip_stream(tmp_path / "bomb.csv.gz", [(",".join(HEADER).encode() + b"\n", 1), *rows])
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(GzipBomb, match="a gzip bomb"):
        convert(bomb, tmp_path / "work", settings=ConvertSettings(workers=1))


def test_the_expanded_size_cap_is_configurable(tmp_path):
    row = b"1,a\n"
    path = gzip_stream(tmp_path / "big.csv.gz", [(b"id,name\n", 1), (row, 300_000)])
    limits = ReadLimits(max_expanded_bytes=1 << 20)
    with pytest.raises(GzipBomb, match=r"expands beyond 1.0 MiB \(max_expanded_bytes\)"):
        read_rows(path, limits=limits)
    lenient = ReadLimits(gzip_ratio_after_bytes=512 << 10, max_gzip_ratio=10_000)
    f, rows = read_rows(path, limits=lenient)
    assert len(rows) == 300_000 and f.dialect.gzip
    with pytest.raises(GzipBomb, match="expands more than 100 times"):
        read_rows(path, limits=ReadLimits(gzip_ratio_after_bytes=512 << 10, max_gzip_ratio=100))


def test_limits_come_from_the_convert_settings():
    settings = ConvertSettings(max_cell_chars=10, max_gzip_ratio=None, gzip_ratio_after_bytes=0)
    limits = ReadLimits.from_settings(settings)
    assert limits.max_cell_chars == 10 and limits.max_gzip_ratio is None
    assert limits.gzip_ratio_after_bytes == 0
    assert limits.max_record_bytes == ReadLimits().max_record_bytes
    assert ReadLimits.from_settings(ConvertSettings()) == ReadLimits()


# --------------------------------------------------------------------------- report values


def test_values_quoted_in_the_report_are_truncated(tmp_path):
    huge = "9" * 5 + "x" * 900_000  # under the cell cap, far over anything a report shows
    path = write_csv(tmp_path / "r.csv", [order("c1", conversion_items__price=huge), order("c2")])
    done = convert(path, tmp_path / "work")
    text = done.report.to_json()
    assert done.report.objects_rejected == 1
    assert len(text) < 20_000
    assert b"characters cut]" in text


def test_problem_log_clips_values_and_details():
    log = ProblemLog()
    log.add(
        Problem(
            "X", f"{'z' * 5_000_000!r} is not a number", "p", (2,), "c1", "col", "z" * 5_000_000
        )
    )
    agg = log.errors[0]
    assert len(agg["meta"]["values"][0]) <= MAX_VALUE_CHARS + 40
    assert len(agg["detail"]) < 600 and agg["detail"].endswith("is not a number")
    assert len(json.dumps(agg)) < 2000


# --------------------------------------------------------------------------- encodings

POLISH = [
    ("Anna", "Dąbrowska", "Łódź"), ("Łukasz", "Wiśniewski", "Kraków"),
    ("Żaneta", "Zielińska", "Gdańsk"), ("Michał", "Wójcik", "Poznań"),
    ("Grzegorz", "Mączyński", "Wrocław"), ("Józef", "Ślęzak", "Bielsko-Biała"),
]  # fmt: skip
CZECH = [
    ("Antonín", "Dvořák", "Plzeň"),
    ("Jiří", "Černý", "Ústí nad Labem"),
    ("Šárka", "Říhová", "Brno"),
]


def names_export(
    path: Path, people: list[tuple[str, str, str]], encoding: str, n: int = 60
) -> Path:
    """An export as a Windows shop system writes it: the legacy code page, CRLF."""
    header = ["id", "first_name", "last_name", "city"]
    rows = [[f"A{i}", *people[i % len(people)]] for i in range(n)]
    with open(path, "w", encoding=encoding, newline="") as f:
        w = csv.writer(f, lineterminator="\r\n", delimiter=";")
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize(("people", "n"), [(POLISH, 60), (POLISH, 6), (CZECH, 30)])
def test_central_european_cp1250_exports_are_read_as_cp1250(tmp_path, people, n):
    path = names_export(tmp_path / "klienci.csv", people, "cp1250", n)
    f, rows = read_rows(path)
    assert f.dialect.encoding == "cp1250"
    assert [r[1][1:] for r in rows[: len(people)]] == [list(p) for p in people]


def test_a_single_polish_name_is_guessed_right_and_flagged_as_a_guess(tmp_path):
    path = names_export(tmp_path / "one.csv", [("Anna", "Dąbrowska", "Warszawa")], "cp1250", 1)
    f, rows = read_rows(path)
    assert rows[0][1][2] == "Dąbrowska"  # not "D¹browska"
    assert f.dialect.encoding_confident is False
    assert "cp1250" in f.dialect.encoding_note and "--encoding" in f.dialect.encoding_note


def test_western_cp1252_exports_stay_cp1252(tmp_path):
    people = [
        ("Hélène", "Müller", "Besançon"),
        ("Ångström", "Noël", "Orléans"),
        ("Zoë", "Straße", "Köln €"),
    ]
    path = names_export(tmp_path / "clients.csv", people, "cp1252", 30)
    f, rows = read_rows(path)
    assert f.dialect.encoding == "cp1252"
    assert rows[2][1][1:] == ["Zoë", "Straße", "Köln €"]


def test_an_undecidable_sample_is_reported_as_a_guess(tmp_path):
    # "Hélène" reads as "Hélčne" in cp1250: both are letters, the sample cannot tell
    path = names_export(tmp_path / "fr.csv", [("Hélène", "Martin", "Lyon")], "cp1252", 3)
    f, rows = read_rows(path)
    assert f.dialect.encoding == "cp1252" and rows[0][1][1] == "Hélène"
    assert f.dialect.encoding_confident is False
    shown = f.dialect.as_dict()
    assert shown["encoding_confident"] is False and "cp1250" in shown["encoding_note"]


def test_forced_encoding_wins_over_detection(tmp_path):
    path = names_export(tmp_path / "klienci.csv", POLISH, "cp1250")
    f, rows = read_rows(path, encoding="cp1252")
    assert f.dialect.encoding == "cp1252" and f.dialect.encoding_confident
    assert rows[0][1][2] == "D¹browska"  # what the user asked for


def utf8_orders_with_a_bad_byte(path: Path, bad_at: int, n: int) -> Path:
    rows = [order(f"c{i}", comment="Café crème") for i in range(n)]
    data = io.StringIO()
    w = csv.writer(data, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    raw = data.getvalue().encode()
    lines = raw.split(b"\n")
    lines[bad_at] = lines[bad_at].replace("Café".encode(), b"Caf\xe9")  # one cp1252 byte
    path.write_bytes(b"\n".join(lines))
    return path


def test_a_stray_bad_byte_early_keeps_the_file_utf8(tmp_path):
    path = utf8_orders_with_a_bad_byte(tmp_path / "o.csv", 5, 200)
    f, _ = read_rows(path)
    assert f.dialect.encoding == "utf-8"
    assert "not valid UTF-8" in f.dialect.encoding_note
    done = convert(path, tmp_path / "work")
    rep = done.report
    assert rep.objects_valid == 199 and rep.rows_rejected == 1
    [enc] = [e for e in rep.problems.errors if e["code"] == "ENCODING_ERROR"]
    assert enc["meta"]["line_numbers"] == [6]
    first = done.ndjson.read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first)["comment"] == "Café crème"  # not "CafÃ© crÃ¨me"


def test_bad_bytes_late_in_a_utf8_file_are_reported_by_line(tmp_path):
    path = utf8_orders_with_a_bad_byte(tmp_path / "o.csv", 15_000, 16_000)
    assert path.stat().st_size > 1 << 20
    done = convert(path, tmp_path / "work", settings=ConvertSettings(workers=1))
    rep = done.report
    assert rep.dialect["encoding"] == "utf-8" and rep.objects_valid == 15_999
    [enc] = [e for e in rep.problems.errors if e["code"] == "ENCODING_ERROR"]
    assert enc["meta"]["line_numbers"] == [15_001]


# --------------------------------------------------------------------------- not CSV at all


def xlsx(path: Path) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(HEADER)
    ws.append(order("c1"))
    wb.save(path)
    return path


def html_error_page(path: Path) -> Path:
    path.write_text(
        "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
        "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
        "</body></html>\n"
    )
    return path


def zip_of_csv(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("orders.csv", ",".join(HEADER) + "\n" + ",".join(order("c1")) + "\n")
    return path


def pdf(path: Path) -> Path:
    path.write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    return path


def json_list(path: Path) -> Path:
    path.write_text(json.dumps([dict(zip(HEADER, order("c1"), strict=True))], indent=2))
    return path


def ndjson(path: Path) -> Path:
    path.write_text(json.dumps(dict(zip(HEADER, order("c1"), strict=True))) + "\n")
    return path


def utf16_no_bom(path: Path) -> Path:
    path.write_bytes(
        (",".join(HEADER) + "\r\n" + ",".join(order("c1")) + "\r\n").encode("utf-16-le")
    )
    return path


def utf16_bom(path: Path) -> Path:
    path.write_text(",".join(HEADER) + "\n" + ",".join(order("c1")) + "\n", encoding="utf-16")
    return path


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (json_list, "this is JSON (or NDJSON) data, not a CSV"),
        (ndjson, "this is JSON (or NDJSON) data, not a CSV"),
        (html_error_page, "this is an HTML page titled '502 Bad Gateway'"),
        (pdf, "this is a PDF document, not a CSV"),
        (zip_of_csv, "this is a zip archive (only gzip, .csv.gz, is read), not a CSV"),
        (utf16_no_bom, "the file is UTF-16 (without BOM); re-export it as UTF-8"),
        (utf16_bom, "the file is UTF-16; re-export it as UTF-8"),
    ],
    ids=["json", "ndjson", "html", "pdf", "zip", "utf16", "utf16-bom"],
)
def test_files_that_are_not_csv_say_what_they_are(tmp_path, make, said):
    path = make(tmp_path / "orders.csv")  # renamed .csv, as people do
    with pytest.raises(InputError) as err:
        convert(path, tmp_path / "work")
    assert said in str(err.value)
    assert "required column missing" not in str(err.value)


def test_a_workbook_renamed_csv_is_read_as_the_workbook_it_is(tmp_path):
    # the content decides: an .xlsx is read (csvbridge.read.xlsx, tests/test_xlsx.py)
    done = convert(xlsx(tmp_path / "orders.csv"), tmp_path / "work")
    assert done.report.objects_valid == 1 and done.report.accounted
    assert done.report.dialect["sheet"] == "Sheet"


def test_gzipped_json_is_named_too(tmp_path):
    raw = json_list(tmp_path / "orders.json").read_bytes()
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(InputError, match="this is JSON"):
        CsvFile(path)


def test_csv_files_starting_like_other_formats_are_still_csv():
    for data in (b"[id],name\n1,x\n", b"<id>,name\n1,x\n", b"PKid,name\n1,x\n", b"{id},n\n1,2\n"):
        _, rows = read_rows(data)
        assert rows == [(2, [rows[0][1][0], rows[0][1][1]])]
