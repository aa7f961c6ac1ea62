"""Distinct types for the identifiers and positions that flow through the gateway."""

from typing import NewType

EventId = NewType("EventId", str)
"""Idempotency key of an event: a canonical lowercase UUID string."""

LocalSeq = NewType("LocalSeq", int)
"""Position of an event in one gateway's local store (monotonic, commit order)."""

InstanceId = NewType("InstanceId", str)
"""Stable identity of one gateway instance (names its transactional id and position)."""

KafkaOffset = NewType("KafkaOffset", int)
"""Offset of a record in one Kafka partition."""

Epoch = NewType("Epoch", str)
"""Names one history of the streamed topics (e.g. derived from the Kafka cluster id and topic
ids); a cursor is only valid in the epoch it was issued in."""

Channel = NewType("Channel", str)
"""A stream channel a client subscribes to, e.g. ``inventory:s-7`` (see ``core.channels``)."""
