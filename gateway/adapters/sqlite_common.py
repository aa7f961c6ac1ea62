"""SQLite plumbing shared by the event store and the downstream log: opening a connection,
running a statement to its end, one write transaction at a time (statement by statement on
aiosqlite, or whole in one call on a :class:`SqliteWriter`), and sqlite3's errors translated
into the gateway's (:class:`~gateway.errors.StoreError`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite

from gateway.errors import StoreCorrupt, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
WRITER_BUSY_TIMEOUT_MS = 100
"""A :class:`SqliteWriter` waits for a lock on the event loop: a writer of another process
(two instances on one file, a misconfiguration) must fail it fast, not stall every stream."""

T = TypeVar("T")


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


class SqliteWriter:
    """A connection that writes on the event loop's own thread, each transaction whole in one
    call: :meth:`transaction` runs ``work(connection)`` between ``BEGIN IMMEDIATE`` and
    ``COMMIT`` (``ROLLBACK`` if it raises). For short transactions that never wait for the disk
    at commit (``synchronous=NORMAL`` in WAL mode: only checkpoints sync, a few milliseconds).

    Why not a thread (aiosqlite, or one trip per transaction to a thread of our own): the work
    is CPU-bound under the GIL, and each row handed to SQLite from another thread must take the
    GIL back from an event loop busy writing frames. Under fan-out load an append of 200
    records took 60-90 ms that way, and 7-15 ms here. Being synchronous, a transaction is also
    whole whatever happens to the task that asked for it. sqlite3's errors leave as
    :class:`~gateway.errors.StoreError`.

    The exception: a transaction of a few long statements (deleting a partition's history,
    hundreds of milliseconds per 100k rows) goes to a worker thread with
    :meth:`transaction_in_thread`. SQLite releases the GIL while a statement runs, so the loop
    goes on beside it. Until it ends, :meth:`transaction` refuses and :meth:`idle` waits; a
    caller awaits :meth:`idle` before either kind."""

    def __init__(self, path: Path, what: str) -> None:
        self._path = path
        self._what = what
        self._db: sqlite3.Connection | None = None
        self._in_thread: asyncio.Future[Any] | None = None

    def open(self, *pragmas: str) -> None:
        """Connect (autocommit mode: transactions are explicit) and apply ``pragmas``."""
        try:
            # One thread at a time uses it: the loop's, or the worker of transaction_in_thread.
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise translate_sqlite_error(exc, f"cannot open {self._what}") from exc
        try:
            for pragma in (f"PRAGMA busy_timeout={WRITER_BUSY_TIMEOUT_MS}", *pragmas):
                db.execute(pragma).fetchall()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise translate_sqlite_error(exc, f"cannot open {self._what}") from exc
        self._db = db

    def run(self, work: Callable[[sqlite3.Connection], T], what: str) -> T:
        """``work(connection)`` outside any transaction (e.g. a schema script)."""
        db = self._require()
        try:
            return work(db)
        except sqlite3.DatabaseError as exc:
            raise translate_sqlite_error(exc, f"{self._what}: {what} failed") from exc

    def transaction(self, work: Callable[[sqlite3.Connection], T], what: str) -> T:
        """``work(connection)`` in one write transaction; its result."""
        if self._in_thread is not None:
            raise RuntimeError(f"{self._what}: a transaction runs on a thread (await idle())")
        return self._transaction(work, what)

    async def transaction_in_thread(self, work: Callable[[sqlite3.Connection], T], what: str) -> T:
        """:meth:`transaction` on a worker thread. It goes on to its end if the caller is
        cancelled, and keeps the other transactions out until then."""
        if self._in_thread is not None:
            raise RuntimeError(f"{self._what}: a transaction runs on a thread (await idle())")
        future = asyncio.get_running_loop().run_in_executor(None, self._transaction, work, what)
        self._in_thread = future
        future.add_done_callback(self._thread_done)
        result: T = await asyncio.shield(future)
        return result

    @property
    def is_idle(self) -> bool:
        """No transaction runs on a thread."""
        return self._in_thread is None

    async def idle(self) -> None:
        """Until no transaction runs on a thread (at once if none does)."""
        while self._in_thread is not None:
            await asyncio.wait({self._in_thread})

    def _thread_done(self, future: asyncio.Future[Any]) -> None:
        self._in_thread = None
        if not future.cancelled():
            future.exception()  # its caller may be gone: the error is its, not the loop's

    def _transaction(self, work: Callable[[sqlite3.Connection], T], what: str) -> T:
        db = self._require()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # "no transaction": nothing to undo
                    db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise translate_sqlite_error(exc, f"{self._what}: {what} failed") from exc
        return result

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable(f"{self._what} is not open")
        return self._db


_PASSIVE: Final = "PRAGMA wal_checkpoint(PASSIVE)"


class WalCheckpointer:
    """WAL checkpoints on aiosqlite's thread, for a :class:`SqliteWriter` opened with
    ``PRAGMA wal_autocheckpoint=0``. A checkpoint copies the WAL's pages back into the database
    file and syncs it; run by the writer at a commit (SQLite's default), it held the event loop
    for as long, every few commits under load. Here :meth:`due` (after a commit) starts one at
    most every ``interval_s`` and never two at once; ``PASSIVE``, so it waits for no reader
    and no writer. A failed one is logged: the WAL only grows until the next succeeds.

    The WAL starts again from its beginning only when a write transaction begins with every
    frame copied back (and no reader in it). Under a steady load some commit always came while
    a checkpoint ran, so that never happened: the WAL grew by every page of every commit (380
    MB in 30 s of fan-out at 5,000 records/s) and each commit extended the file (new blocks,
    zeroed: 9-15% of the event loop's time). So when commits came during a checkpoint, the
    writes wait (:meth:`writable`) while a second one copies what they wrote (2-3 ms there),
    and the next commit restarts the WAL. (A checkpoint's own answer does not tell: it counts
    the frames as they were when it began.) A read in progress on another connection can still
    keep the WAL from restarting; the next cycle tries again."""

    def __init__(
        self, path: Path, what: str, interval_s: float = 0.5, *, pragmas: tuple[str, ...] = ()
    ) -> None:
        """``pragmas`` for the checkpoints' connection (a checkpoint syncs as it is set to)."""
        self._path = path
        self._pragmas = pragmas
        self._what = what
        self._interval_s = interval_s
        self._db: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._last = 0.0
        self._commits = 0
        self._holding: asyncio.Future[None] | None = None
        """Set while a checkpoint copies the last frames with the writes held."""
        self.held_s = 0.0
        """Time the writes were held, in all."""

    async def open(self) -> None:
        self._db = await connect(self._path, f"cannot open {self._what}", *self._pragmas)

    def due(self) -> None:
        """A commit happened: start a checkpoint unless one runs or ran lately."""
        self._commits += 1
        now = time.monotonic()
        if self._db is None or now - self._last < self._interval_s:
            return
        if self._task is not None and not self._task.done():
            return
        self._last = now
        self._task = asyncio.create_task(self._checkpoint(self._db))

    @property
    def is_writable(self) -> bool:
        """No checkpoint holds the writes."""
        return self._holding is None

    async def writable(self) -> None:
        """Until the writes may go on (at once unless a checkpoint holds them)."""
        while self._holding is not None:
            await asyncio.shield(self._holding)

    async def _checkpoint(self, db: aiosqlite.Connection) -> None:
        try:
            commits = self._commits
            await db.execute_fetchall(_PASSIVE)
            if self._commits != commits:  # commits came meanwhile: copy those, writes held
                loop = asyncio.get_running_loop()
                started, self._holding = loop.time(), loop.create_future()
                try:
                    await db.execute_fetchall(_PASSIVE)
                finally:
                    self._holding.set_result(None)
                    self._holding = None
                    self.held_s += loop.time() - started
        except sqlite3.Error as exc:
            log.warning(
                "%s: checkpoint failed (the WAL grows until one succeeds): %s", self._what, exc
            )

    async def settled(self) -> None:
        """Until the checkpoint in progress, if any, has ended."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        """Wait for a checkpoint in progress, then close."""
        await self.settled()
        self._task = None
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                await db.close()
