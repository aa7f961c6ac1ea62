"""What the forwarder writes to Kafka for a batch of stored events (pure).

Each stored event becomes a record on its aggregate's topic, keyed by the aggregate id, valued
with the envelope, with the metadata in headers. An event Kafka refuses for good becomes a
dead-letter record instead, carrying the reason, in the same transaction as the rest of the
batch and the forwarder's position, so a dead letter is written exactly once too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from gateway.core.ids import InstanceId, LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.core.records import OutRecord, StoredEvent
from gateway.core.routing import TopicRouter

CONTENT_TYPE = b"application/json"
DAMAGED_REASON = "stored bytes damaged (checksum mismatch): not forwarded, kept in quarantine"


def metadata_headers(event: StorableEvent) -> tuple[tuple[str, bytes], ...]:
    headers: tuple[tuple[str, bytes], ...] = (
        ("event_id", event.event_id.encode()),
        ("event_type", event.event_type.encode()),
        ("event_version", str(event.event_version).encode()),
        ("source", event.source.encode()),
        ("correlation_id", event.correlation_id.encode()),
        ("content-type", CONTENT_TYPE),
    )
    if event.traceparent is not None:
        headers += (("traceparent", event.traceparent.encode()),)
    return headers


def event_record(stored: StoredEvent, router: TopicRouter) -> OutRecord:
    event = stored.event
    return OutRecord(
        seq=stored.seq,
        topic=router.topic_for(event.event_type),
        key=event.key.encode(),
        value=event.value,
        headers=metadata_headers(event),
    )


def dead_letter_record(
    stored: StoredEvent,
    reason: str,
    *,
    topic: str,
    intended_topic: str,
    instance: InstanceId,
    max_bytes: int,
) -> OutRecord:
    """The dead letter of an event: metadata and reason, plus the envelope if it fits."""
    event = stored.event
    letter: dict[str, object] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "event_version": event.event_version,
        "key": event.key,
        "source": event.source,
        "intended_topic": intended_topic,
        "reason": reason,
        "gateway_instance": instance,
        "local_seq": stored.seq,
        "received_at_ms": stored.received_at_ms,
    }
    encoded = base64.b64encode(event.value).decode()
    if stored.damaged:
        letter["envelope_b64"] = None
        letter["envelope_note"] = "damaged in the gateway's store; kept in quarantine"
    elif len(encoded) + 2048 <= max_bytes:
        letter["envelope_b64"] = encoded
    else:
        letter["envelope_b64"] = None
        letter["envelope_note"] = "too large for the dead-letter topic; kept in quarantine"
    return OutRecord(
        seq=stored.seq,
        topic=topic,
        key=event.key.encode(),
        value=json.dumps(letter, separators=(",", ":")).encode(),
        headers=(*metadata_headers(event), ("dlq_reason", reason.encode()[:1000])),
    )


@dataclass(frozen=True, slots=True)
class BatchRecords:
    records: list[OutRecord]
    dead_letters: dict[LocalSeq, str]
    """Sequence -> reason, for every event of the batch that goes to the dead letters."""
    position: LocalSeq


def plan_records(
    batch: Sequence[StoredEvent],
    refused: Mapping[LocalSeq, str],
    *,
    bare_letters: AbstractSet[LocalSeq] = frozenset(),
    router: TopicRouter,
    dead_letter_topic: str,
    instance: InstanceId,
    max_record_bytes: int,
) -> BatchRecords:
    """Records for ``batch`` in store order; known refusals and oversize records become
    dead letters (without the envelope for sequences in ``bare_letters``, whose full dead
    letter was refused too). ``position`` is the batch's last sequence."""
    records: list[OutRecord] = []
    dead: dict[LocalSeq, str] = {}
    for stored in batch:
        record = event_record(stored, router)
        reason = DAMAGED_REASON if stored.damaged else refused.get(stored.seq)
        near_limit = len(record.value) + 4096 > max_record_bytes  # headers and key are small
        if reason is None and near_limit and record.size > max_record_bytes:
            reason = f"record of ~{record.size} bytes exceeds the {max_record_bytes}-byte limit"
        if reason is not None:
            dead[stored.seq] = reason
            record = dead_letter_record(
                stored,
                reason,
                topic=dead_letter_topic,
                intended_topic=record.topic,
                instance=instance,
                max_bytes=0 if stored.seq in bare_letters or stored.damaged else max_record_bytes,
            )
        records.append(record)
    return BatchRecords(records, dead, batch[-1].seq)
