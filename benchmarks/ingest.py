"""Durable ingest over HTTP: throughput and ack latency with many concurrent clients.

Prints each figure next to the raw SQLite ceiling (same table, same pragmas, one thread, no
HTTP) measured in the same run. The gateway runs as its own process; the clients run here.

    python -m benchmarks.ingest [--seconds 10] [--clients 32,128] [--batch 1,50] [--no-auth-row]

The last row repeats the first configuration against a gateway that verifies an RS256 JWT on
every request (rate limits off), next to the same configuration without authentication: the
cost of authentication, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks.common import (
    MSGPACK,
    Figures,
    RawHttpConnection,
    event_batches,
    msgpack_body,
    new_histogram,
    raw_sqlite_ceiling,
)
from gateway.adapters.jwt_auth import JwtSettings, mint
from gateway.testing.gateway_process import GatewayProcess


async def http_load(
    port: int,
    clients: int,
    per_batch: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    label: str = "",
) -> Figures:
    bodies = [msgpack_body(b) for b in event_batches(clients * 200, per_batch)]
    histogram = new_histogram()
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(worker: int) -> None:
        nonlocal sent
        connection = RawHttpConnection("127.0.0.1", port, headers)
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
    name = f"HTTP ingest, {clients} clients x {per_batch} events/request{label}"
    return Figures(name, sent, elapsed, histogram)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="32,128")
    parser.add_argument("--batch", default="1,50")
    parser.add_argument("--no-auth-row", action="store_true", help="skip the JWT comparison")
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
        if not args.no_auth_row:
            clients, per_batch = int(args.clients.split(",")[0]), int(args.batch.split(",")[0])
            auth_row(Path(tmp), clients, per_batch, args.seconds, ceiling)


def auth_row(tmp: Path, clients: int, per_batch: int, seconds: float, ceiling: Figures) -> None:
    """The first configuration again, with and without RS256 JWT verification."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    settings = JwtSettings(algorithms=("RS256",), public_key=public.decode())
    token = mint(
        settings, "device-1", channels=[], publish=["Order.*"], ttl_s=3600, private_key=private
    )
    print("\nauthentication cost (same configuration, same run):")
    base = {"kafka_bootstrap": "127.0.0.1:9", "log_level": "warning"}
    auth = base | {
        "jwt_algorithms": '["RS256"]',
        "jwt_public_key": public.decode(),
        "rate_limit_requests_per_s": "0",
        "rate_limit_events_per_s": "0",
    }
    for name, gw_settings, headers in (
        (" (no auth)", base, None),
        (" (RS256 JWT)", auth, {"Authorization": f"Bearer {token}"}),
    ):
        with GatewayProcess(tmp / name.strip(" ()").replace(" ", "-"), settings=gw_settings) as gw:
            figures = asyncio.run(
                http_load(gw.port, clients, per_batch, seconds, headers, label=name)
            )
            print(" ", figures.row(ceiling.rate))


if __name__ == "__main__":
    main()
