"""The README's library example runs as written (docs/library.md is its source)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "csvbridge" / "data" / "demo" / "orders-2026-11-21.csv"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("doc", [ROOT / "docs" / "library.md", ROOT / "README.md"])
def test_the_library_example_runs(doc: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    blocks = [b for b in _python_blocks(doc) if "import csvbridge" in b]
    assert blocks, f"no library example in {doc.name}"
    shutil.copy(DEMO, tmp_path / "orders.csv")
    (tmp_path / "not-a-csv.json").write_text(json.dumps({"orders": []}))
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(doc), "exec"), {})  # our own documentation, not user text
    out = capsys.readouterr().out
    valid, rejected = map(int, re.search(r"(\d+) valid, (\d+) rejected", out).groups())
    assert valid > 0 and rejected > 0  # the demo export has two broken conversions
    assert f"shipped {valid} of {valid}" in out
    assert "refused: this is JSON" in out
    assert json.loads((tmp_path / "sent.json").read_bytes())["conversions"]["shipped"] == valid
