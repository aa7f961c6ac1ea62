"""The ``sync-gateway`` console script.

``serve`` takes every setting of :class:`~gateway.config.GatewayConfig` as a flag
(``--port 8081``) or a ``SYNC_GATEWAY_*`` environment variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn

from gateway.config import GatewayConfig


def _serve(args: Sequence[str]) -> int:
    config = GatewayConfig(_cli_parse_args=list(args), _cli_prog_name="sync-gateway serve")
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from gateway.app import build_app

    server = uvicorn.Server(
        uvicorn.Config(
            build_app(config),
            host=config.host,
            port=config.port,
            loop="uvloop",
            http="httptools",
            log_level=config.log_level.lower(),
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sync-gateway", description=__doc__)
    parser.add_argument("command", choices=["serve"], help="what to do")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        return _serve(ns.args)
    parser.error(f"unknown command {ns.command}")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
