"""The resume storm: clients keep their cursor and disconnect, a backlog is produced and
consumed by the gateway, then every client reconnects at once with its cursor; the catch-up
times and the check that each got exactly the updates it missed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from hdrh.histogram import HdrHistogram

from benchmarks.common import Figures, new_histogram
from benchmarks.fanout.clients import Workers
from benchmarks.fanout.phases import (
    CollectorTotals,
    Shape,
    collector_delta,
    connect_all,
    process_pid,
    server_totals,
    ws_url,
)
from benchmarks.fanout.processes import RssWatch, cpu_seconds
from benchmarks.fanout.updates import Updates, produce
from benchmarks.load import downstream_consumed, wait_quiet
from gateway.testing.gateway_process import GatewayProcess


@dataclass
class Storm:
    clients: int
    behind: int
    replayed: int
    expected: int
    seconds: float
    catch_up: HdrHistogram
    exact: int
    missing: int
    duplicates: int
    foreign: int
    disordered: int
    late: int
    problems: dict[str, int]
    produce_s: float
    consume_s: float
    client_cpu: float
    gateway_cpu: float
    rss_peak: int
    collector: CollectorTotals
    """The gateways' cycle collections during the storm, by generation."""

    @property
    def figures(self) -> Figures:
        return Figures(
            f"resume storm: {self.clients:,} clients x {self.behind} behind, replayed",
            self.replayed,
            self.seconds,
            self.catch_up,
        )


async def wait_consumed(http: httpx.AsyncClient, target: int, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if await downstream_consumed(http) >= target:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the gateway did not consume {target:,} records in {timeout_s:g}s")


async def resume_storm(
    gateways: list[GatewayProcess],
    workers: Workers,
    producer: Any,
    topic: str,
    updates: Updates,
    phase: int,
    shape: Shape,
    behind: int,
    args: argparse.Namespace,
) -> Storm:
    """Figures of several gateways are summed; each client resumes on the gateway it left."""
    urls = [ws_url(gateway.url) for gateway in gateways]
    gw_pids = [process_pid(gateway) for gateway in gateways]
    for gateway in gateways:
        await wait_quiet(gateway)
    async with contextlib.AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=g.url, timeout=30))
            for g in gateways
        ]
        await connect_all(workers, urls, shape, args)  # each client keeps the cursor of "live"
        await workers.all("disconnect", 60, timeout_s=30)
        consumed = [await downstream_consumed(http) for http in https]
        started = time.perf_counter()
        produced = await produce(
            producer, topic, updates, phase, shape.channels, behind * shape.channels, None
        )
        for http, before in zip(https, consumed, strict=True):
            await wait_consumed(http, before + produced.total, 300)
        consume_s = time.perf_counter() - started
    watch = RssWatch(*gw_pids)
    watch.start()
    collected, _ = await server_totals([g.url for g in gateways])
    cpu0 = cpu_seconds(*gw_pids)
    started_wall = time.time()
    answers = await workers.all(
        "resume",
        args.storm_timeout + 60,
        urls=urls,
        phase=phase,
        behind=behind,
        concurrency=args.connect_concurrency,
        timeout_s=args.storm_timeout,
        compression=args.compression,
        client=args.client,
    )
    gateway_cpu = cpu_seconds(*gw_pids) - cpu0
    collected_after, _ = await server_totals([g.url for g in gateways])
    rss_peak = await watch.stop()
    await workers.all("disconnect", 60, timeout_s=30)
    catch_up = new_histogram()
    problems: Counter[str] = Counter()
    for a in answers:
        catch_up.decode_and_add(a["catch_up"])
        problems.update(a["problems"])
        problems.update(a["closes"])
    live = sum(a["live"] for a in answers)
    if live < shape.connections:
        problems[f"not live after {args.storm_timeout:g}s"] += shape.connections - live
    last_live = max(a["last_live"] for a in answers)
    return Storm(
        clients=shape.connections,
        behind=behind,
        replayed=sum(a["updates"] for a in answers),
        expected=shape.connections * behind,
        seconds=(last_live - started_wall) if last_live else float("nan"),
        catch_up=catch_up,
        exact=sum(a["exact"] for a in answers),
        missing=sum(a["missing"] for a in answers),
        duplicates=sum(a["duplicates"] for a in answers),
        foreign=sum(a["foreign"] for a in answers),
        disordered=sum(a["disordered"] for a in answers),
        late=sum(a["late"] for a in answers),
        problems=dict(problems),
        produce_s=produced.seconds,
        consume_s=consume_s,
        client_cpu=sum(a["cpu"] for a in answers),
        gateway_cpu=gateway_cpu,
        rss_peak=rss_peak,
        collector=collector_delta(collected, collected_after),
    )
