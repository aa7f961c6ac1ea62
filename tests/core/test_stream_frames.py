"""``events`` frames built from pre-encoded updates (:meth:`FrameWriter.update_piece` and
:meth:`FrameWriter.events_of`, or its :meth:`FrameWriter.events_parts` joined by hand) are the
frames :meth:`FrameWriter.events` builds, byte for byte (encoded), and decode to the updates in
order with their own cursors."""

from __future__ import annotations

import json

import msgpack
import pytest

from gateway.core.stream_protocol import Encoding, FrameWriter, UpdateView


def views(count: int) -> list[UpdateView]:
    return [
        UpdateView(
            "inventory.events",
            i % 3,
            i,
            None if i % 4 == 0 else f"s-1:SKU-{i}é".encode(),
            1_700_000_000_000 + i,
            b"" if i % 5 == 0 else json.dumps({"n": i, "t": "é"}).encode(),
            f"cursor-{i}",
        )
        for i in range(count)
    ]


def encoded(frame: str | bytes, encoding: Encoding) -> bytes:
    """A frame of :meth:`FrameWriter.events`: text for JSON, bytes for msgpack."""
    if encoding is Encoding.JSON:
        assert isinstance(frame, str)
        return frame.encode()
    assert isinstance(frame, bytes)
    return frame


def decode(frame: bytes, encoding: Encoding) -> dict[str, object]:
    decoded = json.loads(frame) if encoding is Encoding.JSON else msgpack.unpackb(frame)
    assert isinstance(decoded, dict)
    return decoded


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("count", [0, 1, 2, 15, 16, 17, 300, 65_535, 65_536])
def test_events_of_pieces_is_the_events_frame(encoding: Encoding, count: int) -> None:
    writer = FrameWriter(encoding)
    updates = views(count)
    reference = FrameWriter(encoding)  # a fresh writer: nothing cached
    pieces = [writer.update_piece(u) for u in updates]
    built = writer.events_of("sub-1", pieces)
    assert built == encoded(reference.events("sub-1", updates), encoding)
    prefix, separator, suffix = writer.events_parts("sub-1", count)
    assert prefix + separator.join(pieces) + suffix == built
    frame = decode(built, encoding)
    assert frame["type"] == "events"
    assert frame["sub"] == "sub-1"
    events = frame["events"]
    assert isinstance(events, list)
    assert [(e["partition"], e["offset"], e["cursor"]) for e in events] == [
        (u.partition, u.offset, u.cursor) for u in updates
    ]
    if count:
        assert events[1 % count]["data"] == (
            json.loads(updates[1 % count].value) if updates[1 % count].value else None
        )


@pytest.mark.parametrize("encoding", list(Encoding))
def test_pieces_are_shared_across_subscription_ids(encoding: Encoding) -> None:
    writer = FrameWriter(encoding)
    updates = views(5)
    pieces = [writer.update_piece(u) for u in updates]
    for sub in ("a", "b", 'q"uote', "é", "a", "b"):
        frame = writer.events_of(sub, pieces)
        assert frame == encoded(FrameWriter(encoding).events(sub, updates), encoding)
        assert decode(frame, encoding)["sub"] == sub
