"""A websocket keepalive that does not drop a client still draining its socket.

uvicorn's keepalive (``WebSocketsSansIOProtocol``) fails a connection with 1011 when a ping
gets no pong within ``ws_ping_timeout``. The ping is written behind everything already queued
toward the client: the transport's write buffer and the kernel's send queue, megabytes on
loopback. A client that keeps reading, but slower than the stream writes, gets the ping only
after all of that and answers late, so it was dropped, although docs/protocol.md §13.5 says
such a client is never "slow": only one that stops reading is closed.

:class:`DrainTolerantWebSocketProtocol` keeps uvicorn's keepalive and changes one decision:
when the pong deadline passes, the connection fails only if the client took no more than the
ping's own bytes since the ping was sent, or since the previous extension. If it took more, the
deadline moves on by another ``ws_ping_timeout``. A client that stops reading stops taking
bytes once its receive buffer is full and is failed with 1011 at the next deadline; an idle
client that does not answer is failed at the first deadline, as before.

"Took" is the kernel's count of bytes the client's TCP stack acknowledged (``tcpi_bytes_acked``
of ``TCP_INFO``, Linux 4.1 and later), which only grows. The level of the queue (write buffer
plus ``TIOCOUTQ``) cannot say it: while the stream has updates to send it refills the queue
as the client drains it, and fills it further while a burst arrives, so the level of a client
that reads steadily stands still or rises (a deadline that asked it to fall dropped the slow
client of ``tests/integration/test_stream_keepalive.py`` as uvicorn's did). Where the count
cannot be read (another system, a Unix socket), the deadline is uvicorn's. The count does not
see the client's application read what its own receive buffer already holds: one that holds
more there than it reads in ``ws_ping_timeout``, with nothing sent behind the ping, is still
failed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from typing import Final

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

_TCP_INFO_BYTES_ACKED: Final = struct.Struct("=Q")
"""``tcpi_bytes_acked`` (``__u64``) in Linux's ``struct tcp_info``."""
_TCP_INFO_BYTES_ACKED_OFFSET: Final = 120
_TCP_INFO_LENGTH: Final = _TCP_INFO_BYTES_ACKED_OFFSET + _TCP_INFO_BYTES_ACKED.size
PING_FRAME_BYTES: Final = 2 + 4
"""A server's ping: 2 header bytes and uvicorn's 4-byte payload. A client whose kernel took
only the ping has not drained anything."""


def bytes_acked(transport: asyncio.BaseTransport) -> int | None:
    """Bytes the peer of ``transport`` has acknowledged so far; ``None`` where unknown."""
    if sys.platform != "linux":
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info: bytes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
    except OSError:  # not TCP (a Unix socket), or already closed
        return None
    if len(info) < _TCP_INFO_LENGTH:  # a kernel older than 4.1
        return None
    acked: int = _TCP_INFO_BYTES_ACKED.unpack_from(info, _TCP_INFO_BYTES_ACKED_OFFSET)[0]
    return acked


def drained_beyond_ping(acked_at_mark: int | None, acked_now: int | None) -> int:
    """The keepalive's decision at a pong deadline: the bytes the peer took since the mark
    beyond a ping frame's own. More than 0: the peer is draining and the pong may still be on
    its way behind them, so the deadline is extended. 0, also when either count is unknown:
    the connection fails."""
    if acked_at_mark is None or acked_now is None:
        return 0
    return max(0, acked_now - acked_at_mark - PING_FRAME_BYTES)


class DrainTolerantWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol whose pong deadline waits for a client that is
    still draining the data queued ahead of the ping (module docstring)."""

    _acked_at_mark: int | None = None
    """Bytes the client had acknowledged when the ping was sent or the deadline extended."""

    def send_keepalive_ping(self) -> None:
        self._acked_at_mark = bytes_acked(self.transport)
        super().send_keepalive_ping()

    def keepalive_timeout(self) -> None:
        acked = bytes_acked(self.transport)
        drained = drained_beyond_ping(self._acked_at_mark, acked)
        if (
            drained > 0
            and self.ping_timeout is not None
            and self.pending_ping_payload is not None
            and not self.close_sent
            and not self.transport.is_closing()
        ):
            self.logger.log(
                TRACE_LOG_LEVEL,
                "%s - WebSocket keepalive deadline extended: %d bytes drained",
                self.client,
                drained,
            )
            self._acked_at_mark = acked
            self.pong_timer = self.loop.call_later(self.ping_timeout, self.keepalive_timeout)
            return
        super().keepalive_timeout()
