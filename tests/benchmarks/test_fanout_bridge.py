"""The Kafka + broadcast() baseline: which channel a record is for, and the frame it sends."""

from __future__ import annotations

from benchmarks.fanout.baseline import BaselineServer
from benchmarks.fanout.bridge import Bridge, channel_of
from benchmarks.fanout.updates import TIME_CHARS, TIME_MARK, Updates


def test_the_channel_is_read_from_the_records_key() -> None:
    updates = Updates()
    for channel in (0, 7, 99, 4095):
        key, _ = updates.record(phase=1, channel=channel, seq=3)
        assert channel_of(key) == channel


def test_the_frame_is_the_template_stamped_with_the_records_event_time() -> None:
    template = (
        '{"type":"events","sub":"c","updates":[{"value":'
        '{"event_time":"2000-01-01T00:00:00.000000Z","x":1}}]}'
    )
    _, value = Updates().record(phase=1, channel=5, seq=0)
    text = value.decode()
    at = text.find(TIME_MARK) + len(TIME_MARK)
    stamp = text[at : at + TIME_CHARS]

    frame = Bridge(BaselineServer(), template).frame(value)

    assert frame == template.replace("2000-01-01T00:00:00.000000Z", stamp)
    assert stamp != "2000-01-01T00:00:00.000000Z"
    assert len(frame) == len(template)
