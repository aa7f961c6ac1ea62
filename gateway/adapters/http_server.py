"""The HTTP server: uvicorn with httptools and websockets, plus a handshake deadline; websocket
connections run :mod:`gateway.adapters.ws_protocol` (a keepalive that waits for a client still
draining, and a synchronous send for the stream).

uvicorn gives a new connection unlimited time to send its request line and headers, so a client
that trickles one byte a second (slowloris) holds a connection forever and enough of them exhaust
the process's file descriptors. :func:`handshake_deadline_protocol` closes any connection whose
request headers (the websocket handshake included) are not complete ``timeout_s`` after the
connection, or after the previous response on a kept-alive connection, started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.adapters.ws_protocol import GatewayWebSocketProtocol
from gateway.config import GatewayConfig


def handshake_deadline_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on the request headers."""

    class HandshakeDeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a kept-alive connection's next request
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            # The parser holds this protocol's methods as its callbacks: once the websocket
            # protocol has the transport, that cycle is garbage only the collector would free,
            # one per websocket connection, and a connection storm made its young collections
            # long. Dropping the parser frees it all by reference counting.
            self.parser = None  # type: ignore[assignment]

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._cut)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _cut(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.abort()

    return HandshakeDeadlineProtocol


def uvicorn_config(app: Any, config: GatewayConfig) -> uvicorn.Config:
    """The uvicorn configuration of a gateway serving ``app``."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http=handshake_deadline_protocol(config.handshake_timeout_s),
        ws=GatewayWebSocketProtocol,
        ws_ping_interval=config.ws_ping_interval_s,
        ws_ping_timeout=config.ws_ping_timeout_s,
        ws_max_size=config.ws_max_frame_bytes,
        log_level=config.log_level.lower(),
        log_config=None,  # the gateway's own logging (gateway.logs) formats uvicorn's lines too
        timeout_graceful_shutdown=config.shutdown_grace_s,
        server_header=False,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the application when a graceful shutdown begins (before it
    waits for in-flight requests) through ``on_exit``."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
