"""A durable per-channel cursor store on SQLite, for applying stream updates exactly once.

The rule of the stream protocol (``docs/protocol.md`` §8.2) is: store an update's cursor only
once the update is applied, ideally in the same local transaction. :meth:`CursorStore.apply`
is that transaction: it runs the application's *effect* (the function that writes the update
into the application's own tables) and stores the channel's new cursor, then commits both at
once, with ``journal_mode=WAL`` and ``synchronous=FULL``. So:

- **Exactly once, when the application's state lives in the same database.** A crash before
  the commit loses the effect *and* the cursor: the update comes again on resume and is
  applied then. A crash after the commit keeps both: the update does not come again. Either
  way it is applied once. The effect gets the store's :class:`sqlite3.Connection`, must do its
  writes through it, and must not commit or roll back itself (that raises).
- **At least once, when handling an update has effects outside this database** (an HTTP call,
  a file, another database, an async handler). The cursor is stored only after the effect
  returns, so a crash in between repeats the effect on resume. Make those effects idempotent,
  for example keyed by ``(topic, partition, offset)`` or ``data["event_id"]`` (§8.2 rule 5).

Calls block (each commit waits for the disk); the asyncio layer runs them in a worker thread
with :func:`asyncio.to_thread`. One store may be used from several threads: calls are
serialized by a lock.

The store also remembers that a channel's cursor was dropped by a ``reset`` or an
``invalid_cursor`` and that the channel must be rebuilt (:meth:`CursorStore.mark_reset`), so a
crash during the rebuild does not resume "from now" and skip updates silently.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

__all__ = ["CursorStore", "Effect"]

Effect: TypeAlias = Callable[[sqlite3.Connection], None]
"""Writes of the application, run inside the store's transaction (no commit, no rollback)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sdk_stream_cursors (
    channel       TEXT PRIMARY KEY,
    cursor        TEXT,
    reset_pending INTEGER NOT NULL DEFAULT 0
)
"""


class CursorStore:
    """Per-channel stream cursors in the SQLite database at ``path`` (created if missing).

    The application may keep its own tables in the same file: they are then updated in the
    same transaction as the cursor by :meth:`apply`. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> CursorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            self._db.close()

    def get(self, channel: str) -> str | None:
        """The channel's stored cursor; ``None`` when there is none (or it was reset)."""
        with self._lock:
            row = self._db.execute(
                "SELECT cursor FROM sdk_stream_cursors WHERE channel = ?", (channel,)
            ).fetchone()
        return None if row is None else row[0]

    def needs_reset(self, channel: str) -> bool:
        """True when the channel's cursor was dropped by a reset and no new one is stored yet:
        rebuild the channel's state before subscribing again."""
        with self._lock:
            row = self._db.execute(
                "SELECT reset_pending FROM sdk_stream_cursors WHERE channel = ?", (channel,)
            ).fetchone()
        return row is not None and bool(row[0])

    def apply(self, channel: str, cursor: str | None, effect: Effect | None = None) -> None:
        """Run ``effect`` (if any) and store ``cursor`` for ``channel``, in one transaction.

        ``cursor=None`` stores "no cursor" (subscribe from now next time) and clears a pending
        reset. If ``effect`` raises, nothing of it and no cursor is stored, and the exception
        propagates.
        """
        with self.transaction() as db:
            if effect is not None:
                effect(db)
                if not db.in_transaction:
                    raise RuntimeError("the effect ended the store's transaction itself")
            db.execute(
                "INSERT INTO sdk_stream_cursors (channel, cursor, reset_pending) VALUES (?, ?, 0)"
                " ON CONFLICT (channel) DO UPDATE SET cursor = excluded.cursor, reset_pending = 0",
                (channel, cursor),
            )

    def mark_reset(self, channel: str) -> None:
        """Drop the channel's cursor and remember that its state must be rebuilt."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sdk_stream_cursors (channel, cursor, reset_pending)"
                " VALUES (?, NULL, 1)"
                " ON CONFLICT (channel) DO UPDATE SET cursor = NULL, reset_pending = 1",
                (channel,),
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the store's connection (``BEGIN IMMEDIATE`` ... ``COMMIT``,
        rolled back on an exception), holding the store's lock. Also for reading the
        application's tables consistently."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
