"""Read a gateway's SQLite store from outside the process, as an auditor would."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def stored_ids(data_dir: Path) -> list[str]:
    """Every event id in the store, in store order (duplicates would show twice)."""
    path = data_dir / "gateway.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [str(row[0]) for row in db.execute("SELECT event_id FROM events ORDER BY seq")]
