"""Ingest decisions for one batch: which events are rejected, which are in-batch duplicates,
and which must be stored. Pure: the store's answer is folded in by :func:`finish_batch`.

A batch is ``{"events": [envelope, ...]}``. Shape errors of the whole batch raise a
:class:`~gateway.errors.RequestError` (nothing is acked); problems of one event become a
``rejected`` result for that event only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Protocol

from gateway.core.envelope import Envelope, parse_envelope
from gateway.core.ids import EventId
from gateway.core.rejections import RejectCode, Rejection
from gateway.errors import BatchTooLarge, InFlightElsewhere, MalformedBody


class PayloadChecker(Protocol):
    """Validates a payload against the schema of its type and version."""

    def check(
        self, event_type: str, version: int, payload: Mapping[str, object]
    ) -> Rejection | None: ...


class Claim(Enum):
    """What the fleet (other gateway instances) says about one event id of a batch."""

    OURS = "ours"
    """Newly claimed by this instance, or already held by it: the local store decides."""
    COMMITTED_ELSEWHERE = "committed_elsewhere"
    """Another instance committed it within the dedup window: answer ``duplicate``."""
    PENDING_ELSEWHERE = "pending_elsewhere"
    """Another instance is storing it right now: the client should retry shortly."""


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class StorableEvent:
    """A validated event, ready for the store: its canonical bytes plus the columns we index."""

    event_id: EventId
    event_type: str
    event_version: int
    key: str
    source: str
    correlation_id: str
    value: bytes
    traceparent: str | None = None
    """W3C trace context of the request that brought the event (a Kafka header)."""

    @classmethod
    def from_envelope(cls, envelope: Envelope, encoded: bytes) -> StorableEvent:
        return cls(
            event_id=envelope.event_id,
            event_type=envelope.event_type,
            event_version=envelope.event_version,
            key=envelope.key,
            source=envelope.source,
            correlation_id=envelope.effective_correlation_id,
            value=encoded,
        )


@dataclass(frozen=True, slots=True)
class EventResult:
    """The answer for one event of a batch, in the batch's order."""

    index: int
    status: Status
    event_id: EventId | None = None
    error: Rejection | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"index": self.index, "status": self.status.value}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.error is not None:
            out["error"] = self.error.to_dict()
        return out


@dataclass(slots=True)
class BatchPlan:
    """Results decided without the store, plus the events the store must decide on."""

    results: list[EventResult | None]
    to_store: list[StorableEvent] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    """Batch index of each event in ``to_store``."""


@dataclass(frozen=True, slots=True)
class IngestLimits:
    max_batch_events: int
    max_event_bytes: int


def extract_events(body: object, limits: IngestLimits) -> list[object]:
    """The list of raw events of a decoded body, or a whole-request error."""
    if not isinstance(body, Mapping):
        raise MalformedBody('body must be an object {"events": [...]}')
    events = body.get("events")
    if not isinstance(events, list):
        raise MalformedBody('body must have an "events" array')
    unknown = set(body) - {"events"}
    if unknown:
        raise MalformedBody(f"unknown top-level field(s): {', '.join(sorted(map(str, unknown)))}")
    if len(events) > limits.max_batch_events:
        raise BatchTooLarge(
            f"{len(events)} events in one batch; at most {limits.max_batch_events} allowed"
        )
    return events


MayPublish = Callable[[str, str], bool]
"""Whether the caller may publish an event of this ``(event_type, source)``."""


def plan_batch(
    raw_events: Sequence[object],
    checker: PayloadChecker,
    limits: IngestLimits,
    may_publish: MayPublish | None = None,
) -> BatchPlan:
    """Validate every event; keep the first valid occurrence of each id for the store.

    With ``may_publish``, an event the caller may not publish is rejected with
    ``publish_forbidden`` before its payload is looked at.
    """
    plan = BatchPlan(results=[None] * len(raw_events))
    seen: set[EventId] = set()
    for index, raw in enumerate(raw_events):
        outcome = parse_envelope(raw)
        if isinstance(outcome, Rejection):
            plan.results[index] = EventResult(index, Status.REJECTED, _raw_id(raw), outcome)
            continue
        parsed, encoded = outcome
        if may_publish is not None and not may_publish(parsed.event_type, parsed.source):
            rejection: Rejection | None = Rejection(
                RejectCode.PUBLISH_FORBIDDEN,
                "the token does not allow publishing this event type from this source",
            )
            plan.results[index] = EventResult(index, Status.REJECTED, parsed.event_id, rejection)
            continue
        rejection = checker.check(parsed.event_type, parsed.event_version, parsed.payload)
        storable = StorableEvent.from_envelope(parsed, encoded) if rejection is None else None
        if storable is not None and len(storable.value) > limits.max_event_bytes:
            rejection = Rejection(
                RejectCode.EVENT_TOO_LARGE,
                f"encoded event is {len(storable.value)} bytes; limit {limits.max_event_bytes}",
            )
        if rejection is not None or storable is None:
            plan.results[index] = EventResult(index, Status.REJECTED, parsed.event_id, rejection)
        elif parsed.event_id in seen:
            plan.results[index] = EventResult(index, Status.DUPLICATE, parsed.event_id)
        else:
            seen.add(parsed.event_id)
            plan.to_store.append(storable)
            plan.slots.append(index)
    return plan


def apply_fleet_claims(plan: BatchPlan, claims: Mapping[str, Claim]) -> BatchPlan:
    """The plan once the fleet has spoken: events another instance committed become
    ``duplicate`` and leave the store's share. Raises :class:`InFlightElsewhere` if another
    instance is storing one of them right now (the whole batch is retried shortly)."""
    if any(claims.get(e.event_id) is Claim.PENDING_ELSEWHERE for e in plan.to_store):
        raise InFlightElsewhere("another gateway instance is storing an event of this batch")
    kept = BatchPlan(results=list(plan.results))
    for slot, event in zip(plan.slots, plan.to_store, strict=True):
        if claims.get(event.event_id) is Claim.COMMITTED_ELSEWHERE:
            kept.results[slot] = EventResult(slot, Status.DUPLICATE, event.event_id)
        else:
            kept.to_store.append(event)
            kept.slots.append(slot)
    return kept


def finish_batch(plan: BatchPlan, stored: Sequence[bool]) -> list[EventResult]:
    """Fold in the store's answer: ``stored[i]`` is True when ``to_store[i]`` was new."""
    if len(stored) != len(plan.to_store):
        raise ValueError("the store must answer once per event it was given")
    results = list(plan.results)
    for slot, event, new in zip(plan.slots, plan.to_store, stored, strict=True):
        results[slot] = EventResult(
            slot, Status.ACCEPTED if new else Status.DUPLICATE, event.event_id
        )
    return [result for result in results if result is not None]


def _raw_id(raw: object) -> EventId | None:
    if isinstance(raw, Mapping):
        value = raw.get("event_id")
        if isinstance(value, str) and len(value) <= 128 and value.isprintable():
            try:
                value.encode()
            except UnicodeEncodeError:  # an unpaired surrogate: never echo it
                return None
            return EventId(value)
    return None
