"""The device's durable outbox: events wait here, on disk, until the gateway has answered.

One SQLite file (WAL, ``synchronous=FULL``) with three tables:

- ``outbox``: the pending events in publish order (``seq``), each with its full envelope, built
  and given its ``event_id`` once, at publish time;
- ``receipts``: what the gateway answered (``accepted`` / ``duplicate``) for events that left;
- ``rejected``: events the gateway refused, moved aside with the code and message, so that they
  never block the events behind them.

Crash safety: ``publish()`` returns only once its transaction is committed with
``synchronous=FULL``, so a killed process loses nothing it acknowledged. An event leaves
``outbox`` only in the transaction that records the gateway's answer for it; if the process dies
after the gateway stored a batch but before that transaction, the same events (same ids) are
sent again and the gateway answers ``duplicate``: nothing is lost, nothing is doubled.

The class is synchronous and thread-safe (one connection behind a lock); asyncio code calls it
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Self

from client_sdk.errors import InvalidEvent, OutboxClosed, OutboxError
from client_sdk.records import (
    EventId,
    NewEvent,
    OutboxStats,
    PendingEvent,
    Receipt,
    ReceiptStatus,
    RejectedEvent,
)

__all__ = ["Outbox"]

EVENT_TYPE_PATTERN: Final = re.compile(r"[A-Z][A-Za-z0-9]{0,63}\.[A-Z][A-Za-z0-9]{0,63}")
"""``Aggregate.Verb``, as the gateway requires it."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    published_at REAL NOT NULL,
    envelope     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    event_id    TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,
    status      TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_by_seq ON receipts (seq);
CREATE TABLE IF NOT EXISTS rejected (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    published_at REAL NOT NULL,
    envelope     BLOB NOT NULL,
    code         TEXT NOT NULL,
    field        TEXT,
    message      TEXT NOT NULL,
    rejected_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT
);
"""

_PRUNE_EVERY_S: Final = 60.0


class Outbox:
    """A durable, ordered queue of events on one SQLite file (see the module docstring).

    ``receipt_retention_s``: receipts older than this are pruned (checked at most once a
    minute). The outbox may be shared by several threads; open one per process and path.
    """

    def __init__(self, path: str | Path, *, receipt_retention_s: float = 7 * 24 * 3600.0) -> None:
        self.path = Path(path)
        self._retention_s = receipt_retention_s
        self._lock = threading.Lock()
        self._last_prune = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        with self._transaction() as db:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"cannot put {self.path} in WAL mode (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (idempotent). Nothing acknowledged is lost by closing or not."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; with ``write``, inside BEGIN IMMEDIATE ... COMMIT."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise OutboxClosed(f"outbox {self.path} is closed")
            try:
                if not write:
                    yield conn
                    return
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc

    # -- publishing ------------------------------------------------------------------------------

    def publish(
        self,
        event_type: str,
        version: int,
        key: str,
        payload: Mapping[str, Any],
        *,
        source: str,
        correlation_id: str | None = None,
        event_time: datetime | None = None,
    ) -> EventId:
        """Store one event durably and return its new ``event_id``.

        The envelope is built here, once: the id (uuid4) and ``event_time`` (now, unless given;
        it must carry a time zone) never change on re-sends. Returns only after the commit
        (``synchronous=FULL``); needs no network. Raises :class:`InvalidEvent` for arguments
        that can never form a valid envelope (schemas are checked by the gateway, not here).
        """
        event = NewEvent(event_type, version, key, payload, source, correlation_id, event_time)
        return self.publish_many([event])[0]

    def publish_many(self, events: Iterable[NewEvent]) -> list[EventId]:
        """Store several events in one transaction (all or none); their ids, in order.

        Much faster than one :meth:`publish` per event (one durable commit for all).
        """
        now = time.time()
        rows = [_build_row(event, now) for event in events]
        with self._transaction(write=True) as db:
            db.executemany(
                "INSERT INTO outbox (event_id, event_type, published_at, envelope) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )
        return [EventId(row[0]) for row in rows]

    # -- uploading -------------------------------------------------------------------------------

    def pending(self, limit: int = 500, max_bytes: int = 512 * 1024) -> list[PendingEvent]:
        """The oldest pending events in publish order: at most ``limit`` events whose envelopes
        add up to at most ``max_bytes`` (but always the first one, however large, so that an
        oversize event cannot block the queue; the gateway will reject it)."""
        if limit < 1 or max_bytes < 1:
            raise ValueError("limit and max_bytes must be positive")
        out: list[PendingEvent] = []
        total = 0
        with self._transaction() as db:
            rows = db.execute(
                "SELECT seq, event_id, event_type, published_at, envelope FROM outbox "
                "ORDER BY seq LIMIT ?",
                (limit,),
            )
            for seq, event_id, event_type, published_at, envelope in rows:
                total += len(envelope)
                if out and total > max_bytes:
                    break
                out.append(PendingEvent(seq, EventId(event_id), event_type, published_at, envelope))
        return out

    def mark_done(self, results: Iterable[Receipt]) -> None:
        """Record the gateway's answers, in one transaction.

        ``accepted`` / ``duplicate``: the event leaves the pending queue and a receipt is kept.
        ``rejected``: the event moves to the rejected table with its code and message. Answers
        for ids that are not pending (already done) are ignored. Records a success (clears
        ``last_error``).
        """
        results = list(results)
        with self._transaction(write=True) as db:
            for result in results:
                row = db.execute(
                    "SELECT seq, event_type, published_at, envelope FROM outbox WHERE event_id = ?",
                    (result.event_id,),
                ).fetchone()
                if row is None:
                    continue
                seq, event_type, published_at, envelope = row
                if result.status is ReceiptStatus.REJECTED:
                    db.execute(
                        "INSERT OR REPLACE INTO rejected (seq, event_id, event_type, "
                        "published_at, envelope, code, field, message, rejected_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            seq,
                            result.event_id,
                            event_type,
                            published_at,
                            envelope,
                            result.code or "rejected",
                            result.field,
                            result.message or "",
                            result.received_at,
                        ),
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO receipts (event_id, seq, status, received_at) "
                        "VALUES (?, ?, ?, ?)",
                        (result.event_id, seq, result.status.value, result.received_at),
                    )
                db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            db.execute("DELETE FROM meta WHERE name = 'last_error'")
            self._maybe_prune(db)

    def record_error(self, message: str | None) -> None:
        """Remember the last upload failure (None clears it); shown by :meth:`stats`."""
        with self._transaction(write=True) as db:
            if message is None:
                db.execute("DELETE FROM meta WHERE name = 'last_error'")
            else:
                db.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('last_error', ?)",
                    (message,),
                )

    def last_seq(self) -> int:
        """The highest ``seq`` ever published (0 for a new outbox)."""
        with self._transaction() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row is not None else 0

    def pending_count(self, up_to_seq: int | None = None) -> int:
        """How many events are pending (only those with ``seq <= up_to_seq`` if given)."""
        bound = up_to_seq if up_to_seq is not None else 2**63 - 1
        with self._transaction() as db:
            row = db.execute("SELECT COUNT(*) FROM outbox WHERE seq <= ?", (bound,)).fetchone()
        return int(row[0])

    # -- inspection ------------------------------------------------------------------------------

    def receipts(self, limit: int = 100, *, after_seq: int = 0) -> list[Receipt]:
        """Receipts of events that left the queue (accepted / duplicate), in publish order,
        starting after ``after_seq``. Pruned after ``receipt_retention_s``."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT event_id, status, received_at FROM receipts WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Receipt(EventId(e), ReceiptStatus(s), received_at=t) for e, s, t in rows]

    def receipt(self, event_id: str) -> Receipt | None:
        """The answer recorded for one event: its receipt, its rejection, or None (still
        pending, unknown, or pruned)."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, received_at FROM receipts WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is not None:
                return Receipt(EventId(event_id), ReceiptStatus(row[0]), received_at=row[1])
            row = db.execute(
                "SELECT code, field, message, rejected_at FROM rejected WHERE event_id = ?",
                (event_id,),
            ).fetchone()
        if row is None:
            return None
        code, field_, message, at = row
        return Receipt(
            EventId(event_id), ReceiptStatus.REJECTED, at, code=code, field=field_, message=message
        )

    def rejected(self, limit: int = 100, *, after_seq: int = 0) -> list[RejectedEvent]:
        """Events the gateway refused, in publish order, starting after ``after_seq``."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT seq, event_id, event_type, published_at, envelope, code, field, message, "
                "rejected_at FROM rejected WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            RejectedEvent(s, EventId(e), t, p, bytes(b), c, f, m, r)
            for s, e, t, p, b, c, f, m, r in rows
        ]

    def stats(self) -> OutboxStats:
        """Pending count, age of the oldest pending event, rejected count, last error."""
        with self._transaction() as db:
            pending, oldest = db.execute(
                "SELECT COUNT(*), MIN(published_at) FROM outbox"
            ).fetchone()
            (rejected,) = db.execute("SELECT COUNT(*) FROM rejected").fetchone()
            row = db.execute("SELECT value FROM meta WHERE name = 'last_error'").fetchone()
        age = max(0.0, time.time() - oldest) if oldest is not None else None
        return OutboxStats(int(pending), age, int(rejected), row[0] if row is not None else None)

    def _maybe_prune(self, db: sqlite3.Connection) -> None:
        now = time.time()
        if now - self._last_prune < _PRUNE_EVERY_S:
            return
        self._last_prune = now
        db.execute("DELETE FROM receipts WHERE received_at < ?", (now - self._retention_s,))


def _build_row(event: NewEvent, now: float) -> tuple[str, str, float, bytes]:
    """(event_id, event_type, published_at, envelope) of a new event; InvalidEvent if it can
    never be valid."""
    if not isinstance(event.event_type, str) or not EVENT_TYPE_PATTERN.fullmatch(event.event_type):
        raise InvalidEvent(f"event_type must look like 'Aggregate.Verb', got {event.event_type!r}")
    if isinstance(event.version, bool) or not isinstance(event.version, int) or event.version < 1:
        raise InvalidEvent(f"version must be an integer >= 1, got {event.version!r}")
    for name in ("key", "source"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"{name} must be a non-empty string")
    if event.correlation_id is not None and (
        not isinstance(event.correlation_id, str) or not event.correlation_id
    ):
        raise InvalidEvent("correlation_id must be a non-empty string or None")
    if not isinstance(event.payload, Mapping):
        raise InvalidEvent("payload must be a mapping")
    when = event.event_time if event.event_time is not None else datetime.fromtimestamp(now, UTC)
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidEvent("event_time must carry a time zone")
    event_id = str(uuid.uuid4())
    envelope: dict[str, Any] = {
        "event_id": event_id,
        "event_type": event.event_type,
        "event_version": event.version,
        "event_time": when.isoformat(),
        "source": event.source,
        "key": event.key,
        "payload": dict(event.payload),
    }
    if event.correlation_id is not None:
        envelope["correlation_id"] = event.correlation_id
    try:
        encoded = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"payload is not plain JSON: {exc}") from exc
    return event_id, event.event_type, now, encoded
