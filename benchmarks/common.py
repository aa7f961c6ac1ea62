"""Shared pieces of the benchmarks: event bodies, latency histograms, table printing."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgpack
from hdrh.histogram import HdrHistogram

from tests.factories import order_placed

MSGPACK = "application/msgpack"


def event_batches(batches: int, per_batch: int) -> list[list[dict[str, object]]]:
    return [
        [order_placed(f"order-{(b * per_batch + i) % 997}") for i in range(per_batch)]
        for b in range(batches)
    ]


def msgpack_body(events: list[dict[str, object]]) -> bytes:
    packed: bytes = msgpack.packb({"events": events})
    return packed


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, 60_000_000, 3)  # microseconds, up to one minute


@dataclass
class Figures:
    label: str
    events: int
    seconds: float
    latency: HdrHistogram | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def row(self, baseline: float | None = None) -> str:
        ratio = f"{self.rate / baseline:5.2f}x" if baseline else "     "
        lat = ""
        if self.latency is not None and self.latency.get_total_count():
            p = self.latency.get_value_at_percentile
            lat = (
                f"  p50 {p(50) / 1000:7.2f} ms  p99 {p(99) / 1000:7.2f} ms"
                f"  p99.9 {p(99.9) / 1000:7.2f} ms"
            )
        return f"{self.label:<52} {self.rate:>10,.0f} ev/s {ratio}{lat}"


def raw_sqlite_ceiling(rows: int, per_transaction: int) -> Figures:
    """Inserts of unique-UUID rows like the store's, WAL + synchronous=FULL, in one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.sqlite3"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE,"
            " event_type TEXT, event_version INTEGER, key TEXT, value BLOB, received_at_ms INT)"
        )
        value = os.urandom(400)
        started = time.perf_counter()
        for start in range(0, rows, per_transaction):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO events (event_id, event_type, event_version, key, value,"
                " received_at_ms) VALUES (?,?,?,?,?,?)",
                [
                    (str(uuid.uuid4()), "Order.Placed", 1, "k", value, 0)
                    for _ in range(min(per_transaction, rows - start))
                ],
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
    return Figures(f"raw sqlite3, {per_transaction} rows/transaction", rows, elapsed)


class RawHttpConnection:
    """A minimal keep-alive HTTP/1.1 client: the load side must cost far less than the server.

    (httpx's pool costs milliseconds per request at 32+ concurrent connections on two cores,
    which would measure the client instead of the gateway.)
    """

    def __init__(self, host: str, port: int, headers: Mapping[str, str] | None = None) -> None:
        self._host, self._port = host, port
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{self._extra}\r\n"
        ).encode()
        self._writer.write(head + body)
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._writer = None
