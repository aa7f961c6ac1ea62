"""A real uvicorn server on loopback for adapter tests, started in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from gateway.adapters.ws_protocol import GatewayWebSocketProtocol


@contextlib.asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 with the gateway's websocket protocol (``options`` go to
    ``uvicorn.Config``); yield the port; stop the server on exit."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws=GatewayWebSocketProtocol,
        log_level="error",
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # start-up failed: say why
                await asyncio.sleep(0.01)
        port: int = server.servers[0].sockets[0].getsockname()[1]
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await task
