"""The reader: dialect detection, text-only values, exact line numbers, record-aligned chunks."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import random
from pathlib import Path

import pytest

from csvbridge.errors import InputError
from csvbridge.read.csvfile import (
    CHUNK_BYTES,
    CsvFile,
    Dialect,
    detect_delimiter,
    detect_encoding,
    parse_chunk,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TEMPLATE = Path("/work/shared/reference/commandersact-conversions-csv-template.csv")


def read_all(source, chunk: int = CHUNK_BYTES, **kw):
    """Everything the reader yields for `source`: dialect, header, rows, blank lines."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    rows: list[tuple[int, list[str]]] = []
    blank = 0
    aligned = True
    with CsvFile(source, **kw) as f:
        for data, first in f.chunks(chunk):
            parsed = parse_chunk(data, first, f.dialect)
            rows += [(r.line, r.cells) for r in parsed.rows]
            blank += parsed.blank
            aligned &= parsed.boundary_ok
        return f.dialect, f.header, rows, blank, aligned


# --------------------------------------------------------------------------- encodings


def test_utf8_without_bom():
    dialect, header, rows, _, _ = read_all("id,name\n1,Crème brûlée\n".encode())
    assert (dialect.encoding, dialect.bom) == ("utf-8", False)
    assert header == ["id", "name"]
    assert rows == [(2, ["1", "Crème brûlée"])]


def test_utf8_with_bom_is_not_part_of_the_first_column():
    dialect, header, rows, _, _ = read_all(codecs.BOM_UTF8 + "id,name\n1,é\n".encode())
    assert (dialect.encoding, dialect.bom) == ("utf-8", True)
    assert header[0] == "id"
    assert rows == [(2, ["1", "é"])]


def test_cp1252_fallback_decodes_accents_and_the_euro_sign():
    data = "id;nom\r\n1;Thé à 5 €\r\n".encode("cp1252")
    dialect, _, rows, _, _ = read_all(data)
    assert dialect.encoding == "cp1252"
    assert rows == [(2, ["1", "Thé à 5 €"])]


def test_cp1252_file_whose_only_accent_is_its_last_byte():
    # a sample that is the whole file must be complete UTF-8, not "maybe cut mid-character"
    dialect, _, rows, _, _ = read_all(b"id;nom\r\n1;caf\xe9")
    assert dialect.encoding == "cp1252"
    assert rows == [(2, ["1", "café"])]


def test_latin1_fallback_when_cp1252_cannot_decode():
    data = b"id,name\n1,\x81caf\xe9\n"  # 0x81 is undefined in cp1252
    dialect, _, rows, _, _ = read_all(data)
    assert dialect.encoding == "latin-1"
    assert rows == [(2, ["1", "\x81café"])]


def test_encoding_override_wins_over_detection():
    data = "id,name\n1,café\n".encode()
    dialect, _, rows, _, _ = read_all(data, encoding="latin-1")
    assert dialect.encoding == "latin-1"
    assert rows == [(2, ["1", "cafÃ©"])]


def test_forced_encoding_that_does_not_fit_the_header_keeps_the_first_row_intact():
    data = "id,Prénom\nc1000,x\nc2,y\n".encode("cp1252")
    _, header, rows, _, _ = read_all(data, encoding="utf-8")
    assert header == ["id", "Pr\ufffdnom"]
    assert rows == [(2, ["c1000", "x"]), (3, ["c2", "y"])]


@pytest.mark.parametrize("name", ["nope", "utf-16", "utf-32", "cp500"])
def test_unknown_or_ascii_incompatible_forced_encoding_is_refused(name):
    with pytest.raises(InputError):
        read_all(b"id,name\n1,2\n", encoding=name)


def test_utf16_file_is_refused_with_advice():
    data = "id,name\n1,2\n".encode("utf-16")
    with pytest.raises(InputError, match="UTF-16"):
        read_all(data)


def test_detect_encoding_tolerates_a_sample_cut_mid_character():
    sample = "abc é".encode()[:-1]
    assert detect_encoding(sample) == ("utf-8", False)
    assert detect_encoding(sample, whole=True)[0] == "cp1252"


# --------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize("delim", [",", ";", "\t", "|"])
def test_delimiter_detection(delim):
    lines = [["id", "name", "price"], ["1", "a b", "3"], ["2", "c", "4"]]
    data = "".join(delim.join(r) + "\n" for r in lines).encode()
    dialect, header, rows, _, _ = read_all(data)
    assert dialect.delimiter == delim
    assert header == lines[0]
    assert rows == [(2, lines[1]), (3, lines[2])]


def test_delimiter_inside_quoted_header_names_does_not_count():
    assert detect_delimiter('"a,b,c";"d,e";f') == ";"


def test_forced_delimiter():
    dialect, header, rows, _, _ = read_all(b"a,b|c,d\n1,2|3,4\n", delimiter="|")
    assert dialect.delimiter == "|"
    assert header == ["a,b", "c,d"]
    assert rows == [(2, ["1,2", "3,4"])]


# --------------------------------------------------------------------------- quoting


def test_rfc4180_quoting_delimiters_quotes_and_newlines():
    data = (
        b"id,comment,other\r\n"
        b'1,"a, b","say ""hi"""\r\n'
        b'2,"line one\r\nline two\nline three",x\r\n'
        b"3,plain,y\r\n"
    )
    _, _, rows, _, _ = read_all(data)
    assert rows == [
        (2, ["1", "a, b", 'say "hi"']),
        (3, ["2", "line one\r\nline two\nline three", "x"]),
        (6, ["3", "plain", "y"]),
    ]


def test_exact_line_numbers_after_quoted_newlines_and_blank_lines():
    data = b'id,c\n1,"a\nb\nc"\n\n2,x\n"3","\n"\n4,y\n'
    _, _, rows, blank, _ = read_all(data)
    assert [line for line, _ in rows] == [2, 6, 7, 9]
    assert blank == 1


def test_bare_cr_inside_a_quoted_field_does_not_shift_line_numbers():
    data = b'id,c\n1,"a\rb\rc"\n2,x\n3,"p\r\nq"\r\n4,y\n'
    _, _, rows, _, _ = read_all(data)
    assert rows == [(2, ["1", "a\rb\rc"]), (3, ["2", "x"]), (4, ["3", "p\r\nq"]), (6, ["4", "y"])]


def test_header_with_a_quoted_newline_counts_its_lines():
    data = b'id,"multi\nline name"\n1,x\n2,y\n'
    _, header, rows, _, _ = read_all(data)
    assert header == ["id", "multi\nline name"]
    assert rows == [(3, ["1", "x"]), (4, ["2", "y"])]


def test_form_feed_and_unicode_line_separators_stay_inside_cells():
    data = "id,c\n1,a\x0cb\u2028c\x1dd\n2,x\n".encode()
    _, _, rows, _, _ = read_all(data)
    assert rows == [(2, ["1", "a\x0cb\u2028c\x1dd"]), (3, ["2", "x"])]


def test_last_row_without_final_newline():
    _, _, rows, _, _ = read_all(b"id,c\n1,x\n2,y")
    assert rows == [(2, ["1", "x"]), (3, ["2", "y"])]


# --------------------------------------------------------------------------- values


def test_values_stay_text():
    data = b"gtin,postal_code,id,sku,price\n1.35E+17,01000,00042,0170301,12.50\n"
    _, _, rows, _, _ = read_all(data)
    assert rows == [(2, ["1.35E+17", "01000", "00042", "0170301", "12.50"])]
    assert all(type(c) is str for c in rows[0][1])


def test_ragged_rows_are_kept_as_they_are_with_their_line():
    data = b"a,b,c\n1,2,3\n1,2\n1,2,3,4\n,,\n"
    _, _, rows, blank, _ = read_all(data)
    assert rows == [
        (2, ["1", "2", "3"]),
        (3, ["1", "2"]),
        (4, ["1", "2", "3", "4"]),
    ]
    # a row of empty cells (a spreadsheet's trailing ",,") is skipped like a blank line
    assert blank == 1


def test_blank_lines_are_counted_not_returned():
    data = b"a,b\n\n1,2\r\n\r\n\n3,4\n\n"
    _, _, rows, blank, _ = read_all(data)
    assert rows == [(3, ["1", "2"]), (6, ["3", "4"])]
    assert blank == 4


def test_undecodable_bytes_are_reported_by_line():
    parsed = parse_chunk(b"1,ok\n2,caf\xe9\n3,ok\n", 2, Dialect("utf-8", ","))
    assert [r.line for r in parsed.rows] == [2, 3, 4]
    assert parsed.bad_encoding == [3]


# --------------------------------------------------------------------------- unusable files


@pytest.mark.parametrize(
    "data",
    [b"", b"\n\n\r\n", b"   \n", b",,,\n1,2,3,4\n", b"\x00\x01\x02binary\x00" * 50],
    ids=["empty", "blank-lines", "spaces", "empty-header", "binary"],
)
def test_files_without_a_usable_header_are_input_errors(data):
    with pytest.raises(InputError):
        read_all(data)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        CsvFile(tmp_path / "nope.csv")


def test_header_only_file_has_no_rows():
    _, header, rows, blank, _ = read_all(b"id,name\n")
    assert header == ["id", "name"] and rows == [] and blank == 0


# --------------------------------------------------------------------------- sources


def test_gzip_is_read_transparently(tmp_path):
    raw = TEMPLATE.read_bytes()
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(raw))
    plain = read_all(raw)
    zipped = read_all(gz)
    assert zipped[0].gzip is True and plain[0].gzip is False
    assert zipped[1:] == plain[1:]


def test_truncated_gzip_is_an_input_error(tmp_path):
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(TEMPLATE.read_bytes())[:200])
    with pytest.raises(InputError):
        read_all(gz)


def test_a_callers_stream_is_read_and_left_open():
    """The CLI hands standard input over as a stream; the reader never closes a stream it
    did not open (and the library never touches sys.stdin itself)."""
    stream = io.BufferedReader(io.BytesIO(b"id,name\n1,x\n"))
    _, header, rows, _, _ = read_all(stream)
    assert header == ["id", "name"] and rows == [(2, ["1", "x"])]
    assert not stream.closed


def test_the_library_never_reads_stdin_or_writes_stdout():
    """stdin/stdout belong to the CLI alone (issue 9: a clean library/CLI boundary)."""
    root = Path(__file__).resolve().parent.parent / "csvbridge"
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "cli.py"
        and any(w in path.read_text() for w in ("sys.stdin", "sys.stdout", "sys.exit("))
    ]
    assert offenders == []


# --------------------------------------------------------------------------- chunks


def _messy_csv(seed: int, rows: int = 60) -> bytes:
    """A seeded CSV with every kind of quoting, blank lines and both line ends."""
    rnd = random.Random(seed)
    cells = ["plain", "a,b", 'q"uote', "multi\nline", "crlf\r\ninside", "", "é€", '"', "\n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=rnd.choice(["\n", "\r\n"]))
    w.writerow(["id", "a", "b"])
    for i in range(rows):
        w.writerow([f"r{i}", rnd.choice(cells), rnd.choice(cells)])
        if rnd.random() < 0.1:
            buf.write("\n")
    return buf.getvalue().encode()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [1, 7, 64, 200])
def test_tiny_chunks_give_the_same_rows_as_one_chunk(seed, chunk):
    data = _messy_csv(seed)
    whole = read_all(data)
    small = read_all(data, chunk=chunk)
    assert small == whole
    assert small[4] is True  # every chunk ended on a record boundary


def test_chunks_really_split_small_files_and_end_on_record_boundaries():
    data = _messy_csv(0, rows=40)
    with CsvFile(io.BytesIO(data)) as f:
        pieces = list(f.chunks(64))
    assert len(pieces) > 10
    for piece, _ in pieces:
        assert piece.count(b'"') % 2 == 0  # never cut inside a quoted field


def test_chunk_first_lines_are_source_lines():
    data = _messy_csv(3, rows=30)
    with CsvFile(io.BytesIO(data)) as f:
        offset = data.index(b"\n") + 1  # after the header
        for piece, first in f.chunks(50):
            assert data[offset : offset + len(piece)] == piece
            assert first == data[:offset].count(b"\n") + 1
            offset += len(piece)
    # each row's line number points at the source line that starts with its id
    lines = data.split(b"\n")
    _, _, rows, _, _ = read_all(data, chunk=50)
    for line, cells in rows:
        assert lines[line - 1].startswith(cells[0].encode())


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_chunk_offsets_point_at_the_chunk_in_the_file(tmp_path, bom):
    """Workers read a chunk at its offset in a plain file: it must be the same bytes."""
    data = bom + _messy_csv(5, rows=60)
    src = tmp_path / "in.csv"
    src.write_bytes(data)
    with CsvFile(src) as f:
        assert f.path == str(src)
        pieces = [(piece, f.chunk_offset) for piece, _ in f.chunks(80)]
    assert len(pieces) > 10
    for piece, offset in pieces:
        assert data[offset : offset + len(piece)] == piece
    assert pieces[-1][1] + len(pieces[-1][0]) == len(data)


def test_compressed_and_streamed_inputs_have_no_path_to_read_chunks_from(tmp_path):
    gz = tmp_path / "in.csv.gz"
    gz.write_bytes(gzip.compress(_messy_csv(1)))
    with CsvFile(gz) as f:
        assert f.path is None
    with CsvFile(io.BytesIO(_messy_csv(1))) as f:
        assert f.path is None


def test_stray_quote_is_detected_by_the_sentinel():
    # a quote inside an unquoted field flips the quote parity: a later quoted newline
    # looks like a record end to the chunker; the parser must notice the misalignment
    data = b'id,c\n1,5" screen\n2,x\n3,"multi\nline"\n4,y\n'
    whole = read_all(data)
    assert whole[2] == [
        (2, ["1", '5" screen']),
        (3, ["2", "x"]),
        (4, ["3", "multi\nline"]),
        (6, ["4", "y"]),
    ]
    assert whole[4] is True
    misaligned = [read_all(data, chunk=n)[4] for n in range(1, 40)]
    assert False in misaligned


def test_sequential_rows_match_the_chunked_reader_line_for_line():
    data = b'id,c\n1,"a\rb"\n2,5" tv\n\n3,"x\r\ny"\r\n4,"p\nq"\n5,z'
    with CsvFile(io.BytesIO(data)) as f:
        seq = [(r.line, r.cells) if r else None for r in f.rows()]
    assert seq == [
        (2, ["1", "a\rb"]),
        (3, ["2", '5" tv']),
        None,
        (5, ["3", "x\r\ny"]),
        (7, ["4", "p\nq"]),
        (9, ["5", "z"]),
    ]
    assert [r for r in seq if r] == read_all(data)[2]


def test_bare_cr_line_ends_are_a_clear_input_error(tmp_path):
    """Classic Mac OS line ends: a message saying so, not a csv module traceback."""
    src = tmp_path / "mac.csv"
    src.write_bytes(b"id,a\r1,x\r2,y\r")
    with pytest.raises(InputError, match="bare CR"):
        CsvFile(src)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5])
def test_quote_counting_matches_bytes_count(density):
    from csvbridge.read.boundary import _quotes

    rnd = random.Random(int(density * 100))
    data = bytes(34 if rnd.random() < density else 97 for _ in range(5000))
    for start, end in [(0, 5000), (17, 4000), (2500, 2501), (100, 50)]:
        assert _quotes(data, start, end) == data.count(b'"', start, end)


# --------------------------------------------------------------------------- header rules


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_header_with_a_lone_quote_is_read_by_the_body_rules(eol):
    # `Screen size (")`: a quote inside an unquoted cell is a character for the csv
    # module; it must not open a quote that swallows the whole file into the header
    data = f'id,Screen size ("),name{eol}1,15,a{eol}2,17,"b ""x"""{eol}3,19,c{eol}'.encode()
    dialect, header, rows, _, _ = read_all(data)
    assert header == ["id", 'Screen size (")', "name"]
    assert dialect.delimiter == ","
    assert rows == [(2, ["1", "15", "a"]), (3, ["2", "17", 'b "x"']), (4, ["3", "19", "c"])]


def test_header_with_a_lone_quote_in_a_file_longer_than_the_sample(tmp_path):
    # past the first MiB, today's reader started the rows mid-file
    body = "".join(f"{i},{i % 30},name {i}\n" for i in range(80_000)).encode()
    path = tmp_path / "screens.csv"
    path.write_bytes(b'id,Screen size ("),name\n' + body)
    assert path.stat().st_size > (1 << 20)
    _, header, rows, _, _ = read_all(path)
    assert header[1] == 'Screen size (")'
    assert len(rows) == 80_000 and rows[0] == (2, ["0", "0", "name 0"])
    assert rows[-1] == (80_001, ["79999", "19", "name 79999"])


def test_header_delimiter_is_the_one_the_csv_module_splits_most():
    # a ';' file whose header holds a lone quote and commas inside a quoted name
    data = b'id;"size, in ""inch""";Screen size (");n\n1;2;3;4\n'
    dialect, header, rows, _, _ = read_all(data)
    assert dialect.delimiter == ";"
    assert header == ["id", 'size, in "inch"', 'Screen size (")', "n"]
    assert rows == [(2, ["1", "2", "3", "4"])]


def test_header_opening_a_quote_that_never_closes_is_a_clear_error():
    with pytest.raises(InputError, match="header row opens a quote that never closes"):
        read_all(b'id,"name,price\n1,a,2\n2,b,3\n')
