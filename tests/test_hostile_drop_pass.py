"""A whole cron pass (the current runner, unchanged) over hostile drops: the filesystem
layer alone keeps it inside the drop and keeps it from hanging."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from csvbridge.drops.runner import PassSummary, run_once
from csvbridge.report import FileState
from csvbridge.testing.emulator import Emulator
from tests.test_runner import (
    TOKEN,
    age,
    assert_received_exactly,
    local_source,
    make_settings,
    write_export,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def emu(emulator: Callable[..., Emulator]) -> Emulator:
    return emulator(token=TOKEN)


def run_in_thread(settings: object) -> PassSummary:
    """run_once, failing the test (instead of hanging it) if the pass blocks."""
    out: list[PassSummary] = []
    thread = threading.Thread(target=lambda: out.append(run_once(settings)), daemon=True)  # type: ignore[arg-type]
    thread.start()
    thread.join(60)
    assert out, "the pass hung"
    return out[0]


def test_fifo_and_links_in_a_drop_are_skipped_and_the_pass_completes(
    tmp_path: Path, emu: Emulator
) -> None:
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    good, _ = write_export(drop / "orders.csv", 3)
    write_export(outside / "secret.csv", 2, first=900)
    age(drop / "orders.csv", 600)
    os.mkfifo(drop / "x.csv")  # used to hang the pass forever
    (drop / "link.csv").symlink_to(outside / "secret.csv")  # used to be shipped
    (drop / "zero.csv").symlink_to("/dev/zero")  # used to fill the disk
    summary = run_in_thread(make_settings(tmp_path, emu, local_source(drop)))
    assert summary.exit_code == 0, summary.describe()
    taken = [f.file for f in summary.files if f.state is not FileState.SKIPPED]
    assert taken == ["orders.csv"]
    skipped = {f.file: f.reason or "" for f in summary.files if f.state is FileState.SKIPPED}
    assert sorted(skipped) == ["link.csv", "x.csv", "zero.csv"]  # accounted for, by kind
    assert skipped["x.csv"].startswith("fifo") and skipped["link.csv"].startswith("symlink")
    assert_received_exactly(emu, good)  # nothing from outside the drop
    assert sorted(p.name for p in drop.iterdir()) == [
        "done",
        "failed",
        "link.csv",
        "processing",
        "x.csv",
        "zero.csv",
    ]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]


def test_a_linked_stage_folder_is_an_error_of_that_source_only(
    tmp_path: Path, emu: Emulator
) -> None:
    bad, good, outside = tmp_path / "bad", tmp_path / "good", tmp_path / "outside"
    for d in (bad, good, outside):
        d.mkdir()
    (bad / "failed").symlink_to(outside, target_is_directory=True)
    write_export(bad / "b.csv", 2)
    write_export(good / "g.csv", 2, first=50)
    age(bad / "b.csv", 600)
    age(good / "g.csv", 600)
    settings = make_settings(
        tmp_path, emu, local_source(bad, name="bad"), local_source(good, name="good")
    )
    summary = run_in_thread(settings)
    errors = {s.name: s.error for s in summary.sources}
    assert errors["good"] is None and "'failed' is a symlink" in (errors["bad"] or "")
    assert summary.exit_code != 0
    assert (bad / "b.csv").exists()  # untouched, for a retry once the folder is fixed
    assert list(outside.iterdir()) == []
    assert (good / "done" / "g.csv").exists()


def test_a_missing_local_drop_is_an_error_not_a_new_folder(tmp_path: Path, emu: Emulator) -> None:
    missing = tmp_path / "srv" / "exports"
    summary = run_in_thread(make_settings(tmp_path, emu, local_source(missing)))
    assert summary.exit_code == 3
    assert "does not exist" in (summary.sources[0].error or "")
    assert not missing.exists()
    created = make_settings(tmp_path, emu, local_source(missing, create_missing=True))
    assert run_in_thread(created).exit_code == 0
    assert (missing / "done").is_dir()
