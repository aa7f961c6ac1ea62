"""What the gateway stores still hold, for the reliability checker: per event id, the stores
that hold it at all, above their forwarded mark (the backlog) or in quarantine
(:class:`StoreState`). Read-only, straight from the files, and safe while the gateways run."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

STORE_FILE: Final = "gateway.sqlite3"
"""The name of a gateway's event store inside its data directory."""


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the gateway stores still hold: event ids above the forwarded mark (the backlog)
    and event ids in quarantine (not replayed), each with the store it was found in."""

    backlog: Mapping[str, tuple[str, ...]]
    quarantined: Mapping[str, tuple[str, ...]]
    stored: Mapping[str, tuple[str, ...]]
    """Every event id each store holds at all, with the stores (a cross-store duplicate shows
    two)."""

    @classmethod
    def empty(cls) -> StoreState:
        return cls({}, {}, {})


def store_path(path: Path) -> Path:
    """A store file from either its path or its gateway's data directory."""
    return path / STORE_FILE if path.is_dir() else path


def read_store(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(backlog ids, quarantined ids, all ids) of one gateway store, read-only (safe while
    the gateway runs: SQLite WAL readers do not block the writer). The backlog is every event
    above the store's local forwarded mark that is not quarantined; the local mark may lag
    Kafka (the forwarder's position in Kafka is the truth), so a backlog id can also be in
    Kafka already: the checker only uses it for ids absent from Kafka."""
    with sqlite3.connect(f"file:{store_path(path)}?mode=ro", uri=True) as db:
        mark_rows = db.execute("SELECT value FROM meta WHERE name = 'forwarded_seq'").fetchall()
        mark = int(mark_rows[0][0]) if mark_rows else 0
        quarantined = {
            str(row[0]).lower()
            for row in db.execute("SELECT event_id FROM quarantine WHERE replayed_at_ms IS NULL")
        }
        backlog = {
            str(row[0]).lower()
            for row in db.execute("SELECT event_id FROM events WHERE seq > ?", (mark,))
        } - quarantined
        stored = {str(row[0]).lower() for row in db.execute("SELECT event_id FROM events")}
    return backlog, quarantined, stored


def read_stores(paths: Mapping[str, Path]) -> StoreState:
    """Read several gateway stores (name -> data dir or store file); stores that do not exist
    (an instance that never started) are skipped."""
    backlog: defaultdict[str, list[str]] = defaultdict(list)
    quarantined: defaultdict[str, list[str]] = defaultdict(list)
    stored: defaultdict[str, list[str]] = defaultdict(list)
    for name, path in paths.items():
        if not store_path(path).exists():
            continue
        in_backlog, in_quarantine, held = read_store(path)
        for event_id in in_backlog:
            backlog[event_id].append(name)
        for event_id in in_quarantine:
            quarantined[event_id].append(name)
        for event_id in held:
            stored[event_id].append(name)
    return StoreState(
        {k: tuple(v) for k, v in backlog.items()},
        {k: tuple(v) for k, v in quarantined.items()},
        {k: tuple(v) for k, v in stored.items()},
    )
