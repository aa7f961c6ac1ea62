"""The SQLite downstream log's WAL under a load that never pauses: the checkpoints copy it back
and it starts again from its beginning, instead of growing by every page of every commit (380
MB in 30 s of the fan-out benchmark, each commit extending the file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from tests.adapters.test_downstream_log import INV, rec

APPENDS = 1500
CHANNELS = 50


async def test_the_wal_starts_again_while_appends_never_pause(tmp_path: Path) -> None:
    path = tmp_path / "downstream.sqlite3"
    wal = path.with_name(path.name + "-wal")
    async with SqliteDownstreamLog(path, checkpoint_interval_s=0.005) as dlog:
        largest = 0
        for n in range(APPENDS):  # one append every turn of the loop: checkpoints run beside
            batch = [
                rec(INV, 0, n * CHANNELS + i, f"inventory:s{i}", key=b"k%d" % (n % 7))
                for i in range(CHANNELS)
            ]
            await dlog.append_batch(batch, {})
            await asyncio.sleep(0)
            largest = max(largest, wal.stat().st_size)
        held = dlog.checkpoints_held_s
    # Never restarted, it held every page of every commit: about 490 MB here (2.8 MB with the
    # restarts); the bound leaves room for a slow machine's longer checkpoint cycles.
    assert largest < 64 * 2**20, largest
    assert held > 0  # the writes were held for the last frames
