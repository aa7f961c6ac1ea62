"""The reliability checker: what the clients were told against what reached Kafka.

Every fault scenario ends the same way: the clients kept a log of the events the gateway
acknowledged (and of everything they sent), the subscribers kept a log of the updates they
received, and this module compares those logs with the Kafka topics, read to their end as a
``read_committed`` consumer downstream sees them. It reports

- **lost**: acknowledged, absent from Kafka and from every gateway store backlog (guarantee 1);
- **backlog**: acknowledged, absent from Kafka, but still waiting in a store above its
  forwarded mark (not lost, not delivered yet), and **quarantined** (in a store's quarantine,
  guarantee 4) or **dead-lettered** (in the dead-letter topic), each apart from the lost ones;
- **duplicated**: an ``event_id`` present more than once in Kafka (guarantees 2 and 3), and
  **raw duplicates**: identical value bytes present more than once (whatever their headers say);
- **phantom**: in Kafka, but never sent by any client;
- **out of order**: two events of one key that one client had acknowledged in sequence and
  that Kafka holds in the other order (only events acknowledged in the same ``scope`` are
  compared: in a fleet, per-key order holds per storing instance);
- for streams, per client and channel: **skipped** (an update of the channel the client never
  received), **repeated** (received more than once), **out of order** (received after a later
  offset of the same partition) and **unexpected** (not an update of that channel at all).

The comparison itself (:func:`check_records`) is pure; :func:`check` drains Kafka
(:func:`gateway.testing.kafka_reader.read_committed`) and reads the stores
(:func:`read_stores`) around it. The clients' logs are in :mod:`gateway.testing.checker_logs`,
the verdict in :mod:`gateway.testing.checker_report`, the stores' reading in
:mod:`gateway.testing.checker_stores`; every name is importable from here.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path

from gateway.core.channels import ChannelMapper
from gateway.testing.checker_logs import Ack, Position, Received, StreamLog, position_text
from gateway.testing.checker_report import EXAMPLES, OrderViolation, Report, StreamProblem
from gateway.testing.checker_stores import (
    STORE_FILE,
    StoreState,
    read_store,
    read_stores,
    store_path,
)
from gateway.testing.kafka_reader import ConsumedRecord, read_committed

__all__ = [
    "EXAMPLES",
    "STORE_FILE",
    "Ack",
    "ChannelsOf",
    "OrderViolation",
    "Position",
    "Received",
    "Report",
    "StoreState",
    "StreamLog",
    "StreamProblem",
    "channels_by_rules",
    "check",
    "check_records",
    "drain",
    "read_store",
    "read_stores",
    "record_event_id",
    "store_path",
]

ChannelsOf = Callable[[ConsumedRecord], Iterable[str]]
"""The channels a Kafka record belongs to (for the stream checks)."""


def channels_by_rules(spec: str | Iterable[str]) -> ChannelsOf:
    """A :data:`ChannelsOf` from channel rules as the gateway is configured with them
    (``SYNC_GATEWAY_CHANNEL_RULES``, e.g. ``"inv=inventory:{payload.storeId}"``)."""
    mapper = ChannelMapper.from_config(spec)

    def channels_of(record: ConsumedRecord) -> list[str]:
        if record.value is None:
            return []
        return [str(c) for c in mapper.channels_for(record.topic, record.value)]

    return channels_of


def record_event_id(record: ConsumedRecord) -> str:
    """The record's event id: its ``event_id`` header, else the envelope's field, else a
    placeholder naming the record's position (so that it still counts as a phantom)."""
    raw = record.headers.get("event_id")
    if raw is not None:
        return raw.decode(errors="replace").lower()
    try:
        value = json.loads(record.value or b"")
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("event_id"), str):
        return str(value["event_id"]).lower()
    return f"<no event id at {position_text((record.topic, record.partition, record.offset))}>"


def check_records(
    records: Sequence[ConsumedRecord],
    acked: Iterable[Ack],
    *,
    sent: Iterable[str] | None = None,
    streams: Sequence[StreamLog] = (),
    channels_of: ChannelsOf | None = None,
    stores: StoreState | None = None,
    dead_letters: Sequence[ConsumedRecord] = (),
) -> Report:
    """Compare the clients' logs with ``records`` (every committed record of the topics, in
    per-partition order as :func:`read_committed` returns them). No I/O.

    ``sent`` is every event id any client sent, acknowledged or not; without it only the
    acknowledged ids count as sent (so any other record is a phantom). ``channels_of`` is
    required when ``streams`` is not empty. ``stores`` (from :func:`read_stores`) separates
    acknowledged events still waiting in a store from lost ones; ``dead_letters`` are the
    records of the dead-letter topic.
    """
    acks = list(acked)
    acked_ids = {a.event_id.lower() for a in acks}
    sent_ids = {i.lower() for i in sent} if sent is not None else set(acked_ids)
    sent_ids |= acked_ids
    stores = stores if stores is not None else StoreState.empty()
    report = Report(acked=len(acked_ids), sent=len(sent_ids), records=len(records))

    first_at: dict[str, Position] = {}
    copies: Counter[str] = Counter()
    values: Counter[bytes] = Counter()
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        event_id = record_event_id(record)
        copies[event_id] += 1
        first_at.setdefault(event_id, (record.topic, record.partition, record.offset))
        if record.value is not None:
            values[record.value] += 1
    report.duplicated = {i: n for i, n in copies.items() if n > 1}
    report.raw_duplicates = {v: n for v, n in values.items() if n > 1}
    report.phantom = sorted(i for i in copies if i not in sent_ids)

    dead = {record_event_id(r) for r in dead_letters}
    for event_id in sorted(acked_ids - copies.keys()):
        if event_id in dead:
            report.dead_lettered.append(event_id)
        elif event_id in stores.quarantined:
            report.quarantined.append(event_id)
        elif event_id in stores.backlog:
            report.backlog.append(event_id)
        else:
            report.lost.append(event_id)

    report.out_of_order = _order_violations(acks, first_at)
    if streams:
        if channels_of is None:
            raise ValueError("channels_of is required to check streams")
        _check_streams(report, records, streams, channels_of)
    return report


def _order_violations(
    acks: Sequence[Ack], first_at: Mapping[str, Position]
) -> list[OrderViolation]:
    """Consecutive acks of one (client, key, scope) whose first copies in Kafka are not in
    increasing offset order on one partition."""
    groups: defaultdict[tuple[str, str, str | None], list[Ack]] = defaultdict(list)
    for ack in acks:
        groups[(ack.client, ack.key, ack.scope)].append(ack)
    violations: list[OrderViolation] = []
    for (client, key, _scope), group in groups.items():
        ordered = sorted(group, key=lambda a: a.order)
        present = [a for a in ordered if a.event_id.lower() in first_at]
        for before, after in pairwise(present):
            at_before = first_at[before.event_id.lower()]
            at_after = first_at[after.event_id.lower()]
            if at_before[:2] != at_after[:2] or at_before[2] > at_after[2]:
                violations.append(
                    OrderViolation(
                        client, key, before.event_id, after.event_id, at_before, at_after
                    )
                )
    return violations


def _check_streams(
    report: Report,
    records: Sequence[ConsumedRecord],
    streams: Sequence[StreamLog],
    channels_of: ChannelsOf,
) -> None:
    by_channel: defaultdict[str, list[Position]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        for channel in channels_of(record):
            by_channel[channel].append((record.topic, record.partition, record.offset))
    for log in streams:
        since = log.since
        owed = [
            p
            for p in by_channel.get(log.channel, [])
            if since is None or p[2] >= since.get((p[0], p[1]), 0)
        ]
        owed_set = set(owed)
        report.updates_expected += len(owed)
        report.updates_received += len(log.received)
        seen: Counter[Position] = Counter()
        last: dict[tuple[str, int], int] = {}
        for update in log.received:
            position = update.position
            seen[position] += 1
            if position not in owed_set:
                report.unexpected.append(StreamProblem(log.client, log.channel, position))
            if seen[position] > 1:
                report.repeated.append(
                    StreamProblem(log.client, log.channel, position, f"copy {seen[position]}")
                )
                continue
            partition = (update.topic, update.partition)
            previous = last.get(partition)
            if previous is not None and previous > update.offset:
                report.stream_out_of_order.append(
                    StreamProblem(log.client, log.channel, position, f"after offset {previous}")
                )
            last[partition] = max(previous or 0, update.offset)
        for p in owed:
            if p not in seen:  # a gap if a later update of its partition did arrive
                reached = last.get((p[0], p[1]))
                detail = f"gap: offset {reached} received" if reached and reached > p[2] else ""
                report.skipped.append(
                    StreamProblem(log.client, log.channel, p, detail or "never reached")
                )


async def drain(
    bootstrap: str, topics: Sequence[str], *, timeout_s: float = 120.0
) -> list[ConsumedRecord]:
    """Every committed record of ``topics`` (``read_committed``), up to their current end."""
    return await read_committed(bootstrap, topics, timeout_s=timeout_s)


async def check(
    bootstrap: str,
    topics: Sequence[str],
    acked: Iterable[Ack],
    *,
    sent: Iterable[str] | None = None,
    streams: Sequence[StreamLog] = (),
    channels_of: ChannelsOf | None = None,
    stores: Mapping[str, Path] | None = None,
    dead_letter_topic: str | None = None,
    timeout_s: float = 120.0,
) -> Report:
    """Drain ``topics`` (and the dead-letter topic) from Kafka, read the ``stores`` (name ->
    data dir) and :func:`check_records`."""
    records = await drain(bootstrap, topics, timeout_s=timeout_s)
    dead = (
        await drain(bootstrap, [dead_letter_topic], timeout_s=timeout_s)
        if dead_letter_topic is not None
        else []
    )
    state = await asyncio.to_thread(read_stores, stores) if stores else None
    return check_records(
        records,
        acked,
        sent=sent,
        streams=streams,
        channels_of=channels_of,
        stores=state,
        dead_letters=dead,
    )
