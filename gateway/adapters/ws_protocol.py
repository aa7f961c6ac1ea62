"""The gateway's websocket connections under uvicorn: uvicorn's sans-I/O protocol with the
keepalive of :mod:`gateway.adapters.ws_keepalive`, and a synchronous send for the stream's hot
path.

Why a second way to send: an ASGI ``websocket.send`` passes through Starlette's ``WebSocket``,
its exception wrapper, the request-context middleware and uvicorn's ``send``, a coroutine
each, for every frame; with one frame per connection per consumer cycle that chain was about a
seventh of the event loop's busy time at 45k updates/s. The stream only needs "write this frame
now if the socket takes it". :class:`GatewayWebSocketProtocol` offers exactly that under the
ASGI extension :data:`SEND_NOW` of each connection's scope: a callable that writes one frame
through the same websockets protocol object (so extensions such as permessage-deflate and the
closing state apply as before) and returns ``False`` instead of waiting when the frame cannot go
now: the transport is paused (its buffer is over the high-water mark), the close was sent, or
the connection is not accepted yet. The caller then sends through ASGI and waits, as before, so
flow control and slow-consumer detection are unchanged.

The frame comes as a :class:`~gateway.adapters.ws_frames.WireFrame`, header and payload built
already (once for every connection that sends the same frame). On a connection without
extensions, whose protocol object has nothing waiting to go out and no fragmented message open,
those bytes are written as they are: building a ``Frame`` and serializing it through the
protocol object was about a tenth of the event loop's time at 10k connections. Otherwise the
protocol object frames the payload.

Once a frame went out that way, the connection is known to be *direct* and the next frames skip
the checks but one (the transport is not closing): it stays direct until the close is sent (a
property over uvicorn's ``close_sent``), the transport pauses, or the connection is lost. The
websockets state leaves OPEN only with one of those (uvicorn sends or echoes the close, or
closes the transport, in the same callback), and uvicorn writes what the protocol object queues
at once, so nothing waits in it between two callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import OPEN

from gateway.adapters.ws_frames import TEXT, WireFrame
from gateway.adapters.ws_keepalive import DrainTolerantWebSocketProtocol

SEND_NOW: Final = "sync-gateway.send_now"
"""The scope extension: ``scope["extensions"][SEND_NOW]["send"]`` is a :data:`SendNow`."""

SendNow = Callable[[WireFrame], bool]
"""Write one frame now; ``False``: it was not sent, send it through ASGI."""


class GatewayWebSocketProtocol(DrainTolerantWebSocketProtocol):
    """uvicorn's sans-I/O websocket protocol with the drain-tolerant keepalive and the
    :data:`SEND_NOW` extension (module docstring)."""

    _paused = False
    """The transport's buffer is over its high-water mark (``writable`` cleared)."""
    _direct = False
    """The last checks passed and nothing that ends them happened since (module docstring)."""
    _close_sent = False

    @property
    def close_sent(self) -> bool:
        """uvicorn's flag (the close frame was sent), as a property: setting it ends
        :attr:`_direct`."""
        return self._close_sent

    @close_sent.setter
    def close_sent(self, value: bool) -> None:
        self._close_sent = value
        self._direct = False

    def pause_writing(self) -> None:
        super().pause_writing()
        self._paused = True
        self._direct = False

    def resume_writing(self) -> None:
        super().resume_writing()
        self._paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._direct = False
        super().connection_lost(exc)
        # The scope holds the bound send_now, which holds this protocol, which holds the scope:
        # without this, every closed connection waited for the cycle collector.
        scope = getattr(self, "scope", None)  # none before the handshake
        if scope is not None:
            scope["extensions"].pop(SEND_NOW, None)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # else uvicorn refused it and made no scope
            self.scope["extensions"][SEND_NOW] = {"send": self.send_now}

    def send_now(self, frame: WireFrame) -> bool:
        transport = self.transport
        if self._direct and not transport.is_closing():
            transport.write(frame.wire)
            return True
        if (
            self._paused
            or not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.transport.is_closing()
        ):
            return False
        conn = self.conn
        if (
            conn.state is OPEN
            and not conn.extensions
            and not conn.expect_continuation_frame
            and not conn.writes
        ):
            self._direct = True
            transport.write(frame.wire)
            return True
        try:
            if frame.opcode == TEXT:
                conn.send_text(frame.payload)
            else:
                conn.send_binary(frame.payload)
        except InvalidState:
            return False  # closing: the ASGI send reports the disconnect
        self.transport.write(b"".join(conn.data_to_send()))
        return True


def send_now_of(scope: object) -> SendNow | None:
    """The connection's :data:`SEND_NOW` callable, if its server offers one."""
    if not isinstance(scope, dict):
        return None
    extension = scope.get("extensions", {}).get(SEND_NOW)
    send: SendNow | None = extension.get("send") if isinstance(extension, dict) else None
    return send
