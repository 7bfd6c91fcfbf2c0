"""What a file is and how it is written, decided once from its first bytes.

Three questions, in this order:

* `identify`: is it plainly something else (a workbook, a PDF, JSON, an HTML error
  page saved as ``.csv``)?  Then say so; "required column missing" or "binary" sends
  the user looking in the wrong place.
* `sniff_encoding`: UTF-8 when the bytes are UTF-8 — also when a few stray bytes are not
  (those rows are reported, the accents elsewhere are kept); otherwise the legacy code
  page charset-normalizer finds, with ties between code pages that decode the sample
  differently broken by what reads like text, and flagged as a guess.
* `find_header`: the header record, read by the csv module with exactly the rules of the
  body (a lone ``"`` inside an unquoted header cell is a character, not an open quote),
  and the delimiter that splits it into the most cells.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass

from csvbridge.errors import InputError

DELIMITERS = (",", ";", "\t", "|")
SENTINEL = "\ufdd0csvbridge-end-of-chunk"
# legacy code pages an export may come in, most common first (the tie-break order)
CODE_PAGES = ("cp1252", "cp1250", "cp1257", "iso8859_15", "iso8859_2")
# letters a wrong code page turns accents into, and that real names hardly ever hold
_RARE = frozenset("œŒŸŕŔĺĹăĂţŢđĐ")
# the accented letters of the languages these code pages serve: a word whose accents
# no single alphabet holds ("Dvoøák", "Èerný": Czech read as cp1252) is a misreading
_ALPHABETS = tuple(
    frozenset(a)
    for a in (
        "àâæçéèêëîïôœùûüÿ",  # French
        "äöüß",  # German
        "áéíñóúü",  # Spanish
        "àèéìíîòóùú",  # Italian
        "àáâãçéêíóôõú",  # Portuguese
        "éëïóöüáàè",  # Dutch
        "æøåéó",  # Danish, Norwegian
        "åäöéü",  # Swedish, Finnish
        "áðéíóúýþæö",  # Icelandic
        "ąćęłńóśźż",  # Polish
        "áčďéěíňóřšťúůýž",  # Czech
        "áäčďéíĺľňóôŕšťúýž",  # Slovak
        "áéíóöőúüű",  # Hungarian
        "čćđšž",  # Slovene, Croatian
        "ăâîșțşţ",  # Romanian
        "ąčęėįšųūž",  # Lithuanian
        "āčēģīķļņšūž",  # Latvian
        "äöõüšž",  # Estonian
    )
)
_NON_ASCII_WORDS = re.compile(rb'[^\x00-\x20,;|"]*[\x80-\xff][^\x00-\x20,;|"]*')
CHAOS_MARGIN = 0.15  # readings this close to the detector's best are all weighed
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office file (an .xls workbook or .doc)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"BZh", "a bzip2 archive (only gzip, .csv.gz, is read)"),
    (b"\xfd7zXZ\x00", "an xz archive (only gzip, .csv.gz, is read)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (only gzip, .csv.gz, is read)"),
    (b"Rar!\x1a\x07", "a RAR archive (only gzip, .csv.gz, is read)"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive (only gzip, .csv.gz, is read)"),
)
_JSON = re.compile(rb'\s*(\{\s*("|\})|\[\s*(\{|\[|"|-?\d|\]|true|false|null))')
_HTML = re.compile(
    rb"\s*(<!doctype\s+html|<html|<head|<body|<\?xml[^>]*>\s*<(!doctype\s+)?html)", re.I
)
_XML = re.compile(rb"\s*<\?xml", re.I)
_TITLE = re.compile(rb"<title[^>]*>(.{0,200}?)</title>", re.I | re.S)


# --------------------------------------------------------------------------- identify


def identify(sample: bytes) -> str | None:
    """What the file is when it is plainly not a CSV export (None: it may be one)."""
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return None  # UTF-16 said so itself: `sniff_encoding` gives the advice
    head = sample[3:] if sample.startswith(codecs.BOM_UTF8) else sample
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(head)
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if _utf16_without_bom(head):
        return "UTF-16 text"
    start = head[:4096]
    if _HTML.match(start):
        m = _TITLE.search(head[:65536])
        title = " ".join(m.group(1).decode("utf-8", "replace").split())[:80] if m else ""
        return (
            "an HTML page"
            + (f" titled {title!r}" if title else "")
            + (" (an error or login page saved instead of the export?)")
        )
    if _XML.match(start):
        return "an XML document"
    if _JSON.match(start):
        return "JSON (or NDJSON) data"
    return None


def _zip_kind(head: bytes) -> str:
    # the local file headers near the start name the archive's first members
    names = head[:65536]
    if b"xl/" in names or b"[Content_Types].xml" in names and b"xl" in names:
        return "an Excel workbook (xlsx)"
    if b"opendocument.spreadsheet" in names:
        return "an OpenDocument spreadsheet (ods)"
    if b"word/" in names:
        return "a Word document (docx)"
    return "a zip archive (only gzip, .csv.gz, is read)"


def _utf16_without_bom(head: bytes) -> bool:
    """ASCII text in UTF-16 puts a NUL in every other byte."""
    probe = head[:4096]
    if len(probe) < 8:
        return False
    even, odd = probe[0::2].count(0), probe[1::2].count(0)
    half = len(probe) // 2
    return max(even, odd) > 0.4 * half and min(even, odd) < 0.05 * half


def not_csv_error(what: str, file: str | None) -> InputError:
    advice = {
        "UTF-16 text": "re-export it as UTF-8",
        "an Excel workbook (xlsx)": "install csvbridge[pandas] (pandas + openpyxl) to read "
        "it, or save the sheet as 'CSV UTF-8'",
        "an OpenDocument spreadsheet (ods)": "open it and save the sheet as CSV (UTF-8)",
    }.get(what, "drop the CSV export itself")
    if what == "UTF-16 text":
        return InputError(f"the file is UTF-16 (without BOM); {advice}", file=file)
    return InputError(f"this is {what}, not a CSV: {advice}", file=file)


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True, slots=True)
class EncodingGuess:
    """The encoding chosen, and whether a person should double-check it."""

    encoding: str
    bom: bool = False
    confident: bool = True
    note: str | None = None  # why it is a guess, or what was odd; for the report


def sniff_encoding(
    sample: bytes, forced: str | None = None, *, whole: bool = False
) -> EncodingGuess:
    """UTF-8 (with or without BOM, tolerating a few bad bytes) else a detected code page;
    a forced encoding wins.  The sample may end mid-character unless it is `whole`."""
    if sample.startswith(codecs.BOM_UTF8):
        return EncodingGuess("utf-8", True)
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError("the file is UTF-16; re-export it as UTF-8 (or cp1252)")
    if forced:
        try:
            codecs.lookup(forced)
        except LookupError:
            raise InputError(f"unknown encoding {forced!r}") from None
        if '\n\r,;\t|"'.encode(forced, errors="replace") != b'\n\r,;\t|"':
            # delimiters, quotes and line ends are found as ASCII bytes
            raise InputError(
                f"encoding {forced!r} is not ASCII-compatible; re-export the file as UTF-8"
            )
        return EncodingGuess(forced)
    if b"\x00" in sample[:4096]:
        raise InputError("the file is binary (it contains NUL bytes), not a CSV export")
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(sample, final=whole)
    bad = text.count("\ufffd") - sample.count(b"\xef\xbf\xbd")
    if bad <= 0:
        return EncodingGuess("utf-8")
    good = sum(1 for ch in text if ch > "\x7f") - text.count("\ufffd")
    if good > bad:
        # a UTF-8 export with a few stray bytes: keep UTF-8; those rows are reported
        return EncodingGuess(
            "utf-8",
            note=f"{bad} byte sequence(s) in the first MiB are not valid UTF-8; the rows "
            "holding them are rejected (the rest of the file is UTF-8)",
        )
    return _legacy(sample)


def _legacy(sample: bytes) -> EncodingGuess:
    """The code page of a non-UTF-8 sample, by charset-normalizer on its non-ASCII words."""
    from charset_normalizer import from_bytes

    words = b" ".join(_NON_ASCII_WORDS.findall(sample))[: 256 << 10]
    matches = list(from_bytes(words, cp_isolation=list(CODE_PAGES))) or list(
        from_bytes(sample, cp_isolation=list(CODE_PAGES))
    )
    if not matches:
        enc = "cp1252" if _decodes(sample, "cp1252") else "latin-1"
        return EncodingGuess(enc, confident=False, note=_guess_note(enc, ()))
    best = min(m.chaos for m in matches)
    near = sorted(
        (m for m in matches if m.chaos <= best + CHAOS_MARGIN),
        key=lambda m: CODE_PAGES.index(m.encoding) if m.encoding in CODE_PAGES else 99,
    )
    readings: dict[str, tuple[str, float]] = {}  # code page -> (text, chaos)
    for m in near:
        text = words.decode(m.encoding, errors="replace")
        if all(text != t for t, _ in readings.values()):
            readings[_canonical(m.encoding, words, text)] = (text, m.chaos)
    # charset-normalizer's mess ratio misses what a wrong code page does to names
    # ("D¹browska", "Wiœniewski"): weigh the readings by their oddities first
    ranked = sorted(readings, key=lambda e: (_oddities(readings[e][0]), readings[e][1]))
    enc = ranked[0]
    if len(ranked) == 1:
        sure = readings[enc][1] <= 0.2
    else:
        mine, theirs = _oddities(readings[enc][0]), _oddities(readings[ranked[1]][0])
        sure = theirs - mine >= 3 and mine <= max(1, len(readings[enc][0]) // 200)
    if sure:
        return EncodingGuess(enc)
    return EncodingGuess(enc, confident=False, note=_guess_note(enc, ranked[1:]))


def _canonical(enc: str, words: bytes, text: str) -> str:
    """The most common code page that reads `words` as `enc` does (charset-normalizer
    reports one of a family of equivalent readings; name the usual one)."""
    for cp in CODE_PAGES:
        try:
            if words.decode(cp) == text:
                return cp
        except UnicodeDecodeError:
            continue
    return enc


def _guess_note(enc: str, others: object) -> str:
    alt = f" (it could also be {', '.join(others)})" if others else ""  # type: ignore[arg-type]
    return (
        f"the file is not UTF-8; its encoding was guessed as {enc}{alt}: if accented "
        "letters look wrong, re-export as UTF-8 or set the encoding (--encoding)"
    )


def _oddities(text: str) -> int:
    """Signs of a misreading: symbols inside words, rare letters, and words whose
    accented letters belong to no one alphabet."""
    n = 0
    for word in set(text.split()):
        accents = {c for c in word.lower() if c > "\x7f" and c.isalpha()}
        if accents and not any(accents <= a for a in _ALPHABETS):
            n += 1
    for i, ch in enumerate(text):
        if ch <= "\x7f":
            continue
        if ch in _RARE or ch == "\ufffd":
            n += 1
        elif not ch.isalpha():
            prev = text[i - 1] if i else " "
            nxt = text[i + 1] if i + 1 < len(text) else " "
            n += prev.isalpha() or nxt.isalpha()
    return n


def _decodes(data: bytes, enc: str) -> bool:
    try:
        data.decode(enc)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(
    sample: bytes, forced: str | None = None, *, whole: bool = False
) -> tuple[str, bool]:
    """(encoding, had_bom): `sniff_encoding` without its confidence."""
    guess = sniff_encoding(sample, forced, whole=whole)
    return guess.encoding, guess.bom


# --------------------------------------------------------------------------- header


@dataclass(frozen=True, slots=True)
class Header:
    cells: list[str]
    delimiter: str
    text: str  # the header record as written, its own line break excluded


class UnclosedHeader(InputError):
    """The header opens a quote that the file never closes."""


def _first_record(
    text: str, eof: bool, delimiter: str, quotechar: str
) -> tuple[list[str], str, bool]:
    """(cells, record text, closed) of the first record, parsed by the csv module."""
    taken: list[str] = []

    def feed():  # type: ignore[no-untyped-def]
        for line in io.StringIO(text, newline=""):
            if not eof and not line.endswith(("\n", "\r")):
                break  # a line the sample cut: not ours to judge yet
            taken.append(line)
            yield line
        yield SENTINEL + "\n"  # swallowed into a cell iff a quote is still open

    reader = csv.reader(feed(), delimiter=delimiter, quotechar=quotechar)
    cells = next(reader)
    used = reader.line_num
    closed = used <= len(taken) and cells != [SENTINEL]
    record = "".join(taken[:used]) if closed else ""
    if record.endswith("\r\n"):
        record = record[:-2]
    elif record.endswith(("\n", "\r")):
        record = record[:-1]
    return cells, record, closed


def find_header(
    text: str, *, eof: bool, delimiter: str | None = None, quotechar: str = '"'
) -> Header | None:
    """The header record of `text` (the decoded start of the file) and its delimiter;
    None when `text` ends before the header does (read more and ask again)."""
    found: list[tuple[list[str], str, bool, str]] = []
    for d in (delimiter,) if delimiter else DELIMITERS:
        cells, record, closed = _first_record(text, eof, d, quotechar)
        found.append((cells, record, closed, d))
    # the delimiter giving most cells (then one whose reading closes the record)
    cells, record, closed, d = max(
        found, key=lambda f: (len(f[0]), f[2], -DELIMITERS.index(f[3]) if f[3] in DELIMITERS else 0)
    )
    if not closed:
        if not eof:
            return None
        raise UnclosedHeader(
            "the header row opens a quote that never closes: the whole file would be "
            "read as its header; fix the quoting of the first line"
        )
    if delimiter is None and len(cells) <= 1:
        d = ","
    return Header(cells, d, record)


def detect_delimiter(header_text: str) -> str:
    """The candidate that splits the header record into the most cells (as the csv
    module reads it; ``,`` when none splits it)."""
    found = find_header(header_text, eof=True)
    return found.delimiter if found is not None else ","
