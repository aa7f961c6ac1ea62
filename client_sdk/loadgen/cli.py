"""``sync-gateway-load``: simulate many devices on flaky links against a gateway.

Example (a gateway on 8080 routing inventory events to ``inventory.events``)::

    sync-gateway-load --gateway http://127.0.0.1:8080 --devices 200 --events-per-device 50 \\
        --rate 1000 --up 5 --down 1 --subscribe --kafka-bootstrap localhost:9092

Exit code: 0 when nothing was lost or duplicated, 1 otherwise, 2 for bad arguments.
:func:`run_cli` is the same entry point as a coroutine that returns the report (for tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from client_sdk.loadgen.report import LoadConfig, LoadReport
from client_sdk.loadgen.runner import run_load

__all__ = ["main", "parse_args", "run_cli"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sync-gateway-load",
        description="Simulate devices (outbox + uploader, optional subscription) behind a "
        "fault-injecting proxy, then verify Kafka: nothing lost, nothing doubled.",
    )
    p.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL (http)")
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--events-per-device", type=int, default=100)
    p.add_argument(
        "--rate", type=float, default=0.0, help="events/s of all devices together (0: unthrottled)"
    )
    p.add_argument(
        "--duration", type=float, default=None, help="cap on the publishing phase, seconds"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the device files go (default: a temporary dir, removed)",
    )
    p.add_argument(
        "--subscribe", action="store_true", help="each device also follows inventory:<its store>"
    )
    p.add_argument("--stores", type=int, default=10, help="devices are spread over N stores")
    p.add_argument("--up", type=float, default=5.0, help="mean link-up period, seconds")
    p.add_argument("--down", type=float, default=1.0, help="mean link-down period, seconds")
    p.add_argument("--no-faults", action="store_true", help="keep the link up")
    p.add_argument(
        "--blackhole",
        action="store_true",
        help="while down, hold new connections silently instead of resetting them",
    )
    p.add_argument("--latency", type=float, default=0.0, help="added per chunk, seconds")
    p.add_argument("--kafka-bootstrap", default=None, help="verify the topics on this broker")
    p.add_argument(
        "--topic",
        action="append",
        default=None,
        help="topic to verify (repeatable; default inventory.events)",
    )
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--batch-events", type=int, default=100)
    p.add_argument("--request-timeout", type=float, default=10.0)
    p.add_argument(
        "--token", default=None, help="JWT for uploads and streams (Authorization: Bearer)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the link pattern")
    p.add_argument("--plot", type=Path, default=None, help="PNG timeline (needs matplotlib)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live table (default: when stderr is a terminal)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> LoadConfig:
    """The :class:`LoadConfig` of a command line (SystemExit(2) when invalid)."""
    parser = _parser()
    args = parser.parse_args(argv)
    config = LoadConfig(
        gateway_url=args.gateway.rstrip("/"),
        devices=args.devices,
        events_per_device=args.events_per_device,
        rate=args.rate,
        duration=args.duration,
        workdir=args.workdir,
        subscribe=args.subscribe,
        stores=args.stores,
        faults=not args.no_faults,
        up_s=args.up,
        down_s=args.down,
        proxy_mode="blackhole" if args.blackhole else "refuse",
        latency_s=args.latency,
        kafka_bootstrap=args.kafka_bootstrap,
        topics=tuple(args.topic or ("inventory.events",)),
        drain_timeout=args.drain_timeout,
        batch_events=args.batch_events,
        request_timeout=args.request_timeout,
        token=args.token,
        seed=args.seed,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        plot=args.plot,
    )
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return config


async def run_cli(argv: Sequence[str] | None = None, console: Console | None = None) -> LoadReport:
    """Parse ``argv``, run the load, print the report; the report."""
    config = parse_args(argv)
    console = console or Console()
    report = await run_load(config, Console(stderr=True))
    if console.is_terminal:
        report.print(console)
    else:
        console.print(report.text(), markup=False, highlight=False, soft_wrap=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; the exit code (0 ok, 1 lost or duplicated events)."""
    # Every cut makes each uploader log a warning: keep the terminal for the live table.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            report = runner.run(run_cli(argv))
    except KeyboardInterrupt:
        return 130
    return 0 if report.ok else 1


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when available (the simulated devices are CPU-bound in one process)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
