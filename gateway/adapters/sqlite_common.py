"""SQLite plumbing shared by the event store and the downstream log: opening a connection,
running a statement to its end, one write transaction at a time, and sqlite3's errors
translated into the gateway's (:class:`~gateway.errors.StoreError`)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreCorrupt, StoreError, StoreUnavailable

BUSY_TIMEOUT_MS = 5000


async def connect(path: Path, what: str, *pragmas: str) -> aiosqlite.Connection:
    """A connection in autocommit mode (transactions are explicit) with a busy timeout and
    ``pragmas`` applied; sqlite3's errors leave as :class:`StoreError` naming ``what``."""
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        raise translate_sqlite_error(exc, what) from exc
    try:
        for pragma in (f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}", *pragmas):
            await db.execute(pragma)
    except BaseException as exc:
        await db.close()
        if isinstance(exc, sqlite3.DatabaseError):
            raise translate_sqlite_error(exc, what) from exc
        raise
    return db


async def fetch_all(db: aiosqlite.Connection, sql: str, params: Sequence[object] = ()) -> list[Any]:
    """Every row of one statement, run to its end in one call on aiosqlite's thread.

    Never ``async with db.execute(...)`` then ``fetchall()``: a task cancelled between the two
    (a client that disconnects mid-read) leaves the statement stepped but not reset, and an
    active statement holds its read snapshot: every later read on that connection sees the
    database as it was then (a replay that goes live on such a page skips what was committed
    since). Here the thread always runs the statement to completion.
    """
    return list(await db.execute_fetchall(sql, params))


def translate_sqlite_error(exc: sqlite3.DatabaseError, what: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreCorrupt(f"{what}: database is damaged ({exc})")
    if code == sqlite3.SQLITE_FULL:
        return StoreUnavailable(f"{what}: store is full (quota or disk): {exc}")
    return StoreUnavailable(f"{what}: {exc}")


async def _rollback(db: aiosqlite.Connection) -> None:
    await db.execute("ROLLBACK")


@contextlib.asynccontextmanager
async def write_transaction(
    db: aiosqlite.Connection, lock: asyncio.Lock, what: str
) -> AsyncIterator[aiosqlite.Connection]:
    """One write transaction at a time on ``db`` (BEGIN IMMEDIATE ... COMMIT, rolled back on
    any error); SQLite errors leave as :class:`~gateway.errors.StoreError`."""
    async with lock:
        try:
            try:
                # BEGIN inside the try: a cancelled BEGIN still runs on aiosqlite's thread,
                # and must be rolled back or every later write would fail
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # "no transaction": nothing to undo
                    # shielded: a second cancellation must not leave the transaction open;
                    # aiosqlite runs statements in order, so the next BEGIN comes after it
                    await asyncio.shield(_rollback(db))
                raise
        except sqlite3.DatabaseError as exc:
            raise translate_sqlite_error(exc, f"{what} failed") from exc
