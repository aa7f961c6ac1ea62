"""Websocket frames as the wire carries them, built once for every connection that sends the
same bytes.

A :class:`WireFrame` is one unmasked, final, uncompressed frame (RFC 6455 §5.2: a server does
not mask): its header and payload in one ``bytes``, ready for ``transport.write`` on a
connection without extensions. A connection with an extension (permessage-deflate) takes the
payload and frames it itself.

:class:`EventFrames` builds ``events`` frames in one copy (header, the part naming the
subscription, the updates' pieces) and keeps them by (updates, subscription id).
Live, the fan-out hands one :class:`~gateway.flows.subscription.Update` object to every
subscriber of a channel at the same cursor; clients of one app often name their subscriptions
alike (the SDK numbers them per connection), so at 10k connections most of them send the very
same frame. Building it per connection was about a quarter of the Python per frame; where every
connection names its subscription differently, each frame is still built, in one copy.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

from websockets.frames import Opcode

from gateway.adapters.stream_items import CACHE_ENTRIES, UpdatePieces
from gateway.core.cursor import CursorCodec
from gateway.core.stream_protocol import Encoding, FrameWriter
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


class WireFrame(NamedTuple):
    """One frame: ``wire`` is its header and payload (a text frame for ``opcode`` TEXT). A
    tuple: built once per frame on connections that do not share frames, and a frozen
    dataclass costs several times as much to make."""

    opcode: int
    wire: bytes
    header_length: int

    @property
    def payload(self) -> bytes:
        """The payload alone (a copy: for a connection with an extension, or the ASGI send)."""
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
    """``events`` frames for one writer (one encoding), kept per updates for their first few
    subscription ids; see the module docstring.

    A frame is joined in one copy: its header, the writer's :meth:`FrameWriter.events_parts`
    around the updates' pieces (:class:`UpdatePieces`, built once per update). The frames of
    the same updates (one update, or the same run of them: every subscriber of a channel at one
    cursor is given the same Update objects, several when a batch holds several records of the
    channel) are kept for up to ``ids_per_update`` subscription ids: where every connection
    names its subscription differently, keeping one frame per connection only churned memory
    (it doubled the Python per frame). Entries are keyed by the updates' ``id`` and hold the
    updates, so an id cannot be reused while its entry lives; when full, the cache is cleared
    (an update is live for one fan-out cycle; kept longer, entries fed the cycle collector:
    :data:`~gateway.adapters.stream_items.CACHE_ENTRIES`)."""

    __slots__ = ("_entries", "_ids", "_last", "_max", "_opcode", "_parts", "_piece_of")

    def __init__(
        self,
        writer: FrameWriter,
        codec: CursorCodec,
        max_entries: int = CACHE_ENTRIES,
        ids_per_update: int = 4,
    ):
        self._parts = writer.events_parts
        self._opcode = TEXT if writer.encoding is Encoding.JSON else BINARY
        self._piece_of = UpdatePieces(writer, codec, max_entries).of
        self._entries: dict[object, tuple[object, dict[str, WireFrame]]] = {}
        self._max = max_entries
        self._ids = ids_per_update
        self._last: tuple[object, str, WireFrame] = (None, "", wire_frame(b""))
        """The last one-update frame handed out, with its update and id: the fan-out asks for
        the same one for every subscriber of a channel in turn."""

    def of(self, sub_id: str, updates: Update | Sequence[Update]) -> WireFrame:
        """The ``events`` frame of ``updates`` (in order; or of one update) for subscription
        ``sub_id``."""
        last = self._last
        if last[0] is updates and last[1] == sub_id:  # the fan-out's next subscriber
            return last[2]
        if isinstance(updates, Update):  # the fan-out's direct write: no tuple to make
            single: Update | None = updates
            run: Sequence[Update] = ()
        else:
            single = updates[0] if len(updates) == 1 else None
            run = updates
        if single is not None:
            if last[0] is single and last[1] == sub_id:
                return last[2]
            held: object = single
            key: object = id(single)
        else:
            held = tuple(run)
            key = tuple(map(id, run))
        entry = self._entries.get(key)
        if entry is not None:
            frames = entry[1]
            frame = frames.get(sub_id)
            if frame is not None:
                if single is not None:
                    self._last = (single, sub_id, frame)
                return frame
        else:
            if len(self._entries) >= self._max:
                self._entries.clear()
            frames = {}
            self._entries[key] = (held, frames)
        frame = self._build(sub_id, run if single is None else (single,))
        if len(frames) < self._ids:
            frames[sub_id] = frame
        if single is not None:
            self._last = (single, sub_id, frame)
        return frame

    def _build(self, sub_id: str, updates: Sequence[Update]) -> WireFrame:
        prefix, separator, suffix = self._parts(sub_id, len(updates))
        piece_of = self._piece_of
        if len(updates) == 1:
            body = piece_of(updates[0])
        else:
            body = separator.join([piece_of(u) for u in updates])
        header = frame_header(self._opcode, len(prefix) + len(body) + len(suffix))
        return WireFrame(self._opcode, b"".join((header, prefix, body, suffix)), len(header))
