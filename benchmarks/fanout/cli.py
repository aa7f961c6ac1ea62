"""The command line: arguments, the broker and the gateway (or ``--gateways N`` of them, a fleet
on this machine) started, the phases run in order ((0) Kafka alone, (1) live fan-out, (2) resume
storm, (3) baseline) and the report printed; the gateways' log problems at the end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
from pathlib import Path

from aiokafka import AIOKafkaProducer

from benchmarks import fanout as package
from benchmarks.common import Figures
from benchmarks.fanout.baseline import baseline_live
from benchmarks.fanout.bridge import bridge_live
from benchmarks.fanout.clients import Workers
from benchmarks.fanout.phases import Live, Shape, gateway_live, kafka_alone, process_pid
from benchmarks.fanout.processes import raise_fd_limit, rss_bytes
from benchmarks.fanout.report import GOAL_DELIVERED, report, section
from benchmarks.fanout.storm import Storm, resume_storm
from benchmarks.fanout.updates import PARTITIONS, Updates
from benchmarks.load import wait_quiet
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.kafka_topics import TestTopics, create_topic


def parse_counts(text: str) -> list[int]:
    return [int(part.replace("_", "").replace("k", "000")) for part in text.split(",") if part]


def rates(args: argparse.Namespace, connections: int) -> list[float]:
    """Updates/s to produce, one phase each: ``--rate``, where 0 is what delivers
    :data:`GOAL_DELIVERED`/s to ``connections``."""
    goal = GOAL_DELIVERED * args.channels / connections
    return [float(r) if r else goal for r in map(float, str(args.rate).split(","))]


async def run(
    args: argparse.Namespace,
    broker: KafkaBroker,
    gateways: list[GatewayProcess],
    topics: TestTopics,
    rss_start: int,
) -> None:
    updates = Updates()
    counts = parse_counts(args.connections)
    topic = topics.inventory
    workers = Workers(args.workers)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, client_id="bench-fanout")
    await producer.start()
    results: list[tuple[Live, Live | None, Live | None]] = []
    storm: Storm | None = None
    kafka: Figures | None = None
    print(
        f"gateway pids {[process_pid(g) for g in gateways]}, broker pid {process_pid(broker)},"
        f" client workers {[c.pid for c in workers.children]}",
        flush=True,
    )
    try:
        phase = 1
        rate = rates(args, counts[0])[-1]
        section(f"(0) Kafka alone: {rate:,.0f} updates/s for {args.seconds:g}s ...")
        alone = f"{topics.prefix}.kafka-alone"  # a topic the gateway does not consume
        await create_topic(broker.bootstrap, alone, PARTITIONS)
        kafka = await kafka_alone(
            broker.bootstrap, producer, alone, updates, phase, args.channels, rate, args.seconds
        )

        async def live_phase(connections: int, rate: float, run: argparse.Namespace) -> Live:
            return await gateway_live(
                gateways,
                broker,
                workers,
                producer,
                topic,
                updates,
                phase,
                Shape(connections, args.channels, args.workers, len(gateways)),
                rate,
                run,
                rss_start,
            )

        if args.warmup > 0:
            # The broker's first seconds of serving the gateway's topic cost it ~3x the CPU of
            # later ones (0.6 vs 0.2 cores at 5,000 records/s), and the first measured phase
            # paid for it (p99 2-3x the same phase repeated): one phase, not measured, first.
            phase += 1
            section(
                f"(w) warm-up, not measured: {counts[0]:,} connections, {rate:,.0f} updates/s"
                f" for {args.warmup:g}s ..."
            )
            warmup = argparse.Namespace(**{**vars(args), "seconds": args.warmup})
            await live_phase(counts[0], rate, warmup)
        lives: list[Live] = []
        for connections in counts:
            for rate in rates(args, connections):
                phase += 1
                section(
                    f"(1) gateway: {connections:,} connections on {args.channels} channels,"
                    f" {rate:,.0f} updates/s produced for {args.seconds:g}s"
                    f" (= {rate * connections / args.channels:,.0f}/s to deliver) ..."
                )
                live = await live_phase(connections, rate, args)
                print(
                    f"    connected in {live.connect_s:.1f}s; delivered {live.delivered:,} of"
                    f" {live.expected:,} in {live.seconds:.1f}s",
                    flush=True,
                )
                lives.append(live)
        if args.storm_clients:
            phase += 1
            shape = Shape(args.storm_clients, args.channels, args.workers, len(gateways))
            section(
                f"(2) resume storm: {args.storm_clients:,} clients, {args.storm_behind} updates"
                f" behind on each of {args.channels} channels ..."
            )
            storm = await resume_storm(
                gateways, workers, producer, topic, updates, phase, shape, args.storm_behind, args
            )
            print(f"    all caught up after {storm.seconds:.2f}s", flush=True)
        template = next((x.sample for x in lives if x.sample), None)
        if template is None and not args.no_baseline:
            print("    no gateway frame to copy: no baseline", flush=True)
        bridge_topic = f"{topics.prefix}.bridge"  # a topic the gateway does not consume
        if template is not None and not args.no_baseline:
            await create_topic(broker.bootstrap, bridge_topic, PARTITIONS)
        for live in lives:
            base: Live | None = None
            bridged: Live | None = None
            if template is not None and not args.no_baseline:
                section(
                    f"(3) baseline: bare websockets server, {live.connections:,} connections,"
                    f" {live.rate:,.0f} frames/s of {len(template.encode())} bytes ..."
                )
                shape = Shape(live.connections, args.channels, args.workers)
                base = await baseline_live(workers, shape, live.rate, template, args)
                phase += 1
                section(
                    f"(4) baseline: Kafka consumer + broadcast(), {live.connections:,}"
                    f" connections, {live.rate:,.0f} updates/s produced ..."
                )
                kafka_side = (broker.bootstrap, process_pid(broker), producer, bridge_topic)
                bridged = await bridge_live(
                    workers, shape, live.rate, template, args, kafka_side, updates, phase
                )
            results.append((live, base, bridged))
    finally:
        await producer.stop()
        workers.close()
    report(args, results, storm, kafka)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout",  # not "__main__.py"
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--connections", default="1000", help="comma-separated counts, e.g. 1000,10000"
    )
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="produce phase length")
    parser.add_argument(
        "--rate",
        default="0",
        help="updates/s produced, comma-separated for several phases (a latency curve);"
        f" 0: enough for {GOAL_DELIVERED:,}/s delivered",
    )
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes, a fleet on this machine (each its own instance id and data"
        " directory); each channel's subscribers are spread evenly over them",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=8.0,
        help="seconds of gateway traffic before the measured phases (0: none)",
    )
    parser.add_argument("--storm-clients", type=int, default=1000, help="0: no resume storm")
    parser.add_argument("--storm-behind", type=int, default=300, help="updates per channel")
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--gateway-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a gateway setting (e.g. downstream_min_interval_ms=0); repeatable",
    )
    parser.add_argument("--connect-concurrency", type=int, default=100, help="per worker")
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="after producing, wait until no update arrived for this long",
    )
    parser.add_argument(
        "--compression",
        choices=["off", "deflate"],
        default="off",
        help="offer permessage-deflate (the gateway accepts it when offered)",
    )
    parser.add_argument(
        "--sub-ids",
        choices=["shared", "distinct"],
        default="shared",
        help="the subscription id each client gives: the same for all (as one app's clients"
        " do; the gateway then builds each update's frame once) or its own (one frame built"
        " per connection)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "websockets"],
        default="raw",
        help="the clients' websocket code: the lean benchmarks.fanout.rawws (default) or the"
        " websockets asyncio client (always used with --compression deflate)",
    )
    parser.add_argument(
        "--drain-max", type=float, default=180.0, help="and at most this long in all"
    )
    parser.add_argument("--queue-max", type=int, default=0, help="stream_queue_max (0: default)")
    parser.add_argument(
        "--workdir", default="", help="keep the broker's and gateway's data and logs here"
    )
    args = parser.parse_args()
    args.compression = None if args.compression == "off" else args.compression
    # aiokafka logs (and retries) stale metadata while a new topic's leader is elected
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    counts = parse_counts(args.connections)
    if args.gateways < 1:
        parser.error("--gateways must be at least 1")
    if not 1 <= args.channels <= 0xFFF:
        parser.error("--channels must be 1..4095")
    if any("=" not in item for item in args.gateway_setting):
        parser.error("--gateway-setting takes NAME=VALUE")
    needed = max([*counts, args.storm_clients]) + 1024
    limit = raise_fd_limit(needed)
    if limit < needed:
        parser.error(f"open files limit {limit} < {needed} needed (ulimit -n)")

    with contextlib.ExitStack() as stack:
        if args.workdir:
            tmp = Path(args.workdir).resolve()
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fanout-")))
        print(f"open files limit {limit}; starting a Kafka broker in {tmp} ...", flush=True)
        broker = stack.enter_context(KafkaBroker(tmp / "kafka"))
        topics = TestTopics()
        asyncio.run(create_topic(broker.bootstrap, topics.inventory, PARTITIONS))
        settings = topics.settings(broker.bootstrap) | {
            "topic_partitions": str(PARTITIONS),
            "log_level": "warning",
        }
        if args.queue_max:
            settings["stream_queue_max"] = str(args.queue_max)
        settings |= dict(item.split("=", 1) for item in args.gateway_setting)
        gateways = [
            stack.enter_context(
                GatewayProcess(
                    tmp / (f"gw{i}" if args.gateways > 1 else "gw"),
                    settings={**settings, "instance_id": f"bench-fanout-{i}"},
                )
            )
            for i in range(args.gateways)
        ]
        log_from = [0] * len(gateways)
        try:
            for i, gateway in enumerate(gateways):
                asyncio.run(wait_quiet(gateway))  # start-up done (topics created, consumer up)
                log_from[i] = gateway.log_path.stat().st_size
            rss_start = rss_bytes(*(process_pid(g) for g in gateways))
            asyncio.run(run(args, broker, gateways, topics, rss_start))
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the gateways and the broker", flush=True)
        finally:
            for gateway, offset in zip(gateways, log_from, strict=True):
                print_log_problems(gateway, offset)


def print_log_problems(gateway: GatewayProcess, offset: int, lines: int = 12) -> None:
    """The gateway's warnings and errors since ``offset`` in its log, if any (the log goes
    away with a temporary directory)."""
    try:
        with gateway.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return
    problems = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    if problems:
        print(f"\ngateway log: {len(problems)} warnings/errors after start-up, the last {lines}:")
        for line in problems[-lines:]:
            print(f"  {line[:300]}")
