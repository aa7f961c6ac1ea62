"""The printed results: the table of rates (with the ratio to the baseline) and latencies, then
per phase the deliveries, memory and CPU, the resume storm's checks, and the product's goal."""

from __future__ import annotations

import argparse
import os

from hdrh.histogram import HdrHistogram

from benchmarks.common import Figures
from benchmarks.fanout.phases import ConsumerTotals, Live
from benchmarks.fanout.storm import Storm

GOAL_DELIVERED = 50_000
"""The product's goal: updates/s delivered (with p99 < 100 ms)."""


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def latency_text(h: HdrHistogram) -> str:
    if not h.get_total_count():
        return "(no samples)"
    p = h.get_value_at_percentile
    return (
        f"p50 {p(50) / 1000:7.1f}  p95 {p(95) / 1000:7.1f}  p99 {p(99) / 1000:7.1f}"
        f"  max {h.get_max_value() / 1000:7.1f} ms"
    )


def row(figures: Figures, baseline: float | None, extra: str = "") -> str:
    ratio = f"{figures.rate / baseline:5.2f}x" if baseline else "   -  "
    lat = latency_text(figures.latency) if figures.latency is not None else ""
    return f"  {figures.label:<44} {figures.rate:>9,.0f} upd/s {ratio}  {lat}{extra}"


def cpu_text(live: Live) -> str:
    parts = [f"{name} {seconds / live.seconds:.2f}" for name, seconds in live.cpu.items()]
    per_update = live.cpu["server"] / live.delivered * 1e6 if live.delivered else 0.0
    per_frame = live.cpu["clients"] / live.frames * 1e6 if live.frames else 0.0
    return (
        "CPU (cores) "
        + ", ".join(parts)
        + f"; server {per_update:.0f} us/update delivered, clients {per_frame:.0f} us/frame"
    )


def section(title: str) -> None:
    print(f"\n{title}", flush=True)


def report(
    args: argparse.Namespace,
    results: list[tuple[Live, Live | None, Live | None]],
    storm: Storm | None,
    kafka: Figures | None,
) -> None:
    size = next((len(x.sample.encode()) for x, _, _ in results if x.sample), 0)
    section(
        f"results: updates/s delivered (sum over clients), ratio to the baseline, latency from"
        f" produce to client receipt ({args.channels} channels, {size}-byte events frames,"
        f" JSON subprotocol, compression {args.compression or 'off'}, subscription ids"
        f" {args.sub_ids}; {args.workers} client"
        f" processes ({client_name(args)} client); broker, gateway, producer and clients"
        f" share {os.cpu_count()} cores"
        + (f"; after {args.warmup:g}s of gateway traffic not measured" if args.warmup else "")
        + "):"
    )
    for live, base, bridged in results:
        baseline_rate = base.figures.rate if base is not None else None
        print(row(live.figures, baseline_rate))
        for other in (base, bridged):
            if other is not None:
                print(row(other.figures, baseline_rate))
    if storm is not None:
        print(row(storm.figures, None, "  (latency: per-client catch-up time)"))
    if kafka is not None:
        print(row(kafka, None, "  (records/s, 1 reader)"))
    print()
    for live, base, bridged in results:
        for x in (live, base, bridged):
            if x is None:
                continue
            per_conn = (x.rss_connected - x.rss_idle) / x.connections
            before = "before any connection" if x is live else "idle"
            lost = x.expected - x.delivered
            print(f"  {x.label}:")
            print(
                f"    {x.produced:,} updates sent, {x.expected:,} deliveries expected,"
                f" {x.delivered:,} delivered ({lost:,} missing) in {x.frames:,} frames;"
                f" {x.still_open:,} connections still open; unexpected closes: {x.closes or 0}"
            )
            print(
                f"    server RSS {before} {mib(x.rss_idle)}, with the connections subscribed"
                f" {mib(x.rss_connected)} ({per_conn / 1024:,.1f} KiB/connection), peak"
                f" {mib(x.rss_peak)}; {x.connections:,} connections opened in"
                f" {x.connect_s:.1f}s"
            )
            print(f"    {cpu_text(x)}")
            if x.collector is not None:
                print(f"    {collector_text(x.collector)}")
            if x.consumer is not None:
                print(f"    {consumer_text(x.consumer)}")
    if storm is not None:
        ok = (
            storm.exact == storm.clients
            and not storm.missing
            and not storm.duplicates
            and not storm.foreign
            and not storm.disordered
        )
        print(f"  resume storm ({'exact: no loss, no duplicate' if ok else 'FAILED CHECKS'}):")
        print(
            f"    {storm.clients:,} clients reconnected at once, all live after"
            f" {storm.seconds:.2f}s; {storm.replayed:,} updates replayed of {storm.expected:,}"
            f" expected; {storm.exact:,} clients got exactly the updates they missed"
        )
        print(
            f"    missing {storm.missing}, duplicates {storm.duplicates}, other channel/phase"
            f" {storm.foreign}, out of offset order {storm.disordered}, after live {storm.late};"
            f" problems {storm.problems or 'none'}"
        )
        print(
            f"    backlog: {storm.behind * args.channels:,} records produced in"
            f" {storm.produce_s:.1f}s, consumed into the gateway's log after"
            f" {storm.consume_s:.1f}s; during the storm: gateway CPU"
            f" {storm.gateway_cpu / storm.seconds:.2f} cores, clients"
            f" {storm.client_cpu / storm.seconds:.2f} cores, gateway RSS peak"
            f" {mib(storm.rss_peak)}"
        )
        print(f"    {collector_text(storm.collector)}")
    print(
        f"\n  goal: >= {GOAL_DELIVERED:,} updates/s delivered with p99 < 100 ms"
        " (the product's statement); the figures above are this machine's."
    )


def collector_text(collector: dict[str, tuple[int, float]]) -> str:
    parts = [
        f"generation {g}: {n:,} ({seconds * 1000:,.0f} ms)" for g, (n, seconds) in collector.items()
    ]
    return "cycle collections in the phase (server), by generation: " + (", ".join(parts) or "none")


def consumer_text(phase: ConsumerTotals) -> str:
    """How busy the gateways' downstream consumers were in a phase, and their batch size."""
    busy = phase.work_s / phase.at if phase.at > 0 else 0.0
    per_batch = phase.records / phase.batches if phase.batches else 0.0
    return (
        f"downstream consumer (server): storing and fanning out {busy:.0%} of the phase,"
        f" {phase.records:,} records in {phase.batches:,} batches ({per_batch:,.0f} per batch)"
    )


def client_name(args: argparse.Namespace) -> str:
    return "websockets" if args.compression or args.client == "websockets" else "lean rawws"
