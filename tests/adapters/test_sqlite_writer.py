"""SqliteWriter: a write transaction is whole, and sqlite3's errors leave as StoreError; one on a
worker thread lets the event loop run and keeps the other transactions out until it ends."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.adapters.sqlite_common import BUSY_TIMEOUT_MS, SqliteWriter
from gateway.errors import StoreCorrupt, StoreError, StoreUnavailable
from tests.factories import ticks_during


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[SqliteWriter]:
    w = SqliteWriter(tmp_path / "w.sqlite3", "test file")
    w.open("PRAGMA journal_mode=WAL")
    w.run(lambda db: db.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"), "schema")
    yield w
    w.close()


def rows(writer: SqliteWriter) -> list[int]:
    return [v for (v,) in writer.run(lambda db: db.execute("SELECT v FROM t").fetchall(), "read")]


def test_a_transaction_commits_and_returns_what_its_work_returns(writer: SqliteWriter) -> None:
    def work(db: sqlite3.Connection) -> int:
        db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        return 2

    assert writer.transaction(work, "insert") == 2
    assert rows(writer) == [1, 2]


def test_work_that_raises_leaves_nothing_and_the_writer_usable(writer: SqliteWriter) -> None:
    def half(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES (1)")
        raise ValueError("half way")

    with pytest.raises(ValueError, match="half way"):
        writer.transaction(half, "insert")
    assert rows(writer) == []
    writer.transaction(lambda db: db.execute("INSERT INTO t VALUES (3)"), "insert")
    assert rows(writer) == [3]


def test_sqlite_errors_leave_as_store_errors_naming_the_work(writer: SqliteWriter) -> None:
    writer.transaction(lambda db: db.execute("INSERT INTO t VALUES (1)"), "first")
    with pytest.raises(StoreError, match="test file: second insert failed") as caught:
        writer.transaction(lambda db: db.execute("INSERT INTO t VALUES (1)"), "second insert")
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert rows(writer) == [1]


def test_a_closed_writer_refuses_work(writer: SqliteWriter) -> None:
    writer.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        writer.transaction(lambda db: None, "anything")


def test_a_damaged_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database, " * 200)
    w = SqliteWriter(path, "junk file")
    with pytest.raises(StoreCorrupt, match="cannot open junk file"):
        w.open("PRAGMA journal_mode=WAL")


def test_a_write_lock_held_elsewhere_fails_fast(writer: SqliteWriter, tmp_path: Path) -> None:
    """The writer waits on the event loop: another process's writer must not stall it for the
    usual 5 s busy timeout."""
    other = sqlite3.connect(tmp_path / "w.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            writer.transaction(lambda db: db.execute("INSERT INTO t VALUES (1)"), "insert")
        assert time.monotonic() - started < BUSY_TIMEOUT_MS / 1000 / 2  # the readers' wait
    finally:
        other.close()
    assert rows(writer) == []


# A statement that runs for a while inside SQLite (hundreds of ms): a long delete's stand-in.
LONG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000)"
    " SELECT count(*) FROM c"
)


def long_insert(value: int) -> Callable[[sqlite3.Connection], int]:
    def work(db: sqlite3.Connection) -> int:
        db.execute(LONG).fetchall()
        db.execute("INSERT INTO t VALUES (?)", (value,))
        return value

    return work


async def on_loop(writer: SqliteWriter, work: Callable[[sqlite3.Connection], int]) -> int:
    return writer.transaction(work, "on the loop")


async def test_a_transaction_in_a_thread_lets_the_loop_run(writer: SqliteWriter) -> None:
    assert await ticks_during(on_loop(writer, long_insert(1))) == 0  # the loop was held
    assert await ticks_during(writer.transaction_in_thread(long_insert(2), "in a thread")) >= 5
    assert rows(writer) == [1, 2]


async def test_a_transaction_in_a_thread_keeps_the_others_out_until_it_ends(
    writer: SqliteWriter,
) -> None:
    caller = asyncio.create_task(writer.transaction_in_thread(long_insert(1), "long"))
    await asyncio.sleep(0.02)
    with pytest.raises(RuntimeError, match="runs on a thread"):
        writer.transaction(long_insert(2), "meanwhile")
    with pytest.raises(RuntimeError, match="runs on a thread"):
        await writer.transaction_in_thread(long_insert(3), "meanwhile")
    caller.cancel()  # the transaction goes on, and the others still wait for it
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    with pytest.raises(RuntimeError, match="runs on a thread"):
        writer.transaction(long_insert(4), "after the cancel")
    async with asyncio.timeout(30):
        await writer.idle()
    assert rows(writer) == [1]  # committed whole
    assert writer.transaction(lambda db: db.execute("INSERT INTO t VALUES (5)").rowcount, "x") == 1
    assert rows(writer) == [1, 5]


async def test_a_failed_transaction_in_a_thread_rolls_back_as_a_store_error(
    writer: SqliteWriter,
) -> None:
    def half(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO missing VALUES (1)")

    with pytest.raises(StoreError, match="test file: in a thread failed"):
        await writer.transaction_in_thread(half, "in a thread")
    await writer.idle()
    assert rows(writer) == []
