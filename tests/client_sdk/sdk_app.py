"""A device app built on the SDK, run as a child process by the acceptance test (which kills it):
it publishes ``total`` inventory updates through its outbox and follows their channel, keeping
every update it handles in its own table, until all were acknowledged and all came back.

``python -m tests.client_sdk.sdk_app URL WORKDIR TOTAL``; exit 0 when done.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from client_sdk import CursorStore, Outbox, Subscriber, Update, Uploader
from gateway.core.backoff import Backoff

STORE = "s-acc"
CHANNEL = f"inventory:{STORE}"


def on_update(update: Update, db: sqlite3.Connection) -> None:
    """Exactly once: in the transaction that also stores the update's cursor."""
    db.execute(
        "INSERT INTO seen (partition, kafka_offset, qty) VALUES (?, ?, ?)",
        (update.partition, update.offset, (update.data or {})["payload"]["quantity"]),
    )


async def main(url: str, workdir: Path, total: int) -> int:
    store = CursorStore(workdir / "state.db")
    with store.transaction() as db:  # no primary key: a duplicate must show
        db.execute("CREATE TABLE IF NOT EXISTS seen (partition INT, kafka_offset INT, qty INT)")
    outbox = Outbox(workdir / "outbox.db")
    subscriber = Subscriber(url, store, backoff=Backoff(base=0.05, cap=0.5))
    subscriber.subscribe(CHANNEL, on_update)
    async with Uploader(outbox, url, batch_events=100, backoff=Backoff(base=0.05, cap=0.5)) as up:
        tasks = [asyncio.create_task(up.run()), asyncio.create_task(subscriber.run())]
        # A first subscription starts "from now": publish nothing before the channel has a
        # cursor, or the first events could reach the stream before the subscription does.
        for _ in range(6000):  # bounded: 10 minutes
            if store.get(CHANNEL) is not None:
                break
            await asyncio.sleep(0.1)
        else:
            return 1
        for quantity in range(outbox.last_seq(), total):  # resumes where the last run stopped
            payload = {"storeId": STORE, "sku": "SKU-1", "quantity": quantity, "reason": "sale"}
            outbox.publish(
                "Inventory.Updated", 1, f"{STORE}:SKU-{quantity % 7}", payload, source="acceptance"
            )
            if quantity % 50 == 0:  # paced: the test kills the app while it publishes
                up.notify()
                await asyncio.sleep(0.6)
        up.notify()
        for _ in range(6000):  # bounded: 10 minutes
            with store.transaction() as db:
                seen = db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
            if outbox.pending_count() == 0 and seen >= total:
                break
            await asyncio.sleep(0.1)
        else:
            return 1
        await subscriber.close()
        for task in tasks:
            task.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
