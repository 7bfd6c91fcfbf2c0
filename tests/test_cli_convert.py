"""`csvbridge convert` end to end: real subprocesses, files, stdin/stdout, exit codes."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from csvbridge.cli import main
from csvbridge.schema.models import Conversion

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CHQ = FIXTURES / "commercehq"
TEMPLATE = Path("/work/shared/reference/commandersact-conversions-csv-template.csv")
HEADER = (
    "id,user.email,type,status,created,currency,"
    "conversion_items.id,conversion_items.original_quantity,conversion_items.product.id\n"
)
GOOD = "c1,u@example.com,online,pending,2019-04-29T13:47:47Z,EUR,i1,1,p1\n"


def cli(
    *args: Any, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "csvbridge", "convert", *map(str, args), "--workers", "1"],
        input=stdin,
        capture_output=True,
        cwd=cwd or ROOT,
        timeout=120,
    )


def objects(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# --------------------------------------------------------------------------- outputs


def test_template_exit_codes_and_stdout():
    rejecting = cli(TEMPLATE)
    assert rejecting.returncode == 1
    assert len(objects(rejecting.stdout)) == 2
    keeping = cli(TEMPLATE, "--conflict", "first")
    assert keeping.returncode == 0
    objs = objects(keeping.stdout)
    assert [o["id"][:11] for o in objs] == [f"conversion{n}" for n in range(1, 6)]
    for o in objs:
        Conversion.model_validate(o)


def test_output_file_stdout_and_stdin_agree(tmp_path):
    out = tmp_path / "out.ndjson"
    to_file = cli(TEMPLATE, "--conflict", "first", "-o", out)
    to_stdout = cli(TEMPLATE, "--conflict", "first")
    from_stdin = cli("-", "--conflict", "first", stdin=TEMPLATE.read_bytes())
    from_gz_stdin = cli("-", "--conflict", "first", stdin=gzip.compress(TEMPLATE.read_bytes()))
    assert to_file.returncode == to_stdout.returncode == from_stdin.returncode == 0
    assert to_file.stdout == b""
    assert out.read_bytes() == to_stdout.stdout == from_stdin.stdout == from_gz_stdin.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["out.ndjson"]  # no .part left behind


def test_feed_round_trip(tmp_path):
    ndjson, feed, again = tmp_path / "a.ndjson", tmp_path / "feed.csv", tmp_path / "b.ndjson"
    assert cli(TEMPLATE, "--conflict", "first", "-o", ndjson).returncode == 0
    assert cli(TEMPLATE, "--conflict", "first", "--to", "feed", "-o", feed).returncode == 0
    header = feed.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:3] == ["id", "user.user_email", "consent_categories"]
    assert cli(feed, "--conflict", "first", "-o", again).returncode == 0
    assert objects(again.read_bytes()) == objects(ndjson.read_bytes())


def test_rejects_file_in_the_source_dialect(tmp_path):
    src = tmp_path / "fr.csv"
    text = (FIXTURES / "orders_semicolon_cp1252.csv").read_bytes().decode("cp1252")
    text = text.replace(
        "FR-1003;zoe.ecrivain@example.fr;online;pending",
        "FR-1003;zoe.ecrivain@example.fr;online;attente",
    )
    src.write_bytes(text.encode("cp1252"))
    rejects = tmp_path / "rejects.csv"
    done = cli(src, "--rejects", rejects, "-o", tmp_path / "out.ndjson")
    assert done.returncode == 1
    raw = rejects.read_bytes()
    assert b"\r\n" in raw and "Thé".encode("cp1252") in raw  # CRLF, cp1252 like the source
    rows = list(csv.reader(io.StringIO(raw.decode("cp1252"), newline=""), delimiter=";"))
    source_header = text.splitlines()[0].split(";")
    assert rows[0] == [*source_header, "csvbridge_error"]
    assert [r[0] for r in rows[1:]] == ["FR-1003", "FR-1003"]
    assert rows[1][:-1] == next(csv.reader(io.StringIO(text.splitlines()[4]), delimiter=";"))
    assert rows[1][-1].startswith("line 5: INVALID_PROPERTY_FORMAT") and "'attente'" in rows[1][-1]
    assert rows[2][-1].startswith("line 6:")
    assert len(objects((tmp_path / "out.ndjson").read_bytes())) == 2


def test_report_file_and_summary(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(
        HEADER + GOOD + GOOD.replace("c1", "c2").replace("pending", "lost") + "\n", encoding="utf-8"
    )
    report = tmp_path / "report.json"
    done = cli(src, "--report", report, "-o", tmp_path / "out.ndjson")
    assert done.returncode == 1
    d = json.loads(report.read_bytes())
    assert d["rows"] == {"read": 3, "converted": 1, "rejected": 1, "skipped": 1,
                         "shipped": 0, "rejected_by_api": 0, "not_shipped": 0}  # fmt: skip
    assert d["conversions"]["valid"] == 1 and d["conversions"]["rejected"] == 1
    assert d["accounted"] is True
    assert d["outputs"]["ndjson"].endswith("out.ndjson")
    (err,) = d["errors"]
    assert err["code"] == "INVALID_PROPERTY_FORMAT"
    assert err["meta"] == {
        "property": "status",
        "column": "status",
        "line_numbers": [3],
        "error_count": 1,
        "ids": ["c2"],
        "values": ["lost"],
    }
    stderr = done.stderr.decode()
    assert "3 rows read -> 1 conversions valid, 1 rejected" in stderr
    assert "error INVALID_PROPERTY_FORMAT x1" in stderr and "lines 3" in stderr
    quiet = cli(src, "-q", "-o", tmp_path / "out2.ndjson")
    assert quiet.returncode == 1 and quiet.stderr == b""


# --------------------------------------------------------------------------- bad input


def bad_inputs(tmp: Path) -> list[tuple[str, list[Any], int]]:
    def f(name: str, data: bytes | str) -> Path:
        p = tmp / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    mapping = f("m.yaml", "fields: {id: Order ID}\n")
    bad_yaml = f("bad.yaml", "fields: {id: [}\n")
    mars = f("mars.yaml", "options: {timezone: Mars/Base}\nfields: {id: id}\n")
    rows = (
        HEADER
        + GOOD.replace("pending", "Pending")
        + "c2,u@example.com\n"
        + GOOD.replace("EUR", "1e400")
    )
    return [
        ("missing file", [tmp / "nope.csv"], 2),
        ("directory", [tmp], 2),
        ("empty", [f("empty.csv", b"")], 2),
        ("binary", [f("bin.csv", bytes(range(256)) * 4)], 2),
        ("utf-16", [f("u16.csv", (HEADER + GOOD).encode("utf-16"))], 2),
        ("no required columns", [f("nohdr.csv", "a,b\n1,2\n")], 2),
        ("truncated gzip", [f("t.csv.gz", gzip.compress((HEADER + GOOD * 50).encode())[:60])], 2),
        ("mapped column missing", [f("ok.csv", HEADER + GOOD), "--mapping", mapping], 2),
        ("mapping not YAML", [tmp / "ok.csv", "--mapping", bad_yaml], 2),
        ("unknown time zone", [tmp / "ok.csv", "--mapping", mars], 2),
        ("unknown encoding", [tmp / "ok.csv", "--encoding", "klingon"], 2),
        ("bad delimiter", [tmp / "ok.csv", "--delimiter", ";;"], 2),
        ("output folder missing", [tmp / "ok.csv", "-o", tmp / "no" / "out.ndjson"], 2),
        ("report folder missing", [tmp / "ok.csv", "--report", tmp / "no" / "r.json"], 2),
        ("every row bad", [f("bad.csv", rows)], 1),
        ("unclosed quote", [f("q.csv", HEADER + GOOD + 'c2,"u@example.com\n' + GOOD)], 1),
    ]


def test_bad_input_never_shows_a_traceback(tmp_path):
    cases = bad_inputs(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: cli(*c[1]), cases))
    for (what, _, code), done in zip(cases, results, strict=True):
        stderr = done.stderr.decode()
        assert "Traceback" not in stderr, (what, stderr)
        assert done.returncode == code, (what, done.returncode, stderr)
        assert stderr.strip(), what  # always says something


def test_missing_mapped_column_message_names_it(tmp_path, capsys):
    src = tmp_path / "ok.csv"
    src.write_text(HEADER + GOOD, encoding="utf-8")
    m = tmp_path / "m.yaml"
    m.write_text("fields:\n  id: Order ID\n  user.email: Email\n", encoding="utf-8")
    assert main(["convert", str(src), "--mapping", str(m), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "'Order ID'" in err and "id" in err


# --------------------------------------------------------------------------- fixtures


def test_commercehq_export_converts_completely(tmp_path):
    out = tmp_path / "orders.ndjson"
    done = cli(
        CHQ / "orders.csv",
        "--mapping",
        CHQ / "mapping.yaml",
        "-o",
        out,
        "--report",
        tmp_path / "r.json",
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_bytes())
    assert report["errors"] == [] and report["accounted"] is True
    assert report["conversions"]["valid"] == 25 and report["rows"]["read"] == 63
    objs = {o["id"]: o for o in objects(out.read_bytes())}
    assert len(objs) == 25
    for o in objs.values():
        Conversion.model_validate(o)

    maria = objs["4059"]
    assert maria["user"] == {"email": "maria.gonzalez@example.com"}
    assert maria["created"] == "2024-06-02T20:01:03.000Z"
    assert (maria["type"], maria["status"], maria["currency"]) == ("online", "shipped", "USD")
    assert maria["payment_method"] == "card"
    assert (maria["original_amount"], maria["final_amount"]) == (125.35, 125.35)
    assert (maria["tax_amount"], maria["shipping_amount"]) == (7.12, 4.25)
    assert maria["shipping_provider"] == "USPS First-Class"
    assert maria["billing_address"] == {
        "recipient": "Maria Gonzalez",
        "street_address": "77 Elm Street Apt 4B",
        "locality": "Amherst",
        "region": "MA",
        "postal_code": "01002",
        "iso_country_code": "US",
    }
    assert maria["shipping_address"] == maria["billing_address"]
    assert maria["custom"] == {"display_number": "CH-4059"}
    assert "comment" not in maria
    assert [(i["id"], i["original_quantity"], i["price"]) for i in maria["conversion_items"]] == [
        ("4059-BR-2231", 1, 24.5),
        ("4059-TS-100-L", 1, 19.99),
        ("4059-CAN-3", 3, 16.5),
        ("4059-TS-100-M", 1, 19.99),
    ]
    assert maria["conversion_items"][2] == {
        "id": "4059-CAN-3",
        "original_quantity": 3,
        "price": 16.5,
        "product": {
            "id": "CAN-3",
            "name": "Soy candle, cedar",
            "category_1": "Home",
            "price": 16.5,
        },
    }
    assert maria["conversion_items"][0]["custom"] == {"variant": "Brown"}
    assert maria["conversion_items"][0]["product"]["brand"] == "Lumen & Co"

    paypal = objs["4088"]
    assert paypal["payment_method"] == "online_payment_system"
    assert paypal["status"] == "partially_shipped"
    assert paypal["conversion_items"][2]["product"]["id"] == "0170302"
    assert [i["original_quantity"] for i in paypal["conversion_items"]] == [1, 2, 1]

    assert objs["4112"]["status"] == "canceled"  # fully refunded, never shipped
    assert objs["4112"]["shipping_address"]["recipient"] == "Liam Smith"
    assert objs["4097"]["comment"] == "Please call before delivery,\nthe buzzer is broken"
    assert objs["4097"]["currency"] == "GBP"
    assert objs["4097"]["billing_address"]["postal_code"] == "SW3 4TY"
    refunded = [o["id"] for o in objs.values() if o["status"] == "canceled"]
    assert len(refunded) == 2


def test_commercehq_leading_zero_skus_stay_text(tmp_path):
    done = cli(CHQ / "orders.csv", "--mapping", CHQ / "mapping.yaml")
    skus = {i["product"]["id"] for o in objects(done.stdout) for i in o["conversion_items"]}
    assert {"0170301", "0170302", "0042007"} <= skus
    zips = {o["billing_address"]["postal_code"] for o in objects(done.stdout)}
    assert {"01002", "07102", "06103", "04101", "05401"} <= zips


def test_french_exports_give_identical_conversions():
    semi = cli(FIXTURES / "orders_semicolon_cp1252.csv")
    tab = cli(FIXTURES / "orders_bom.csv")
    assert semi.returncode == tab.returncode == 0
    assert semi.stdout == tab.stdout
    first = objects(semi.stdout)[0]
    assert first["user"]["email"] == "helene.leveque@example.fr"
    assert first["conversion_items"][0]["product"]["name"] == "Bol en grès émaillé"


@pytest.mark.parametrize("flag", [[], ["--strict"]])
def test_spreadsheet_damage_warns_or_rejects(flag):
    done = cli(TEMPLATE, "--conflict", "first", *flag)
    stderr = done.stderr.decode()
    if flag:
        assert done.returncode == 1 and done.stdout == b""
        assert "error SPREADSHEET_DAMAGE x9" in stderr
    else:
        assert done.returncode == 0 and len(objects(done.stdout)) == 5
        assert "warning SPREADSHEET_DAMAGE x9" in stderr


# --------------------------------------------------------------------------- where it writes


BAD = GOOD.replace("c1,", "c2,").replace("pending", "Pending")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_given_as_output_report_or_rejects_is_written_through(tmp_path):
    """`-o /dev/null` as root (cron) must never replace the device with a regular file.
    A private device node (the same device as /dev/null) stands in for it here."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD + BAD, encoding="utf-8")
    done = cli(src, "-o", null, "--report", null, "--rejects", null)
    assert done.returncode == 1, done.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "null"]  # nothing beside


def test_a_fifo_given_as_output_is_written_through(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD, encoding="utf-8")
    # a write end held here: the reader never blocks, and ends when this one closes,
    # even if the FIFO was replaced (the test then fails instead of hanging)
    hold = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(lambda: Path(fifo).read_bytes())
        try:
            done = cli(src, "-o", fifo)
        finally:
            os.close(hold)
        got = reader.result(timeout=60)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [o["id"] for o in objects(got)] == ["c1"]


def test_a_symlink_given_as_output_report_or_rejects_stays_a_link(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD + BAD, encoding="utf-8")
    links = {}
    for what in ("out", "report", "rejects"):
        target = tmp_path / f"{what}.target"
        target.write_bytes(b"old")
        links[what] = tmp_path / f"{what}.link"
        links[what].symlink_to(target)
    done = cli(src, "-o", links["out"], "--report", links["report"], "--rejects", links["rejects"])
    assert done.returncode == 1, done.stderr
    for what, link in links.items():
        assert link.is_symlink(), what
        assert link.resolve() == tmp_path / f"{what}.target"
    assert [o["id"] for o in objects((tmp_path / "out.target").read_bytes())] == ["c1"]
    assert json.loads((tmp_path / "report.target").read_bytes())["conversions"]["rejected"] == 1
    assert "c2," in (tmp_path / "rejects.target").read_text(encoding="utf-8")


def test_outputs_are_private_whatever_the_umask(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD + BAD, encoding="utf-8")
    outs = [tmp_path / n for n in ("o.ndjson", "r.json", "x.rejects.csv")]
    done = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-m", "csvbridge"]
        + ["convert", str(src), "-o", str(outs[0]), "--report", str(outs[1])]
        + ["--rejects", str(outs[2]), "--workers", "1"],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert [stat.S_IMODE(p.stat().st_mode) for p in outs] == [0o600] * 3


def test_kind_products_with_a_repeated_id_does_not_pass(tmp_path):
    src = tmp_path / "products.csv"
    src.write_text("id,name\nP1,Mug\nP2,Lamp\nP1,Mug again\n", encoding="utf-8")
    out, rejects = tmp_path / "p.ndjson", tmp_path / "p.rejects.csv"
    done = cli(src, "--kind", "products", "-o", out, "--rejects", rejects)
    assert done.returncode == 1
    assert "DUPLICATE_PRODUCT_ID" in done.stderr.decode()
    assert [o["id"] for o in objects(out.read_bytes())] == ["P1", "P2"]
    text = rejects.read_text(encoding="utf-8")
    assert "P1,Mug again,line 4: DUPLICATE_PRODUCT_ID: product id already given on line 2" in text
