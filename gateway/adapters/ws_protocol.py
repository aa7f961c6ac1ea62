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

On a connection without extensions, whose protocol object has nothing waiting to go out and no
fragmented message open, a frame is its header and the payload (a server does not mask), so the
header is built here: building a ``Frame`` and serializing it through the protocol object was
about a tenth of the event loop's time at 10k connections.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from websockets.exceptions import InvalidState
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN

from gateway.adapters.ws_keepalive import DrainTolerantWebSocketProtocol

SEND_NOW: Final = "sync-gateway.send_now"
"""The scope extension: ``scope["extensions"][SEND_NOW]["send"]`` is a :data:`SendNow`."""

SendNow = Callable[[str | bytes], bool]
"""Write one frame (text for ``str``, binary for ``bytes``) now; ``False``: it was not sent,
send it through ASGI."""


class GatewayWebSocketProtocol(DrainTolerantWebSocketProtocol):
    """uvicorn's sans-I/O websocket protocol with the drain-tolerant keepalive and the
    :data:`SEND_NOW` extension (module docstring)."""

    _paused = False
    """The transport's buffer is over its high-water mark (``writable`` cleared)."""

    def pause_writing(self) -> None:
        super().pause_writing()
        self._paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self._paused = False

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # else uvicorn refused it and made no scope
            self.scope["extensions"][SEND_NOW] = {"send": self.send_now}

    def send_now(self, frame: str | bytes) -> bool:
        if (
            self._paused
            or not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.transport.is_closing()
        ):
            return False
        conn = self.conn
        if isinstance(frame, str):
            payload, opcode = frame.encode(), _TEXT
        else:
            payload, opcode = frame, _BINARY
        if (
            conn.state is OPEN
            and not conn.extensions
            and not conn.expect_continuation_frame
            and not conn.writes
        ):
            length = len(payload)
            if 125 < length < 65536:  # inline: the usual size of an events frame
                self.transport.write(_MEDIUM.pack(0x80 | opcode, 126, length) + payload)
            else:
                self.transport.write(frame_header(opcode, length) + payload)
            return True
        try:
            if opcode == _TEXT:
                conn.send_text(payload)
            else:
                conn.send_binary(payload)
        except InvalidState:
            return False  # closing: the ASGI send reports the disconnect
        self.transport.write(b"".join(conn.data_to_send()))
        return True


_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked, final, uncompressed frame (RFC 6455 §5.2)."""
    first = 0x80 | opcode
    if length < 126:
        return _SHORT.pack(first, length)
    if length < 65536:
        return _MEDIUM.pack(first, 126, length)
    return _LONG.pack(first, 127, length)


def send_now_of(scope: object) -> SendNow | None:
    """The connection's :data:`SEND_NOW` callable, if its server offers one."""
    if not isinstance(scope, dict):
        return None
    extension = scope.get("extensions", {}).get(SEND_NOW)
    send: SendNow | None = extension.get("send") if isinstance(extension, dict) else None
    return send
