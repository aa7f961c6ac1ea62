"""A lean websocket client for the benchmark's receiving side: one ``asyncio.Protocol`` per
connection that writes and checks the opening handshake itself and parses the server's frames
straight out of its receive buffer, handing each message to a callback.

Why: the clients share the machine with the gateway they measure. The ``websockets`` asyncio
client spends, per message, a parser generator, a frame object, an assembler and a task wake-up;
this one spends a few slices and a decode, so more of the two cores is left to the gateway (the
system under test). It is not a general client: no extensions (compression needs
``--client websockets``), no outgoing fragmentation, text and control frames only in practice.
Incoming frames are checked (no mask, known opcodes, fragments in order), and a violation closes
the connection with 1002 and is reported as the close code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD_LIMIT = 16 * 1024
MAX_MESSAGE = 64 * 1024 * 1024

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NO_STATUS, ABNORMAL, PROTOCOL_ERROR = 1005, 1006, 1002

Message = str | bytes


class HandshakeError(Exception):
    """The server did not switch protocols as asked."""


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN set, masked as RFC 6455 requires of clients)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + masked


class RawWebSocket(asyncio.Protocol):
    """One client connection. ``opened`` resolves after the handshake, ``closed`` with the
    close code (1006 when the connection was lost without a close frame)."""

    def __init__(
        self, host: str, path: str, subprotocol: str, on_message: Callable[[Message], None]
    ) -> None:
        self._on_message = on_message
        self._key = base64.b64encode(os.urandom(16))
        self._subprotocol = subprotocol
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        ).encode()
        self._buf = bytearray()
        self._open = False
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._transport: asyncio.Transport | None = None
        self._close_sent = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._open or self._handshake():
            self._frames()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        self._finish(ABNORMAL)

    # ---- the caller's side

    def send_text(self, text: str) -> None:
        if self._transport is not None and not self._close_sent:
            self._transport.write(_frame(TEXT, text.encode()))

    async def close(self, timeout_s: float) -> int:
        """Send a close frame (1000), wait for the server's (or ``timeout_s``), then cut."""
        self._send_close(1000)
        try:
            return await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)
        except TimeoutError:
            self.abort()
            return await self.closed

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ---- inside

    def _handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > HEAD_LIMIT:
                self._refuse("response head too large")
            return False
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        if len(status) < 2 or status[1] != "101":
            self._refuse(f"status {' '.join(status[1:])}")
        elif headers.get("sec-websocket-accept") != accept:
            self._refuse("wrong Sec-WebSocket-Accept")
        elif headers.get("sec-websocket-protocol") != self._subprotocol:
            self._refuse(f"subprotocol {headers.get('sec-websocket-protocol')!r}")
        else:
            self._open = True
            self.opened.set_result(None)
        return self._open

    def _refuse(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(why))
        self.abort()

    def _frames(self) -> None:
        buf = self._buf
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, pos + 2)
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            end = pos + head + length
            if b1 & 0x80 or b0 & 0x70 or length > MAX_MESSAGE:
                self._fail()  # masked by the server, reserved bits, or absurd size
                return
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            if not self._frame_in(b0 & 0x80, b0 & 0x0F, payload):
                return
        del buf[:pos]

    def _frame_in(self, fin: int, opcode: int, payload: bytes) -> bool:
        """One frame; False once the connection is closing."""
        if opcode in (TEXT, BINARY):
            if self._fragments:
                self._fail()
                return False
            if fin:
                self._on_message(payload.decode() if opcode == TEXT else payload)
            else:
                self._fragments, self._fragment_opcode = [payload], opcode
        elif opcode == CONT:
            if not self._fragments:
                self._fail()
                return False
            self._fragments.append(payload)
            if fin:
                whole = b"".join(self._fragments)
                self._fragments = []
                self._on_message(whole.decode() if self._fragment_opcode == TEXT else whole)
        elif opcode == PING:
            if self._transport is not None and not self._close_sent:
                self._transport.write(_frame(PONG, payload))
        elif opcode == PONG:
            pass
        elif opcode == CLOSE:
            code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else NO_STATUS
            self._send_close(code if len(payload) >= 2 else None)
            self._finish(code)
            if self._transport is not None:
                self._transport.close()
            return False
        else:
            self._fail()
            return False
        return True

    def _send_close(self, code: int | None) -> None:
        if self._transport is None or self._close_sent or self._transport.is_closing():
            return
        self._close_sent = True
        self._transport.write(_frame(CLOSE, b"" if code is None else struct.pack("!H", code)))

    def _fail(self) -> None:
        self._send_close(PROTOCOL_ERROR)
        self._finish(PROTOCOL_ERROR)
        self.abort()

    def _finish(self, code: int) -> None:
        if not self.closed.done():
            self.closed.set_result(code)


async def open_raw(
    url: str, subprotocol: str, on_message: Callable[[Message], None], timeout_s: float
) -> RawWebSocket:
    """Connect to ``ws://host:port/path`` and complete the handshake within ``timeout_s``."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"only ws:// URLs with a host: {url!r}")
    port = parts.port or 80
    loop = asyncio.get_running_loop()
    host = f"{parts.hostname}:{port}"

    def factory() -> RawWebSocket:
        return RawWebSocket(host, parts.path or "/", subprotocol, on_message)

    async with asyncio.timeout(timeout_s):
        _, ws = await loop.create_connection(factory, parts.hostname, port)
        try:
            await ws.opened
        except BaseException:
            ws.abort()
            raise
    return ws
