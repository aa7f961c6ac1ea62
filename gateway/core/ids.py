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
