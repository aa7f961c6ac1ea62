"""Soak (issue 8, long form only): mixed load for a long time with periodic faults, sampling the
gateway's RSS, open files, backlog and ack latency; memory must not grow without bound.

    python -m benchmarks.soak --duration 3600 [--clients 4] [--subscribers 20] [--rate 500]
        [--fault-every 60] [--sample-every 10] [--rss-ratio 1.5]

Starts a Kafka broker and a gateway process, runs uploading clients (re-sending each batch
until acknowledged) and websocket subscribers, and every ``--fault-every`` seconds injects the
next fault in turn: gateway SIGKILL + restart, gateway SIGTERM + restart, broker pause (SIGSTOP
for a few seconds). Prints one row per sample, then the checker's report. Exit 1 when the
checker fails or the median RSS of the last quarter exceeds ``--rss-ratio`` times that of the
second quarter (memory growing without bound).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.testing.checker import check
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import inventory_updated
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import stream
from tests.reliability.clients import Batch, RetryingClient, Tally, order_batches, readyz

FAULTS = ("gateway SIGKILL", "gateway SIGTERM", "broker pause")


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    backlog: int
    acked: int
    updates: int
    p50_ms: float
    p99_ms: float
    fault: str


@dataclass
class State:
    tally: Tally = field(default_factory=Tally)
    updates: int = 0
    faults: list[str] = field(default_factory=list)
    last_fault: str = ""
    stop: bool = False
    window: list[float] = field(default_factory=list)
    """Ack latencies (s) since the last sample."""
    inventory: RetryingClient | None = None


def proc_figures(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process; zeros if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if "VmRSS" in line)
        return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0.0, 0


def gateway_pid(gateway: GatewayProcess) -> int:
    """The running gateway's pid (GatewayProcess keeps its ChildProcess private)."""
    proc = getattr(gateway, "_proc", None)
    return int(getattr(proc, "pid", 0) or 0)


async def upload(
    url: str, client: RetryingClient, state: State, rate: float, deadline: float, tag: str
) -> None:
    """Upload batches of 50 at about ``rate`` events/s until stopped."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for n in range(10**9):
            if state.stop or time.monotonic() > deadline:
                return
            (batch,) = order_batches(f"{tag}-{n}", int(client.name[1:]), 50, 50, 5)
            began = time.monotonic()
            await client.upload(http, batch, deadline + 300)
            state.window.append(time.monotonic() - began)
            await asyncio.sleep(max(0.0, 50 / rate - (time.monotonic() - began)))


async def subscribe(url: str, channel: str, state: State, deadline: float) -> None:
    """Follow a channel, reconnecting (from its cursor) whenever the gateway goes away."""
    cursor: str | None = None
    for _ in range(10**6):
        if state.stop or time.monotonic() > deadline:
            return
        with contextlib.suppress(Exception):
            async with stream(url) as ws:
                await ws.subscribe("s", channel, cursor)
                while not state.stop:
                    with contextlib.suppress(TimeoutError):
                        frame = await ws.recv(2.0)
                        if frame["type"] == "events":
                            state.updates += len(frame["events"])
                        cursor = ws.cursors.get("s", cursor)
                        if frame["type"] in ("reset", "error"):
                            cursor = None
                            break  # subscribe again on a new connection
        await asyncio.sleep(0.5)


async def publish_inventory(url: str, state: State, deadline: float, sent: set[str]) -> None:
    """A trickle of inventory updates (what the subscribers follow)."""
    client = state.inventory = RetryingClient("inv", state.tally)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for i in range(10**9):
            if state.stop or time.monotonic() > deadline:
                return
            batch = Batch.of([inventory_updated(f"soak-{i % 10}", f"SKU-{i % 3}", i)])
            await client.upload(http, batch, deadline + 300)
            sent.update(batch.event_ids)
            await asyncio.sleep(0.2)


async def inject_faults(
    gateway: GatewayProcess, broker: KafkaBroker, state: State, every: float, deadline: float
) -> None:
    for n in range(10**6):
        await asyncio.sleep(every)
        if state.stop or time.monotonic() > deadline - every / 2:
            return
        fault = FAULTS[n % len(FAULTS)]
        state.faults.append(fault)
        state.last_fault = fault
        if fault == "gateway SIGKILL":
            await asyncio.to_thread(gateway.kill)
            await asyncio.to_thread(gateway.start, 60)
        elif fault == "gateway SIGTERM":
            await asyncio.to_thread(gateway.terminate, 30)
            await asyncio.to_thread(gateway.start, 60)
        else:
            await asyncio.to_thread(broker.pause)
            await asyncio.sleep(5.0)
            await asyncio.to_thread(broker.resume)


async def sample(
    gateway: GatewayProcess, state: State, every: float, deadline: float, out: list[Sample]
) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as http:
        while not state.stop and time.monotonic() < deadline:
            await asyncio.sleep(every)
            rss, fds = proc_figures(gateway_pid(gateway))
            details = await readyz(http) or {}
            window, state.window = sorted(state.window), []
            p50 = window[len(window) // 2] * 1000 if window else 0.0
            p99 = window[min(len(window) - 1, len(window) * 99 // 100)] * 1000 if window else 0.0
            s = Sample(
                time.monotonic() - started,
                rss,
                fds,
                int(details.get("backlog", {}).get("events", -1)),
                state.tally.acked_events,
                state.updates,
                p50,
                p99,
                state.last_fault,
            )
            state.last_fault = ""
            out.append(s)
            print(
                f"{s.t:7.0f} {s.rss_mib:8.1f} {s.fds:5d} {s.backlog:8d} {s.acked:9d}"
                f" {s.updates:8d} {s.p50_ms:8.1f} {s.p99_ms:8.1f}  {s.fault}",
                flush=True,
            )


async def run(args: argparse.Namespace, workdir: Path) -> int:
    state = State()
    samples: list[Sample] = []
    with KafkaBroker(workdir / "kafka") as broker:
        topics = TestTopics()
        settings = topics.settings(broker.bootstrap) | {"retention_s": "60"}
        gateway = GatewayProcess(workdir / "gw", settings=settings, log_path=workdir / "gw.log")
        gateway.start(60)
        clients = [RetryingClient(f"c{c}", state.tally) for c in range(args.clients)]
        inv_sent: set[str] = set()
        started = time.monotonic()
        deadline = started + args.duration
        print(
            f"soak: {args.duration:g}s, {args.clients} clients at {args.rate:g} ev/s in all,"
            f" {args.subscribers} subscribers, a fault every {args.fault_every:g}s; gateway log"
            f" {workdir / 'gw.log'}\n"
            f"{'t[s]':>7} {'RSS MiB':>8} {'fds':>5} {'backlog':>8} {'acked':>9} {'updates':>8}"
            f" {'p50 ms':>8} {'p99 ms':>8}  fault",
            flush=True,
        )
        try:
            async with asyncio.TaskGroup() as group:
                for c in clients:
                    group.create_task(
                        upload(gateway.url, c, state, args.rate / args.clients, deadline, "soak")
                    )
                for s in range(args.subscribers):
                    group.create_task(
                        subscribe(gateway.url, f"inventory:soak-{s % 10}", state, deadline)
                    )
                group.create_task(publish_inventory(gateway.url, state, deadline, inv_sent))
                group.create_task(inject_faults(gateway, broker, state, args.fault_every, deadline))
                sampler = group.create_task(
                    sample(gateway, state, args.sample_every, deadline, samples)
                )
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                state.stop = True
                sampler.cancel()
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
                for _ in range(600):
                    details = await readyz(http)
                    if details is not None and details.get("backlog", {}).get("events") == 0:
                        break
                    await asyncio.sleep(0.5)
        finally:
            if broker.is_paused:
                broker.resume()
            gateway.terminate()
        inv_acks = state.inventory.acked if state.inventory is not None else []
        report = await check(
            broker.bootstrap,
            [topics.orders, topics.inventory],
            [a for c in clients for a in c.acked] + list(inv_acks),
            sent=set().union(*(c.sent for c in clients), inv_sent),
            stores={"gw": workdir / "gw"},
            dead_letter_topic=topics.dead_letters,
        )
    rss = [s.rss_mib for s in samples if s.rss_mib > 0]
    quarter = max(1, len(rss) // 4)
    second = statistics.median(rss[quarter : 2 * quarter] or rss or [0.0])
    last = statistics.median(rss[-quarter:] or [0.0])
    ratio = last / second if second else 0.0
    fds = [s.fds for s in samples if s.fds > 0]
    print(
        f"\nsoak done: {time.monotonic() - started:.0f}s, faults {len(state.faults)}"
        f" ({', '.join(f'{f} x{state.faults.count(f)}' for f in FAULTS)}),"
        f" {state.tally.summary()}; {state.updates} updates streamed;"
        f" RSS median 2nd quarter {second:.1f} MiB, last quarter {last:.1f} MiB"
        f" (ratio {ratio:.2f}, limit {args.rss_ratio:g}); open files {min(fds, default=0)}-"
        f"{max(fds, default=0)}\n{report}"
    )
    failed = not report.ok or ratio > args.rss_ratio
    print("SOAK FAILED" if failed else "SOAK OK")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s over all clients")
    parser.add_argument("--fault-every", type=float, default=60.0)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--rss-ratio", type=float, default=1.5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    sys.exit(asyncio.run(run(args, workdir)))


if __name__ == "__main__":
    main()
