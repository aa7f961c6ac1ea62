"""What the clients of a reliability scenario logged, for the checker to compare with Kafka:
each event a client holds an acknowledgement for (:class:`Ack`) and, per subscriber and
channel, the updates it received (:class:`StreamLog` of :class:`Received`), each named by its
place in Kafka (:data:`Position`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Position = tuple[str, int, int]
"""A record's place in Kafka: (topic, partition, offset)."""


@dataclass(frozen=True, slots=True)
class Ack:
    """One event a client holds an acknowledgement for (``accepted`` or ``duplicate``).

    ``order`` is the client's own sequence number of the ack: events of one ``key`` acked by
    one ``client`` in increasing ``order`` within the same ``scope`` must appear in Kafka in
    that order. ``scope`` names what the order is promised within (e.g. the instance that
    stored the event, in a fleet); ``None`` is one scope of its own (a single gateway).
    """

    event_id: str
    key: str
    client: str
    order: int
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """One update a stream client received (and applied) on one of its channels."""

    topic: str
    partition: int
    offset: int
    channel: str

    @property
    def position(self) -> Position:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class StreamLog:
    """Everything one client received on one channel, in the order it received it.

    ``since`` gives, per (topic, partition), the first offset the client is owed (where its
    first subscription started); partitions not named are owed from offset 0, and ``None``
    means the whole history of the channel.
    """

    client: str
    channel: str
    received: Sequence[Received]
    since: Mapping[tuple[str, int], int] | None = None


def position_text(position: Position) -> str:
    """``topic[partition]@offset``."""
    return f"{position[0]}[{position[1]}]@{position[2]}"
