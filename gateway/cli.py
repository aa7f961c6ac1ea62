"""The ``sync-gateway`` console script.

sync-gateway serve [--port 8081 ...]     run the gateway (every setting is a flag or a
                                         SYNC_GATEWAY_* environment variable)
sync-gateway status [--url URL]          backlog, oldest unforwarded age, Kafka link, DLQ
sync-gateway dlq list                    quarantined events with their reasons
sync-gateway dlq replay [ID ...|--all]   forward quarantined events again
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.config import GatewayConfig
from gateway.core.ids import EventId


def _serve(args: Sequence[str]) -> int:
    import uvicorn

    from gateway.app import build_app

    config = GatewayConfig(_cli_parse_args=list(args), _cli_prog_name="sync-gateway serve")
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(config),
            host=config.host,
            port=config.port,
            loop="uvloop",
            http="httptools",
            ws="websockets-sansio",
            ws_ping_interval=config.ws_ping_interval_s,
            ws_ping_timeout=config.ws_ping_timeout_s,
            ws_max_size=config.ws_max_frame_bytes,
            log_level=config.log_level.lower(),
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    return 0


async def _offline_status(config: GatewayConfig) -> dict[str, Any]:
    from gateway.adapters.sqlite_store import SqliteEventStore

    async with SqliteEventStore(config.store_path) as store:
        backlog = await store.backlog()
        dlq = len(await store.quarantined())
    age = None
    if backlog.oldest_received_ms is not None:
        age = round(datetime.now(UTC).timestamp() - backlog.oldest_received_ms / 1000, 3)
    return {
        "status": "not_running",
        "store": {"state": "closed", "path": str(config.store_path)},
        "backlog": {"events": backlog.events, "oldest_age_s": age},
        "dlq": {"events": dlq},
        "kafka": {"state": "unknown (gateway not running)"},
    }


def _status(ns: argparse.Namespace, config: GatewayConfig) -> int:
    url = ns.url or f"http://{config.host}:{config.port}"
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
            report = json.load(answer)
    except urllib.error.HTTPError as exc:
        report = json.load(exc)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        if not config.store_path.exists():
            print(f"no gateway answers at {url} and no store at {config.store_path}")
            return 2
        report = asyncio.run(_offline_status(config))
    print(json.dumps(report, indent=2))
    return 0


async def _dlq(ns: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.adapters.sqlite_store import SqliteEventStore

    if not config.store_path.exists():
        print(f"no store at {config.store_path}")
        return 2
    async with SqliteEventStore(config.store_path) as store:
        if ns.action == "list":
            entries = await store.quarantined(include_replayed=ns.all)
            for e in entries:
                at = datetime.fromtimestamp(e.quarantined_at_ms / 1000, UTC).isoformat()
                replayed = " (replayed)" if e.replayed_at_ms is not None else ""
                print(f"{e.event_id}  seq={e.seq}  at={at}{replayed}  reason: {e.reason}")
            print(f"{len(entries)} quarantined event(s)")
            return 0
        if not ns.event_ids and not ns.all:
            print("name event ids to replay, or --all")
            return 2
        ids = None if ns.all else [EventId(i) for i in ns.event_ids]
        count = await store.replay_quarantined(ids)
        print(f"{count} event(s) queued for forwarding again")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sync-gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway", add_help=False)
    serve.add_argument("args", nargs=argparse.REMAINDER)
    status = commands.add_parser("status", help="backlog, Kafka link state, DLQ count")
    status.add_argument("--url", help="base URL of a running gateway (default: from config)")
    dlq = commands.add_parser("dlq", help="list or replay quarantined events")
    dlq.add_argument("action", choices=["list", "replay"])
    dlq.add_argument("event_ids", nargs="*", help="event ids to replay")
    dlq.add_argument("--all", action="store_true", help="replay all / list replayed too")
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        return _serve(ns.args)
    config = GatewayConfig()
    if ns.command == "status":
        return _status(ns, config)
    return asyncio.run(_dlq(ns, config))


if __name__ == "__main__":
    sys.exit(main())
