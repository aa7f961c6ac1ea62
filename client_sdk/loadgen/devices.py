"""Simulated devices: each one an outbox file, an uploader and optionally a subscription.

Every device publishes ``Inventory.Updated`` events for its store (``store-<i % stores>``) and,
with subscriptions on, follows ``inventory:<its store>`` with a sync handler that records each
update in the device's cursor database, in the cursor's transaction (exactly once: an update
seen twice is counted as a stream duplicate). Counters shared by all devices live in
:class:`Tally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from client_sdk.cursor_store import CursorStore
from client_sdk.loadgen.latency import LatencyRecorder
from client_sdk.loadgen.report import LoadConfig
from client_sdk.outbox import Outbox
from client_sdk.protocol import Update
from client_sdk.records import EventId, Receipt, ReceiptStatus
from client_sdk.states import ConnectionState, StateChange, StreamState, StreamStateChange
from client_sdk.subscriber import Subscriber
from client_sdk.uploader import Uploader
from gateway.core.backoff import Backoff

__all__ = ["Device", "Tally", "device_name", "open_files"]


class Tally:
    """Counters and per-event bookkeeping shared by the devices of one run.

    Upload counters are touched from the event loop only; stream counters from the worker
    threads of the subscription handlers too, under ``lock``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published_at: dict[str, tuple[float, float]] = {}
        """event_id -> (monotonic, wall) time of the publish() call."""
        self.store_of: dict[str, str] = {}
        self.status: dict[str, ReceiptStatus] = {}
        self.receipts: Counter[ReceiptStatus] = Counter()
        self.ack_latency = LatencyRecorder()
        self.e2e_latency = LatencyRecorder()
        self.upload_reconnects = 0
        self.stream_reconnects = 0
        self.resumes = 0
        self.stream_received = 0
        self.stream_duplicates = 0
        self.publish_errors = 0

    @property
    def published(self) -> int:
        """Events acknowledged by publish()."""
        return len(self.published_at)

    @property
    def answered(self) -> int:
        """Events with a (first) receipt."""
        return len(self.status)

    def on_receipt(self, receipt: Receipt) -> None:
        """Count a receipt (the first one of an event only) and its ack latency."""
        event_id = receipt.event_id
        if event_id in self.status:
            return
        self.status[event_id] = receipt.status
        self.receipts[receipt.status] += 1
        sent = self.published_at.get(event_id)
        if sent is not None:
            self.ack_latency.record(time.monotonic() - sent[0])

    def ok_events_by_store(self) -> Counter[str]:
        """Events held by the gateway (accepted or duplicate), per store."""
        return Counter(
            self.store_of[e]
            for e, status in self.status.items()
            if status is not ReceiptStatus.REJECTED
        )


def device_name(index: int) -> str:
    """``device-<index>``: the device's ``source`` and the stem of its files."""
    return f"device-{index}"


def open_files(index: int, workdir: Path, subscribe: bool) -> tuple[Outbox, CursorStore | None]:
    """Open (create) the device's outbox and, with ``subscribe``, its cursor store, whose
    ``seen`` table records each update once. Blocking (several fsyncs): run it in a thread."""
    outbox = Outbox(workdir / f"{device_name(index)}.outbox.db")
    if not subscribe:
        return outbox, None
    cursors = CursorStore(workdir / f"{device_name(index)}.cursors.db")
    with cursors.transaction() as db:
        db.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY)")
    return outbox, cursors


class Device:
    """One simulated device (see the module docstring). ``files`` come from
    :func:`open_files`; ``http`` is the device's own client (closed by :meth:`close`)."""

    def __init__(
        self,
        index: int,
        config: LoadConfig,
        url: str,
        tally: Tally,
        files: tuple[Outbox, CursorStore | None],
        http: httpx.AsyncClient,
    ) -> None:
        self.index = index
        self.name = device_name(index)
        self.store = f"store-{index % config.stores}"
        self.tally = tally
        self.received = 0
        self.live = asyncio.Event()
        self._was_live = False
        self.outbox, self.cursors = files
        self._http = http
        self.uploader = Uploader(
            self.outbox,
            url,
            batch_events=config.batch_events,
            backoff=Backoff(base=0.1, cap=2.0),
            on_receipt=tally.on_receipt,
            on_state=self._on_upload_state,
            poll_interval=1.0,
            http=http,
            token=config.token,
        )
        self.subscriber: Subscriber | None = None
        if self.cursors is not None:
            self.subscriber = Subscriber(
                url,
                self.cursors,
                backoff=Backoff(base=0.2, cap=2.0),
                on_state=self._on_stream_state,
                open_timeout=config.request_timeout,
                close_timeout=2.0,
                token=config.token,
            )
            self.subscriber.subscribe(f"inventory:{self.store}", self._on_update)
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0

    def start(self) -> None:
        """Start the uploader (and the subscriber) tasks."""
        self._tasks.append(asyncio.create_task(self.uploader.run(), name=f"{self.name}-up"))
        if self.subscriber is not None:
            self._tasks.append(asyncio.create_task(self.subscriber.run(), name=f"{self.name}-sub"))

    async def publish_one(self) -> None:
        """Publish the device's next event durably and wake its uploader."""
        self._seq += 1
        payload: dict[str, Any] = {
            "storeId": self.store,
            "sku": f"SKU-{self.index}-{self._seq % 50}",
            "quantity": self._seq,
            "reason": "restock",
        }
        started, wall = time.monotonic(), time.time()
        try:
            event_id = await asyncio.to_thread(
                self.outbox.publish,
                "Inventory.Updated",
                1,
                f"{self.store}:{payload['sku']}",
                payload,
                source=self.name,
                correlation_id=f"{self.name}-{self._seq}",
            )
        except Exception:
            self.tally.publish_errors += 1
            raise
        self.tally.published_at[event_id] = (started, wall)
        self.tally.store_of[event_id] = self.store
        self.uploader.notify()

    def pending(self) -> int:
        """Events still in the outbox."""
        return self.outbox.stats().pending

    async def close(self) -> None:
        """Stop the tasks and close the files (bounded)."""
        await self.uploader.close(grace=2.0)
        if self.subscriber is not None:
            await self.subscriber.close()
        for task in self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()
        await asyncio.to_thread(self.outbox.close)  # a WAL checkpoint: not on the loop
        if self.cursors is not None:
            await asyncio.to_thread(self.cursors.close)

    def _on_upload_state(self, change: StateChange) -> None:
        if change.previous is ConnectionState.OFFLINE and change.state is ConnectionState.ONLINE:
            self.tally.upload_reconnects += 1

    def _on_stream_state(self, change: StreamStateChange) -> None:
        if change.state is StreamState.DISCONNECTED:
            with self.tally.lock:
                self.tally.stream_reconnects += 1
        elif change.state is StreamState.LIVE:
            if self._was_live:
                with self.tally.lock:
                    self.tally.resumes += 1
            self._was_live = True
            self.live.set()

    def _on_update(self, update: Update, db: sqlite3.Connection) -> None:
        """Sync handler (worker thread, cursor transaction): record the update once."""
        data = update.data or {}
        event_id = str(data.get("event_id", ""))
        fresh = db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (event_id,)).rowcount == 1
        sent = self.tally.published_at.get(EventId(event_id))
        with self.tally.lock:
            if not fresh:
                self.tally.stream_duplicates += 1
                return
            self.tally.stream_received += 1
            if sent is not None:
                self.received += 1
                self.tally.e2e_latency.record(time.time() - sent[1])
