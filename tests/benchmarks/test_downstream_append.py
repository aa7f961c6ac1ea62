"""The append benchmark counts what it measures and appends what the log keeps."""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
from pathlib import Path

from benchmarks.downstream_append import WARMUP_BATCHES, Batches, log_append, run


def test_batches_number_offsets_per_partition_on_from_batch_to_batch() -> None:
    batches = Batches(channels=4)
    records = batches.next(30) + batches.next(30)
    for partition in range(3):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    assert {r.channels for r in records} == {(f"inventory:s-{n}",) for n in range(4)}


def test_run_counts_only_the_measured_batches_and_the_log_holds_them_all(tmp_path: Path) -> None:
    args = argparse.Namespace(batch=7, batches=3, channels=5)
    path = tmp_path / "log.db"
    timing = run("log", path, *log_append(("inventory",)), args)
    assert timing.records == 21
    assert timing.statements_s > 0
    assert timing.commit_s > 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        [(stored,)] = db.execute("SELECT count(*) FROM records").fetchall()
        [(keys,)] = db.execute("SELECT count(*) FROM snapshot").fetchall()
    assert stored == 7 * (WARMUP_BATCHES + 3)
    assert keys == 5 * 50  # every (store, SKU) seen: 721 records over 5 stores x 50 SKUs
