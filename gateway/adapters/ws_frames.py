"""Websocket frames as the wire carries them, built once for every connection that sends the
same bytes.

A :class:`WireFrame` is one unmasked, final, uncompressed frame (RFC 6455 §5.2: a server does
not mask): its header and payload in one ``bytes``, ready for ``transport.write`` on a
connection without extensions. A connection with an extension (permessage-deflate) takes the
payload and frames it itself.

:class:`EventFrames` keeps the ``events`` frames of one update by (update, subscription id).
Live, the fan-out hands one :class:`~gateway.flows.subscription.Update` object to every
subscriber of a channel at the same cursor; clients of one app name their subscriptions alike,
so at 10k connections most of them send the very same frame. Building it per connection (the
frame text, its UTF-8 bytes, the header, their concatenation) was about a quarter of the
Python per frame.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from websockets.frames import Opcode

from gateway.adapters.stream_items import UpdatePieces
from gateway.core.stream_protocol import FrameWriter
from gateway.flows.subscription import Update

TEXT: Final = int(Opcode.TEXT)
BINARY: Final = int(Opcode.BINARY)
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


@dataclass(frozen=True, slots=True)
class WireFrame:
    """One frame: ``wire`` is its header and payload (a text frame for ``opcode`` TEXT)."""

    opcode: int
    wire: bytes
    header_length: int

    @property
    def payload(self) -> bytes:
        """The payload alone (a copy: only connections with an extension need it)."""
        return self.wire[self.header_length :]


def wire_frame(frame: str | bytes) -> WireFrame:
    """The frame of a message: text for ``str``, binary for ``bytes``."""
    if isinstance(frame, str):
        payload, opcode = frame.encode(), TEXT
    else:
        payload, opcode = frame, BINARY
    header = frame_header(opcode, len(payload))
    return WireFrame(opcode, header + payload, len(header))


class EventFrames:
    """``events`` frames for one writer (one encoding), the one-update frames kept by
    (update, subscription id); see the module docstring.

    Keyed by the update's ``id``; each entry holds its update, so the id cannot be reused while
    the entry lives. When full, the cache is cleared (entries are short-lived: an update is
    live for one fan-out cycle)."""

    __slots__ = ("_entries", "_events_of", "_max", "_piece_of")

    def __init__(self, writer: FrameWriter, pieces: UpdatePieces, max_entries: int = 8192):
        self._events_of = writer.events_of
        self._piece_of = pieces.of
        self._entries: dict[tuple[int, str], tuple[Update, WireFrame]] = {}
        self._max = max_entries

    def of(self, sub_id: str, updates: Sequence[Update]) -> WireFrame:
        """The ``events`` frame of ``updates`` (in order) for subscription ``sub_id``."""
        if len(updates) != 1:
            piece_of = self._piece_of
            return wire_frame(self._events_of(sub_id, [piece_of(u) for u in updates]))
        update = updates[0]
        key = (id(update), sub_id)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is update:
            return entry[1]
        frame = wire_frame(self._events_of(sub_id, [self._piece_of(update)]))
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (update, frame)
        return frame
