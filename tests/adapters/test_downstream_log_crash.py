"""The SQLite downstream log writes without syncs: after a process crash it is kept whole, after
a stop of the machine with the log open (the open marker of another boot) it is discarded and
starts empty, never read torn."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from gateway.core.ids import Epoch, KafkaOffset
from gateway.flows.downstream_ports import LogRecord

INV = "inventory.events"
REPO = Path(__file__).resolve().parents[2]


def rec(offset: int) -> LogRecord:
    return LogRecord(
        topic=INV,
        partition=0,
        offset=KafkaOffset(offset),
        key=b"s1:SKU-1",
        value=f'{{"o":{offset}}}'.encode(),
        headers=(),
        timestamp_ms=1000,
        channels=("inventory:s1",),
    )


async def _fill(path: Path, boot: str) -> None:
    async with SqliteDownstreamLog(path, boot_id=lambda: boot) as dlog:
        await dlog.begin_epoch(Epoch("e1"))
        await dlog.append_batch([rec(o) for o in range(3)], {(INV, 0): KafkaOffset(3)})


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".open")


async def test_the_log_writes_without_syncs(tmp_path: Path) -> None:
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        assert dlog._writer is not None
        writer = dlog._writer.run(lambda db: db.execute("PRAGMA synchronous").fetchone(), "read")
        checkpoints = dlog._checkpoints._db
        assert checkpoints is not None
        rows = await checkpoints.execute_fetchall("PRAGMA synchronous")
        assert (writer[0], next(iter(rows))[0]) == (0, 0)  # OFF on both


async def test_an_open_log_is_marked_with_its_boot_and_unmarked_at_close(tmp_path: Path) -> None:
    path = tmp_path / "downstream.sqlite3"
    async with SqliteDownstreamLog(path, boot_id=lambda: "b1"):
        assert _marker(path).read_text() == "b1\n"
    assert not _marker(path).exists()


@pytest.mark.parametrize("boot_then", ["b2", None])
async def test_a_log_left_open_by_a_stopped_machine_is_discarded(
    tmp_path: Path, boot_then: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "downstream.sqlite3"
    await _fill(path, "b1")
    _marker(path).write_text("b1\n")  # as the machine's stop left it
    async with SqliteDownstreamLog(path, boot_id=lambda: boot_then) as dlog:
        assert await dlog.epoch() is None
        assert await dlog.positions() == {}
        assert await dlog.count() == 0
        await dlog.append_batch([rec(5)], {})  # usable at once
        assert await dlog.count() == 1
    assert "was open when the machine stopped" in caplog.text


async def test_a_log_cleanly_closed_is_kept_across_boots(tmp_path: Path) -> None:
    path = tmp_path / "downstream.sqlite3"
    await _fill(path, "b1")
    async with SqliteDownstreamLog(path, boot_id=lambda: "b2") as dlog:
        assert await dlog.epoch() == "e1"
        assert await dlog.count() == 3


async def test_a_log_kept_after_its_process_crashed(tmp_path: Path) -> None:
    """A real crash: a process that appends and exits without closing anything. With no sync,
    everything it committed is in the page cache, and the same boot keeps it."""
    path = tmp_path / "downstream.sqlite3"
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from pathlib import Path
        from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
        from gateway.core.ids import Epoch, KafkaOffset
        from tests.adapters.test_downstream_log_crash import rec

        async def main():
            dlog = SqliteDownstreamLog(Path({str(path)!r}))
            await dlog.open()
            await dlog.begin_epoch(Epoch("e1"))
            for o in range(0, 300, 3):
                await dlog.append_batch([rec(o), rec(o + 1), rec(o + 2)], {{}})
            os._exit(9)

        asyncio.run(main())
        """
    )
    crashed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        _, stderr = await crashed.communicate()
    assert crashed.returncode == 9, stderr.decode()
    assert _marker(path).exists()
    async with SqliteDownstreamLog(path) as dlog:
        assert await dlog.epoch() == "e1"
        assert await dlog.count() == 300
        assert await dlog.positions() == {(INV, 0): 300}
