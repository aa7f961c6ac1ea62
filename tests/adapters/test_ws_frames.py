"""Wire frames and the ``events`` frames shared by connections (:mod:`gateway.adapters.ws_frames`).

- a wire frame is the RFC 6455 header of its length (7-bit, 16-bit, 64-bit form) and the
  payload, parsed back by the websockets library's own frame reader;
- an ``events`` frame kept for (updates, subscription id) is built once (for the updates'
  first ``ids_per_update`` ids), is never handed to another subscription id, other updates
  (another one, another run, the same ones in another order, a part of them), and stays
  right across the cache being cleared.
"""

from __future__ import annotations

import gc
import json

import msgpack
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.adapters.stream_items import update_view
from gateway.adapters.ws_frames import EventFrames, WireFrame, wire_frame
from gateway.core.cursor import Cursor, CursorCodec
from gateway.core.ids import Epoch
from gateway.core.stream_protocol import Encoding, FrameWriter
from gateway.flows.subscription import Update
from gateway.gc_policy import GC_THRESHOLDS
from tests.adapters.test_downstream_log import INV, rec

EPOCH = Epoch("e1")
CODEC = CursorCodec(b"k" * 32)
CHANNEL = "inventory:s1"


def parse(frame: WireFrame) -> Frame:
    """The frame as a websockets client reads it."""
    reader = StreamReader()
    reader.feed_data(frame.wire)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        parsed: Frame = done.value
        assert reader.at_eof()  # nothing after the payload
        return parsed
    raise AssertionError("the frame is incomplete")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_wire_frames_parse_back_text_and_binary(size: int) -> None:
    text = wire_frame("é" * (size // 2) + "t" * (size % 2))
    parsed = parse(text)
    assert (parsed.opcode, parsed.fin, parsed.data) == (Opcode.TEXT, True, text.payload)
    assert text.payload.decode() == "é" * (size // 2) + "t" * (size % 2)
    binary = wire_frame(bytes([size % 251]) * size)
    parsed = parse(binary)
    assert (parsed.opcode, parsed.fin, parsed.data) == (Opcode.BINARY, True, binary.payload)
    assert binary.payload == bytes([size % 251]) * size


def updates(count: int) -> list[Update]:
    return [
        Update(rec(INV, 0, offset, CHANNEL), Cursor(EPOCH, {INV: {0: offset + 1}}))
        for offset in range(count)
    ]


def decoded(frame: WireFrame, encoding: Encoding) -> dict[str, object]:
    parsed = parse(frame)
    if encoding is Encoding.JSON:
        assert parsed.opcode is Opcode.TEXT
        value: dict[str, object] = json.loads(bytes(parsed.data))
    else:
        assert parsed.opcode is Opcode.BINARY
        value = msgpack.unpackb(parsed.data, raw=False)
    return value


def expected(sub: str, batch: list[Update], writer: FrameWriter) -> dict[str, object]:
    """The frame as the writer builds it from the updates alone (no pieces, no cache)."""
    frame = wire_frame(
        FrameWriter(writer.encoding).events(sub, [update_view(u, CODEC) for u in batch])
    )
    return decoded(frame, writer.encoding)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_event_frames_are_shared_per_update_and_sub_id_only(encoding: Encoding) -> None:
    writer = FrameWriter(encoding)
    frames = EventFrames(writer, CODEC, max_entries=3, ids_per_update=2)
    batch = updates(4)
    first = frames.of("a", [batch[0]])
    assert frames.of("a", [batch[0]]) is first  # built once for every connection
    assert frames.of("b", [batch[0]]) is frames.of("b", [batch[0]])
    third = frames.of("c", [batch[0]])
    assert frames.of("c", [batch[0]]) is third  # the last frame asked for, asked again
    assert frames.of("a", [batch[0]]) is first
    assert frames.of("c", [batch[0]]) is not third  # over ids_per_update: not kept
    for _ in range(2):  # the cache fills and is cleared along the way
        for update in batch:
            for sub in ("a", "b", "c", "a"):
                got = decoded(frames.of(sub, [update]), encoding)
                assert got == expected(sub, [update], writer)
                assert got["sub"] == sub
    several = decoded(frames.of("a", batch[:3]), encoding)
    assert several == expected("a", batch[:3], writer)
    assert decoded(frames.of("a", batch[:1]), encoding) == expected("a", batch[:1], writer)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_frames_of_several_updates_are_shared_per_run_and_sub_id(encoding: Encoding) -> None:
    writer = FrameWriter(encoding)
    frames = EventFrames(writer, CODEC, max_entries=4, ids_per_update=2)
    batch = updates(4)
    run = frames.of("a", batch[:2])
    assert frames.of("a", list(batch[:2])) is run  # another list of the same updates
    assert frames.of("b", batch[:2]) is not run
    runs = [batch[:2], batch[1:3], batch[:3], [batch[1], batch[0]], batch[:1], batch[1:2]]
    for _ in range(2):  # the cache fills and is cleared along the way
        for each in runs:
            for sub in ("a", "b", "c"):
                assert decoded(frames.of(sub, each), encoding) == expected(sub, each, writer)
    twins = updates(2)  # equal values, other objects: a frame of their own
    assert frames.of("a", twins) is not frames.of("a", batch[:2])


def test_the_caches_keep_too_few_objects_to_start_a_young_collection() -> None:
    """Frames and pieces are needed for one fan-out cycle. Kept longer (8,192 of each), what
    they hold outlived :data:`GC_THRESHOLDS`' young threshold and the collector ran every
    fifth of a second at 1k connections (see ``CACHE_ENTRIES``). Either cache at 8,192 fails
    this."""
    writer = FrameWriter(Encoding.JSON)
    frames = EventFrames(writer, CODEC)
    young_threshold = GC_THRESHOLDS[0]
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for offset in range(3 * young_threshold):
            update = Update(rec(INV, 0, offset, CHANNEL), Cursor(EPOCH, {INV: {0: offset + 1}}))
            for sub in ("a", "b"):
                frames.of(sub, update)
                frames.of(sub, [update])
            del update
        kept = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert kept < young_threshold // 2, kept
