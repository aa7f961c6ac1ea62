"""Durable ingest over HTTP: throughput and ack latency with many concurrent clients.

Prints each figure next to the raw SQLite ceiling (same table, same pragmas, one thread, no
HTTP) measured in the same run. The gateway runs as its own process; the clients run here.

    python -m benchmarks.ingest [--seconds 10] [--clients 32,128] [--batch 1,50]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    MSGPACK,
    Figures,
    RawHttpConnection,
    event_batches,
    msgpack_body,
    new_histogram,
    raw_sqlite_ceiling,
)
from gateway.testing.gateway_process import GatewayProcess


async def http_load(port: int, clients: int, per_batch: int, seconds: float) -> Figures:
    bodies = [msgpack_body(b) for b in event_batches(clients * 200, per_batch)]
    histogram = new_histogram()
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(worker: int) -> None:
        nonlocal sent
        connection = RawHttpConnection("127.0.0.1", port)
        try:
            for body in bodies[worker::clients]:
                if time.perf_counter() >= deadline:
                    return
                t0 = time.perf_counter()
                status, answer = await connection.post("/v1/events", body, MSGPACK)
                histogram.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
                if status != 200:
                    raise RuntimeError(f"{status}: {answer[:200]!r}")
                sent += per_batch
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(w) for w in range(clients)))
    elapsed = time.perf_counter() - started
    label = f"HTTP ingest, {clients} clients x {per_batch} events/request"
    return Figures(label, sent, elapsed, histogram)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="32,128")
    parser.add_argument("--batch", default="1,50")
    args = parser.parse_args()

    print("raw SQLite ceiling (WAL, synchronous=FULL, unique UUID key, this machine, now):")
    ceiling = raw_sqlite_ceiling(50_000, 1000)
    print(" ", raw_sqlite_ceiling(2_000, 1).row())
    print(" ", raw_sqlite_ceiling(50_000, 100).row())
    print(" ", ceiling.row())
    print(f"\ndurable HTTP ingest (ratio to the {ceiling.label}):")
    with tempfile.TemporaryDirectory() as tmp:
        gateway = GatewayProcess(
            Path(tmp) / "gw",
            settings={"kafka_bootstrap": "127.0.0.1:9", "log_level": "warning"},
        )
        with gateway:
            for clients in (int(c) for c in args.clients.split(",")):
                for per_batch in (int(b) for b in args.batch.split(",")):
                    figures = asyncio.run(http_load(gateway.port, clients, per_batch, args.seconds))
                    print(" ", figures.row(ceiling.rate))


if __name__ == "__main__":
    main()
