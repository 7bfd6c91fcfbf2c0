"""The fast lane (`runs.scan_chunk` + `Plan.build_shared`) against the ordinary path.

Files in the documented layout (conversion-level columns first, ``conversion_items.*``
last, no mapping) are cut into runs straight from the text.  That must never change a
byte of the output: every file here is converted twice, with `csvbridge.fold.worker.FAST_LANE`
on and off, and the NDJSON, the index, the rejects and the report must be identical.
The explicit cases also check concrete results, so both lanes being wrong the same way
would still fail.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import csvbridge.fold.worker as cv
import csvbridge.read.csvfile
from csvbridge.config import ConvertSettings
from csvbridge.errors import InputError
from csvbridge.fold import lane as runs
from csvbridge.fold.assemble import Plan
from csvbridge.fold.engine import convert, read_records
from csvbridge.fold.lane import Layout, Run, Shared, scan_chunk
from csvbridge.fold.worker import Spec
from csvbridge.read.csvfile import Dialect
from csvbridge.read.mapping import Mapping
from csvbridge.schema.models import TEMPLATE_HEADER

ITEM = "conversion_items."
FULL = list(TEMPLATE_HEADER)
SMALL = [
    "id", "user.user_email", "type", "status", "created", "currency", "comment",
    "original_amount", "billing_address.postal_code",
    "conversion_items.id", "conversion_items.original_quantity", "conversion_items.price",
    "conversion_items.product.id", "conversion_items.product.name",
    "conversion_items.product.tags",
]  # fmt: skip
# no conversion_items.id: the item id comes from the product id (and the memo is off)
NO_ITEM_ID = [h for h in SMALL if h != "conversion_items.id"]
# columns csvbridge ignores, at both levels (still inside the layout)
WITH_IGNORED = [*SMALL[:7], "Colour", *SMALL[7:], "conversion_items.colour"]
HEADERS = {"full": FULL, "small": SMALL, "no_item_id": NO_ITEM_ID, "ignored": WITH_IGNORED}
DRAWN_HEADERS = sorted(HEADERS)
REQUIRED = {
    "id", "user.user_email", "type", "status", "created", "currency",
    "conversion_items.original_quantity", "conversion_items.product.id",
}  # fmt: skip

# --------------------------------------------------------------------------- values

DATES = ["2019-04-29T13:47:47Z", "2018-01-01T20:00:00.000+01:00"]
NUMBERS = ["1", "2", "9.5", "0", "12"]
TEXTS = ["plain", "Paris", "Commanders Act", "x", "é ü 日本"]
# values that need quoting, or that stress line handling
TRICKY = [
    "a, b", "semi; colon", "tab\there", "pipe|here", 'say "hi"', '"quoted"', '"',
    "two\nlines", "crlf\r\nhere", "\nleading newline", "trailing newline\n",
    "line\u2028sep", "form\x0cfeed", "nel\x85here", " lead", "trail ", ",", ",,,",
]  # fmt: skip
BARE_CR = "bare\rcr"  # makes scan_chunk hand its chunk to the csv module


def good_values(name: str) -> list[str]:
    """Valid values for a column (blank included where the column is optional)."""
    base = name.rsplit(".", 1)[-1]
    blank = [] if name in REQUIRED else [""]
    if "email" in base:
        return ["u@example.com", "v@example.com"]
    if name == "consent_categories":
        return [*blank, "1", "3"]
    if name == "type":
        return ["online", "offline"]
    if name == "status":
        return ["pending", "shipped", "in_progress"]
    if base in ("created", "updated", "availability_date", "expiration_date"):
        return [*blank, *DATES]
    if base in ("acknowledged", "original_item"):
        return [*blank, "true", "false", "1"]
    if base.endswith("link"):
        return [*blank, "https://example.com/p", "http://example.com/?a=1"]
    if base == "currency":
        return [*blank, "EUR", "USD"]
    if name == "payment_method":
        return [*blank, "card", "cod"]
    if base == "condition":
        return [*blank, "new", "used"]
    if base == "availability":
        return [*blank, "in_stock", "pre_order"]
    if base in ("tags", "colors"):
        return [*blank, "a", "red"]
    if base in ("gtin", "mpn", "postal_code"):
        return [*blank, "3017620422003", "01000", "75009"]
    if base == "iso_country_code":
        return [*blank, "FR", "DE"]
    if any(w in base for w in ("quantity", "amount", "price", "itude", "width", "length")):
        return [*blank, *NUMBERS]
    if base in ("height", "weight"):
        return [*blank, *NUMBERS]
    return [*blank, *TEXTS]


def bad_values(name: str) -> list[str]:
    """Values the ordinary path rejects or warns about."""
    base = name.rsplit(".", 1)[-1]
    if name == "status":
        return ["bogus", "Pending", ""]
    if base in ("created", "updated", "availability_date", "expiration_date"):
        return ["2019-04-29", "yesterday", "2019-13-45T00:00:00Z"]
    if base == "currency":
        return ["euro", "E"]
    if "email" in base:
        return ["not-an-email", ""]
    if base in ("gtin", "mpn", "postal_code", "id"):
        return ["1.35E+17", "1E+5", ""]
    if base in ("acknowledged", "original_item", "consent_categories", "type", "payment_method"):
        return ["maybe", ""]
    if any(w in base for w in ("quantity", "amount", "price", "itude", "width", "length")):
        return ["abc", "9,5", "-1", "1e400", "NaN"]
    return ["x" * 600, ""]


class Values:
    """Cell values for one generated file: mostly valid, sometimes tricky or invalid."""

    def __init__(self, rnd: random.Random, p_tricky: float, p_bad: float, bare_cr: bool):
        self.rnd, self.p_tricky, self.p_bad, self.bare_cr = rnd, p_tricky, p_bad, bare_cr

    def __call__(self, name: str) -> str:
        rnd = self.rnd
        x = rnd.random()
        if x < self.p_bad:
            return rnd.choice(bad_values(name))
        if x < self.p_bad + self.p_tricky:
            if self.bare_cr and rnd.random() < 0.1:
                return BARE_CR
            return rnd.choice(TRICKY)
        return rnd.choice(good_values(name))


# --------------------------------------------------------------------------- files

PLAIN = {"head": "same", "item": "catalog", "shape": "ok", "before": None}
ODD_ROW = st.fixed_dictionaries(
    {
        # conversion-level text: repeated (usual), one value differs, or some are blank
        "head": st.sampled_from(["same"] * 3 + ["conflict", "blank"]),
        # item: from the file's catalog (memo hits), a duplicate or missing id, or a
        # catalog item with one cell changed
        "item": st.sampled_from(["catalog"] * 3 + ["dup", "noid", "tweak", "rename"]),
        "shape": st.sampled_from(["ok"] * 4 + ["plus", "minus", "stray", "quote_all"]),
        "before": st.sampled_from([None] * 4 + ["blank", "commas", "space"]),
    }
)
ROW = st.one_of(st.just(PLAIN), st.just(PLAIN), st.just(PLAIN), ODD_ROW)
CONVERSION = st.fixed_dictionaries(
    {
        "id": st.one_of(
            st.just("new"), st.just("new"), st.sampled_from(["new", "empty", "again", "odd"])
        ),
        "rows": st.lists(ROW, min_size=1, max_size=5),
    }
)
FILE = st.fixed_dictionaries(
    {
        "conversions": st.lists(CONVERSION, min_size=1, max_size=10),
        "header": st.sampled_from(DRAWN_HEADERS),
        "shuffle": st.booleans(),
        "delimiter": st.sampled_from([",", ",", ",", ";", "\t", "|"]),
        "eol": st.sampled_from(["\n", "\r\n", "mixed"]),
        "end": st.sampled_from(["eol", "none", "cr"]),  # how the last line ends
        "p_tricky": st.sampled_from([0.0, 0.0, 0.02, 0.1]),
        "p_bad": st.sampled_from([0.0, 0.02, 0.1]),
        "bare_cr": st.booleans(),
        "seed": st.integers(0, 2**32 - 1),
    }
)


def header_of(f: dict[str, Any], rnd: random.Random) -> list[str]:
    header = HEADERS[f["header"]]
    head = [h for h in header if not h.startswith(ITEM)]
    items = [h for h in header if h.startswith(ITEM)]
    if f["shuffle"]:  # any order inside each level: the layout only needs items last
        rnd.shuffle(head)
        rnd.shuffle(items)
    return head + items


def make_file(f: dict[str, Any]) -> bytes:
    """A CSV export in the documented layout, with the irregularities `f` asks for."""
    rnd = random.Random(f["seed"])
    header = header_of(f, rnd)
    per_cell = 15 / len(header)  # about as many odd cells per row, whatever the header
    value = Values(rnd, f["p_tricky"] * per_cell, f["p_bad"] * per_cell, f["bare_cr"])
    d = f["delimiter"]

    def nl() -> str:
        return rnd.choice(["\n", "\r\n"]) if f["eol"] == "mixed" else f["eol"]

    head_cols = [i for i, h in enumerate(header) if not h.startswith(ITEM)]
    item_cols = [i for i, h in enumerate(header) if h.startswith(ITEM)]
    id_col = header.index("id")
    item_id_col = header.index(ITEM + "id") if ITEM + "id" in header else None
    product_col = header.index(ITEM + "product.id")
    texty = [i for i, h in enumerate(header) if h in ("comment", ITEM + "product.name")]
    # conversion-level templates and an item catalog shared by the whole file: the same
    # conversion-level text and the same item text come back again and again
    templates = [{i: value(header[i]) for i in head_cols} for _ in range(rnd.randint(1, 3))]

    def new_item(k: int) -> dict[int, str]:
        item = {i: value(header[i]) for i in item_cols}
        item[product_col] = f"p{k}" if rnd.random() >= value.p_bad else rnd.choice(bad_values("id"))
        if item_id_col is not None:
            item[item_id_col] = f"i{k}" if rnd.random() >= value.p_bad else f"{k}E+5"
        return item

    catalog = [new_item(k) for k in range(rnd.randint(2, 8))]

    out = io.StringIO()
    csv.writer(out, delimiter=d, lineterminator=nl()).writerow(header)
    used_ids: list[str] = []
    for n, conv in enumerate(f["conversions"]):
        kind = conv["id"]
        if kind == "again" and used_ids:
            cid = rnd.choice(used_ids)  # an id that comes back: an ungrouped file
        elif kind == "empty":
            cid = ""
        elif kind == "odd":
            cid = rnd.choice([f"c {n}", f"c{d}{n}", f'c"{n}', f"ç{n}", f"c{n}\nx"])
        else:
            cid = f"c{n}"
        if cid:
            used_ids.append(cid)
        head = dict(rnd.choice(templates))
        for i in head_cols:  # each conversion varies its template a little
            if rnd.random() < 0.2:
                head[i] = value(header[i])
        head[id_col] = cid
        seen_items: list[str] = []
        unused = list(catalog)
        for r in conv["rows"]:
            cells = [""] * len(header)
            for i in head_cols:
                cells[i] = head[i]
            others = [i for i in head_cols if i != id_col]
            if r["head"] == "conflict":
                i = rnd.choice(others)
                new = value(header[i])
                cells[i] = new if new != cells[i] else new + "x"
            elif r["head"] == "blank":
                for i in rnd.sample(others, rnd.randint(1, len(others))):
                    cells[i] = ""
            if unused:  # an item of the catalog, once per conversion
                item = dict(unused.pop(rnd.randrange(len(unused))))
            else:
                catalog.append(new_item(len(catalog)))
                item = dict(catalog[-1])
            if r["item"] == "tweak":
                i = rnd.choice(item_cols)
                item[i] = value(header[i])
            for i in item_cols:
                cells[i] = item[i]
            if item_id_col is not None:
                if r["item"] == "dup" and seen_items:
                    cells[item_id_col] = rnd.choice(seen_items)
                elif r["item"] == "noid":
                    cells[item_id_col] = ""
                elif r["item"] == "rename":  # same item text, another id: a memo hit
                    cells[item_id_col] = f"{cells[item_id_col]}-{n}"
                seen_items.append(cells[item_id_col])
            stray = r["shape"] == "stray" and texty
            if stray:
                cells[rnd.choice(texty)] = "STRAYMARK"
            if r["shape"] == "plus":
                cells.insert(rnd.randint(0, len(cells)), "extra")
            elif r["shape"] == "minus":
                del cells[rnd.randrange(len(cells))]
            eol = nl()
            if r["before"] == "blank":
                out.write(eol)
            elif r["before"] == "commas":
                out.write(d * rnd.randint(0, len(header) + 1) + eol)
            elif r["before"] == "space":
                out.write(" " + eol)
            one = io.StringIO()
            quoting = csv.QUOTE_ALL if r["shape"] == "quote_all" else csv.QUOTE_MINIMAL
            csv.writer(one, delimiter=d, lineterminator=eol, quoting=quoting).writerow(cells)
            text = one.getvalue()
            if stray:  # a quote inside an unquoted field, as careless exporters write it
                text = text.replace("STRAYMARK", '5" screen')
            out.write(text)
    text = out.getvalue()
    if f["end"] != "eol":  # the last line without its line end, or with a bare CR
        text = text.removesuffix("\n").removesuffix("\r") + ("\r" if f["end"] == "cr" else "")
    return text.encode("utf-8")


# --------------------------------------------------------------------------- both lanes


@contextmanager
def lane(fast: bool) -> Iterator[None]:
    old = cv.FAST_LANE
    cv.FAST_LANE = fast
    try:
        yield
    finally:
        cv.FAST_LANE = old


STATS: Counter[str] = Counter()


@contextmanager
def counting() -> Iterator[Counter[str]]:
    """Count what the fast lane does: chunks read or handed back, build_shared calls."""
    read, build_shared = cv.records, Plan.build_shared

    def counting_records(text: str, first_line: int, layout: Layout) -> runs.Records | None:
        res = read(text, first_line, layout)
        STATS["fallback" if res is None else "scanned"] += 1
        return res

    def counting_build_shared(self: Plan, *args: Any) -> Any:
        STATS["build_shared"] += 1
        return build_shared(self, *args)

    STATS.clear()
    cv.records = counting_records  # type: ignore[assignment]
    Plan.build_shared = counting_build_shared  # type: ignore[method-assign]
    try:
        yield STATS
    finally:
        cv.records = read  # type: ignore[assignment]
        Plan.build_shared = build_shared  # type: ignore[method-assign]


def outcome(src: Path, work: Path, fast: bool, chunk_bytes: int, **s: Any) -> dict[str, Any]:
    """Everything a conversion leaves behind, minus what legitimately differs."""
    with lane(fast):
        try:
            done = convert(
                src, work, settings=ConvertSettings(workers=1, **s), chunk_bytes=chunk_bytes
            )
        except InputError as exc:  # a file refused: both lanes must refuse it alike
            return {"raised": (type(exc).__name__, str(exc))}
    report = done.report.as_dict()
    for volatile in ("file", "outputs", "duration_seconds"):
        report.pop(volatile)
    return {
        "ndjson": done.ndjson.read_bytes(),
        "index": done.index.read_bytes(),
        "rejected": done.rejected.read_bytes() if done.rejected.exists() else None,
        "report": report,
        "problems": [astuple(p) for p in done.report.problems.raw],  # in recorded order
        "accounted": done.report.accounted,
    }


def both_lanes(data: bytes, chunk_bytes: int, **s: Any) -> dict[str, Any]:
    """Convert `data` with the fast lane on and off; assert identical results."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        src.write_bytes(data)
        fast = outcome(src, Path(tmp) / "fast", True, chunk_bytes, **s)
        slow = outcome(src, Path(tmp) / "slow", False, chunk_bytes, **s)
    for key in slow:
        assert fast.get(key) == slow[key], (key, chunk_bytes, s)
    assert fast == slow
    return fast


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    f=FILE,
    chunk_bytes=st.integers(150, 3000),
    conflict=st.sampled_from(["reject", "reject", "first", "last"]),
    strict=st.booleans(),
)
def test_both_lanes_give_the_same_bytes(f, chunk_bytes, conflict, strict):
    data = make_file(f)
    with counting() as stats:
        # small chunks: many boundaries, conversions stitched across them; one chunk:
        # most conversions are inside a chunk, where build_shared builds them
        res = both_lanes(data, chunk_bytes, conflict=conflict, strict=strict)
        whole = both_lanes(data, 1 << 20, conflict=conflict, strict=strict)
    event(f"build_shared {'used' if stats['build_shared'] else 'not used'}")
    event(f"fast lane {'handed some chunk back' if stats['fallback'] else 'took every chunk'}")
    if "raised" in res:
        event(f"raised {res['raised'][0]}")
        return
    # the chunk size never changes the objects either
    assert (res["ndjson"], res["index"]) == (whole["ndjson"], whole["index"])
    assert res["accounted"]
    warnings = {w["code"] for w in res["report"]["warnings"]}
    event("ungrouped" if "UNGROUPED_FILE" in warnings else "grouped")
    valid = res["report"]["conversions"]["valid"]
    event("no valid conversion" if not valid else "some valid" if res["rejected"] else "all valid")


def test_the_generator_exercises_the_fast_lane():
    """A plain generated file goes through Shared runs, built by build_shared."""
    f = {
        "conversions": [{"id": "new", "rows": [PLAIN] * 4} for _ in range(6)],
        "header": "small",
        "shuffle": False,
        "delimiter": ",",
        "eol": "\n",
        "end": "eol",
        "p_tricky": 0.0,
        "p_bad": 0.0,
        "bare_cr": False,
        "seed": 7,
    }
    with counting() as stats:
        res = both_lanes(make_file(f), 1 << 20)
    # one chunk: every conversion but the first and the last is built by build_shared
    assert stats["build_shared"] >= 4 and not stats["fallback"]
    assert res["report"]["conversions"]["valid"] == 6 and not res["rejected"]


# --------------------------------------------------------------------------- explicit cases

HEADER = [
    "id", "user.email", "type", "status", "created", "currency", "comment",
    "conversion_items.id", "conversion_items.original_quantity", "conversion_items.price",
    "conversion_items.product.id", "conversion_items.product.name",
]  # fmt: skip
CHUNKS = (64, 120, 200, 333, 1 << 20)


def cells(cid: str, item: int, *, comment: str = "", name: str = "") -> list[str]:
    return [cid, "u@example.com", "online", "pending", "2019-04-29T13:47:47Z", "EUR", comment,
            f"i{item}", "1", "9.5", f"p{item}", name or f"Product {item}"]  # fmt: skip


def line(row: list[str], eol: str = "\n") -> str:
    one = io.StringIO()
    csv.writer(one, lineterminator=eol).writerow(row)
    return one.getvalue()


def agree(data: bytes, **s: Any) -> dict[str, Any]:
    """Both lanes agree at every chunk size (and with each other across sizes)."""
    results = [both_lanes(data, chunk, **s) for chunk in CHUNKS]
    for r in results[1:]:
        assert r["ndjson"] == results[0]["ndjson"]
        assert r["index"] == results[0]["index"]
        assert r["rejected"] == results[0]["rejected"]
    return results[-1]


def index_of(res: dict[str, Any]) -> list[tuple[str, list[int]]]:
    out = []
    for entry in res["index"].decode().splitlines():
        cid, _, lines = entry.partition("\t")
        out.append((cid, [int(n) for n in lines.split(",")]))
    return out


def objects(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in res["ndjson"].splitlines()]


def test_quoted_multiline_values_in_the_middle_of_conversions():
    data = (
        line(HEADER)
        # a: every row repeats a two-line comment (lines 2-3, 4-5, 6-7)
        + "".join(line(cells("a", k, comment="first\nsecond")) for k in (1, 2, 3))
        # b: plain rows around an item whose name spans two lines (9-10)
        + line(cells("b", 1))
        + line(cells("b", 2, name="two\nlines"))
        + line(cells("b", 3))
        # c: the comment is on the middle row only: blank agrees with anything
        + line(cells("c", 1))
        + line(cells("c", 2, comment="only\nhere"))
        + line(cells("c", 3))
        # d: two different comments, one of them multi-line: a conflict
        + line(cells("d", 1, comment="one"))
        + line(cells("d", 2, comment="other\nvalue"))
        + line(cells("e", 1))
    ).encode()
    res = agree(data)
    assert index_of(res) == [
        ("a", [2, 4, 6]),
        ("b", [8, 9, 11]),
        ("c", [12, 13, 15]),
        ("e", [19]),
    ]
    objs = objects(res)
    assert objs[0]["comment"] == "first\nsecond"
    assert [i["product"]["name"] for i in objs[1]["conversion_items"]] == [
        "Product 1",
        "two\nlines",
        "Product 3",
    ]
    assert objs[2]["comment"] == "only\nhere" and len(objs[2]["conversion_items"]) == 3
    assert res["rejected"].decode().startswith("16,17\tCONFLICTING_VALUES (comment): ")
    (err,) = res["report"]["errors"]
    assert err["meta"]["line_numbers"] == [16, 17] and err["meta"]["ids"] == ["d"]
    assert res["report"]["rows"]["read"] == 12 and res["accounted"]


def test_stray_quote_in_an_unquoted_field():
    data = (
        line(HEADER)
        + line(cells("a", 1))
        + line(cells("a", 2, name="STRAY")).replace("STRAY", '5" screen')
        + line(cells("a", 3))
        + line(cells("b", 1))
        + line(cells("b", 2, comment="x\ny"))  # 6-7; b1's blank comment agrees with it
        + line(cells("c", 1, name="STRAY")).replace("STRAY", 'say "hi"')
        + line(cells("d", 1))
    ).encode()
    assert b'5" screen' in data and b'"5' not in data
    res = agree(data)
    assert index_of(res) == [("a", [2, 3, 4]), ("b", [5, 6]), ("c", [8]), ("d", [9])]
    objs = objects(res)
    assert objs[0]["conversion_items"][1]["product"]["name"] == '5" screen'
    assert objs[1]["comment"] == "x\ny"
    assert objs[2]["conversion_items"][0]["product"]["name"] == 'say "hi"'
    assert res["report"]["conversions"] == {
        "valid": 4,
        "rejected": 0,
        "shipped": 0,
        "rejected_by_api": 0,
        "not_shipped": 0,
    }


def test_crlf_file_with_a_quoted_crlf_inside_a_value():
    eol = "\r\n"
    text = (
        line(HEADER, eol)
        + line(cells("a", 1, comment="crlf\r\nhere"), eol)  # lines 2-3
        + line(cells("a", 2, comment="crlf\r\nhere"), eol)  # lines 4-5
        + line(cells("b", 1), eol)  # 6
        + eol  # 7: blank
        + line(cells("b", 2), eol)  # 8
        + ",,,,,,,,,,,\r\n"  # 9: a spreadsheet's empty row
        + line(cells("b", 3, name="a\r\nb"), eol)  # 10-11
        + line(cells("c", 1), eol)[: -len(eol)]  # 12, no line end at all
    )
    res = agree(text.encode())
    assert index_of(res) == [("a", [2, 4]), ("b", [6, 8, 10]), ("c", [12])]
    objs = objects(res)
    assert objs[0]["comment"] == "crlf\r\nhere"
    assert objs[1]["conversion_items"][2]["product"]["name"] == "a\r\nb"
    assert "\r" not in objs[2]["conversion_items"][0]["product"]["name"]
    rows = res["report"]["rows"]
    assert (rows["read"], rows["skipped"], rows["converted"]) == (8, 2, 6)


def test_bare_cr_line_end_and_bare_cr_inside_a_value():
    data = (
        line(HEADER)
        + line(cells("a", 1), "\r")  # ends with a bare CR: still LF-line 2
        + line(cells("a", 2))  # LF-line 2 as well
        + line(cells("b", 1, comment="CR")).replace("CR", '"bare\rcr"')  # 3
        + line(cells("b", 2, comment="CR")).replace("CR", '"bare\rcr"')  # 4
        + line(cells("c", 1))  # 5
        + line(cells("c", 2))  # 6
    ).encode()
    res = agree(data)
    # line numbers count LF, as the chunker and editors do
    assert index_of(res) == [("a", [2, 2]), ("b", [3, 4]), ("c", [5, 6])]
    objs = objects(res)
    assert [i["id"] for i in objs[0]["conversion_items"]] == ["i1", "i2"]
    assert objs[1]["comment"] == "bare\rcr"
    assert res["report"]["rows"]["read"] == 6 and not res["rejected"]


def test_ungrouped_rejects_that_share_a_line_number_through_bare_crs():
    """Regression (issue 8, item 0): records split by bare CRs share an LF line number;
    the regroup merge compared the rejected objects themselves and crashed."""
    bad = [*cells("x", 1)]
    bad[3] = "bogus"  # not a documented status: rejected
    shared = "".join(line([f"r{k}", *bad[1:]], "\r") for k in range(12))
    data = (
        line(HEADER)
        + line(cells("a", 1))  # 2
        + line(cells("b", 1))  # 3
        + line(cells("a", 2))  # 4: a again: the file is not grouped
        + shared
        + line(cells("c", 1))  # 5 (the bare CRs above do not count as lines)
    ).encode()
    res = agree(data)
    assert res["report"]["conversions"]["rejected"] == 12
    assert res["report"]["conversions"]["valid"] == 3
    assert [cid for cid, _ in index_of(res)] == ["a", "b", "c"]
    assert res["accounted"]


def test_conflicts_blanks_ragged_rows_and_memo_hits():
    """Rows of one id that differ, blank later rows, ragged rows, and items whose text
    repeats across conversions (the item memo) or whose id repeats inside one."""
    ragged = line(cells("d", 1))[:-1] + ",extra\n"
    text = (
        line(HEADER)
        + line(cells("a", 1))  # 2
        + line(cells("a", 2))  # 3
        + line(cells("b", 1))  # 4: item text as in a (a memo hit)
        + line(cells("b", 2)[:3] + [""] * 4 + cells("b", 2)[7:])  # 5: blank head values
        + line(cells("b", 1))  # 6: item id i1 again: duplicate
        + line(cells("c", 1))  # 7
        + line([*cells("c", 2)[:3], "shipped", *cells("c", 2)[4:]])  # 8: status conflict
        + ragged  # 9
        + line(cells("", 1))  # 10: no id
        + line(cells("e", 1))  # 11
        + line(cells("a", 3))  # 12: a comes back: the file is regrouped
    )
    data = text.encode()
    res = agree(data)
    assert index_of(res) == [("a", [2, 3, 12]), ("e", [11])]
    rejected = [r.split("\t")[0] for r in res["rejected"].decode().splitlines()]
    assert rejected == ["4,5,6", "7,8", "9", "10"]
    codes = {e["code"]: e["meta"]["line_numbers"] for e in res["report"]["errors"]}
    assert codes == {
        "DUPLICATE_ITEM_ID": [4, 6],
        "CONFLICTING_VALUES": [7, 8],
        "ROW_LENGTH_MISMATCH": [9],
        "MISSING_REQUIRED_PROPERTY": [10],
    }
    assert [w["code"] for w in res["report"]["warnings"]] == ["UNGROUPED_FILE"]
    first = agree(data, conflict="first")
    assert ("c", [7, 8]) in index_of(first)
    c = next(o for o in objects(first) if o["id"] == "c")
    assert c["status"] == "pending"


def test_ignored_item_column_before_the_item_id():
    """The item memo splits the id off the raw item text: with an ignored item column
    first, that is not the id (the fast lane once wrote ``"id":"red"`` for a memo hit)."""
    header = [*HEADER[:6], "conversion_items.colour", "conversion_items.id",
              "conversion_items.original_quantity", "conversion_items.product.id"]  # fmt: skip
    row = ["u@example.com", "online", "pending", "2019-04-29T13:47:47Z", "EUR"]
    data = line(header) + "".join(line([c, *row, "red", "i1", "1", "p1"]) for c in "abcd")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        src.write_bytes(data.encode())
        for fast in (False, True):
            res = outcome(src, Path(tmp) / f"w{fast}", fast, 1 << 20)
            ids = [o["conversion_items"][0]["id"] for o in objects(res)]
            assert ids == ["i1", "i1", "i1", "i1"], ("fast lane" if fast else "ordinary", ids)


def test_item_id_from_the_product_id():
    """Without conversion_items.id the item id is the product id, in both lanes (the
    fast lane once left it out)."""
    header = [h for h in HEADER if h != "conversion_items.id"]
    text = line(header) + "".join(
        line([c for i, c in enumerate(cells(cid, 1)) if i != 7]) for cid in "abc"
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        src.write_text(text, encoding="utf-8")
        for fast in (False, True):
            res = outcome(src, Path(tmp) / f"w{fast}", fast, 1 << 20)
            ids = [o["conversion_items"][0].get("id") for o in objects(res)]
            assert ids == ["p1", "p1", "p1"], ("fast lane" if fast else "ordinary", ids)


def test_id_less_row_at_a_chunk_boundary_hides_an_ungrouped_id():
    """A chunk starting with an id-less row, then the id carried from the previous chunk:
    that id comes back after another row, so the file is not grouped (it was once taken
    for a continuation and written twice)."""
    a, b, none, b2 = (line(cells(c, k)) for c, k in [("a", 1), ("b", 1), ("", 2), ("b", 3)])
    data = (line(HEADER) + a + b + none + b2).encode()
    chunk = len(a) + len(b)  # chunk 1: lines 2-3 (a, b); chunk 2: lines 4-5 ("", b)
    res = both_lanes(data, chunk)
    assert index_of(res) == [("a", [2]), ("b", [3, 5])]  # b is written once, with its 2 rows
    assert [w["code"] for w in res["report"]["warnings"]] == ["UNGROUPED_FILE"]


def test_too_many_items_and_bytes_that_are_not_utf8(monkeypatch):
    monkeypatch.setattr(csvbridge.read.csvfile, "SAMPLE_BYTES", 512)  # detection sees UTF-8 only
    data = (
        line(HEADER)
        + "".join(line(cells("a", k)) for k in range(151))  # 2-152: one item too many
        + "".join(line(cells("b", k)) for k in range(3))  # 153-155
        + line(cells("c", 1, name="CAFE"))  # 156
        + line(cells("c", 2))  # 157
        + line(cells("d", 1))  # 158
    ).encode()
    res = agree(data.replace(b"CAFE", b"Caf\xe9"))
    assert index_of(res) == [("b", [153, 154, 155]), ("d", [158])]
    codes = {e["code"]: e["meta"]["line_numbers"] for e in res["report"]["errors"]}
    assert codes == {"TOO_MANY_ITEMS": list(range(2, 153)), "ENCODING_ERROR": [156]}


# --------------------------------------------------------------------------- lane choice


@pytest.fixture
def worker(monkeypatch):
    """init_worker, with the process's worker state restored afterwards."""
    monkeypatch.setattr(cv, "_STATE", None)

    def init(spec: Spec) -> Layout | None:
        return cv.init_worker(spec).layout

    return init


def test_the_lane_is_chosen_for_the_documented_layout(worker, monkeypatch):
    dialect = Dialect("utf-8", ",")
    layout = worker(Spec(FULL, dialect))
    assert isinstance(layout, Layout)
    n_item = sum(h.startswith(ITEM) for h in FULL)
    assert (layout.n_head, layout.n_item, layout.id_col) == (len(FULL) - n_item, n_item, 0)
    assert isinstance(worker(Spec(HEADER, Dialect("utf-8", ";"))), Layout)
    # not when a mapping rewrites the rows, not for products, not when switched off
    identity = Mapping.model_validate({"fields": {h: h for h in SMALL}})
    assert worker(Spec(SMALL, dialect, mapping=identity)) is None
    assert worker(Spec(SMALL, dialect, "products", products_from_conversions=True)) is None
    assert worker(Spec(["id", "name"], dialect, kind="products")) is None
    # nor when a conversion-level column comes after the item columns
    late = [h for h in SMALL if h != "comment"] + ["comment"]
    assert worker(Spec(late, dialect)) is None
    monkeypatch.setattr(cv, "FAST_LANE", False)
    assert worker(Spec(FULL, dialect)) is None


def test_scan_chunk_cuts_plain_rows_into_shared_runs():
    plan = Plan(HEADER, HEADER)
    layout = Layout.of(HEADER, plan.id_col, ",", '"')
    assert layout is not None and (layout.n_head, layout.n_item) == (7, 5)
    text = "".join(line(cells(c, k)) for c, k in [("a", 1), ("a", 2), ("b", 1)])
    scanned = scan_chunk(text + "\n,,,\n" + line(cells("b", 2)), 2, layout)
    assert scanned is not None and (scanned.rows, scanned.blank) == (4, 2)
    assert all(isinstance(r, Shared) for r in scanned.runs)
    assert [(r.id, [n for n, _ in r.items]) for r in scanned.runs] == [
        ("a", [2, 3]),
        ("b", [4, 7]),
    ]
    assert scanned.runs[0].items[1][1] == "i2,1,9.5,p2,Product 2"
    # a quoted row makes its run an ordinary one; other runs stay shared
    quoted = text + line(cells("b", 2, name="x, y"))
    scanned = scan_chunk(quoted, 2, layout)
    assert scanned is not None
    assert [type(r) for r in scanned.runs] == [Shared, Run]
    assert [row.line for row in scanned.runs[1].rows] == [4, 5]
    # the csv module takes chunks with a bare CR, or an unclosed quote
    assert scan_chunk(text.replace("\n", "\r", 1), 2, layout) is None
    assert scan_chunk(text + 'c,"open\n', 2, layout) is None


def test_convert_builds_shared_runs_only_in_the_fast_lane(tmp_path, monkeypatch):
    calls: Counter[bool] = Counter()
    real = Plan.build_shared

    def spy(self, *args, **kw):
        calls[cv.FAST_LANE] += 1
        return real(self, *args, **kw)

    monkeypatch.setattr(Plan, "build_shared", spy)
    src = tmp_path / "in.csv"
    rows = [cells(f"c{n}", k) for n in range(20) for k in range(3)]
    src.write_text(line(HEADER) + "".join(line(r) for r in rows), encoding="utf-8")
    got = {}
    for fast in (True, False):
        monkeypatch.setattr(cv, "FAST_LANE", fast)
        done = convert(src, tmp_path / f"w{fast}", settings=ConvertSettings(workers=1))
        got[fast] = (done.ndjson.read_bytes(), list(read_records(done.ndjson, done.index)))
    assert got[True] == got[False] and len(got[True][1]) == 20
    assert calls[True] >= 18 and calls[False] == 0
    # with a mapping the lane is off, even though the header is the documented one
    monkeypatch.setattr(cv, "FAST_LANE", True)
    calls.clear()
    identity = Mapping.model_validate({"fields": {h: h for h in HEADER}})
    done = convert(src, tmp_path / "mapped", settings=ConvertSettings(workers=1), mapping=identity)
    assert done.report.objects_valid == 20 and not calls
