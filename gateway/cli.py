"""The ``sync-gateway`` console script.

sync-gateway serve [--port 8081 ...]     run the gateway (every setting is a flag or a
                                         SYNC_GATEWAY_* environment variable)
sync-gateway status [--url URL]          backlog, oldest unforwarded age, Kafka link, DLQ
sync-gateway dlq list                    quarantined events with their reasons
sync-gateway dlq replay [ID ...|--all]   forward quarantined events again
sync-gateway token --sub ID [--channel P ...] [--publish P ...] [--ttl S]
                                         mint a signed token from the configured JWT key
                                         (development and tests)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.core.ids import EventId
from gateway.errors import ConfigError
from gateway.logs import configure_logging


def _serve(args: Sequence[str]) -> int:
    from gateway.adapters.http_server import GatewayServer, uvicorn_config
    from gateway.app import build_app

    config = GatewayConfig(_cli_parse_args=list(args), _cli_prog_name="sync-gateway serve")
    configure_logging(config.log_level, config.log_format, config.instance_id)
    try:
        app = build_app(config)
    except ConfigError as exc:
        print(f"sync-gateway serve: {exc}", file=sys.stderr)
        return 2
    GatewayServer(uvicorn_config(app, config), app.state.gateway.begin_shutdown).run()
    return 0


def _token(ns: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.adapters.edge_guards import jwt_settings
    from gateway.adapters.jwt_auth import mint

    if not config.auth_configured:
        print(
            "sync-gateway token: no JWT settings configured (SYNC_GATEWAY_JWT_*)", file=sys.stderr
        )
        return 2
    private_key = ns.private_key.read_text(encoding="utf-8") if ns.private_key else None
    try:
        token = mint(
            jwt_settings(config),
            ns.sub,
            channels=ns.channel,
            publish=ns.publish,
            ttl_s=ns.ttl,
            tenant=ns.tenant,
            private_key=private_key,
            kid=ns.kid,
        )
    except ConfigError as exc:
        print(f"sync-gateway token: {exc}", file=sys.stderr)
        return 2
    print(token)
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
    token = commands.add_parser("token", help="mint a signed token (development, tests)")
    token.add_argument("--sub", required=True, help="subject: the user or device id")
    token.add_argument(
        "--channel", action="append", default=[], help="channel pattern, e.g. orders:{sub}"
    )
    token.add_argument(
        "--publish", action="append", default=[], help="event type pattern, e.g. Order.*"
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.add_argument("--tenant", help="tenant claim (default: the configured tenant)")
    token.add_argument("--kid", help="key id header (for JWKS verifiers)")
    token.add_argument("--private-key", type=Path, help="PEM private key file (RS*/ES* algorithms)")
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        return _serve(ns.args)
    config = GatewayConfig()
    if ns.command == "status":
        return _status(ns, config)
    if ns.command == "token":
        return _token(ns, config)
    return asyncio.run(_dlq(ns, config))


if __name__ == "__main__":
    sys.exit(main())
