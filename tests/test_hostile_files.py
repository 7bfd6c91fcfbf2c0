"""Files made the way careless or hostile people make them, written to disk for real.

Each cap of `ReadLimits` is shown to trigger with a message that says where; memory
figures belong to benchmarks/, these tests show the behaviour.  Gzip bombs are written
with zlib in streaming mode, so the file on disk stays small while it expands to
hundreds of megabytes.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path

import pytest

from csvbridge.config import ConvertSettings
from csvbridge.convert.engine import convert
from csvbridge.errors import InputError
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
    assert f._stream.expanded < 80 << 20  # stopped soon after the 64 MiB grace


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
    settings = ConvertSettings(max_cell_chars=10, max_gzip_ratio=None)
    limits = ReadLimits.from_settings(settings)
    assert limits.max_cell_chars == 10 and limits.max_gzip_ratio is None
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
