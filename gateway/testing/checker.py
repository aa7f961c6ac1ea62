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
(:func:`read_stores`) around it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Final

from gateway.core.channels import ChannelMapper
from gateway.testing.kafka_reader import ConsumedRecord, read_committed

EXAMPLES: Final = 5
"""How many examples of each kind of problem :meth:`Report.__str__` shows."""

STORE_FILE: Final = "gateway.sqlite3"
"""The name of a gateway's event store inside its data directory."""

Position = tuple[str, int, int]
"""A record's place in Kafka: (topic, partition, offset)."""

ChannelsOf = Callable[[ConsumedRecord], Iterable[str]]
"""The channels a Kafka record belongs to (for the stream checks)."""


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


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the gateway stores still hold: event ids above the forwarded mark (the backlog)
    and event ids in quarantine (not replayed), each with the store it was found in."""

    backlog: Mapping[str, tuple[str, ...]]
    quarantined: Mapping[str, tuple[str, ...]]
    stored: Mapping[str, tuple[str, ...]]
    """Every event id each store holds at all, with the stores (a cross-store duplicate shows
    two)."""

    @classmethod
    def empty(cls) -> StoreState:
        return cls({}, {}, {})


@dataclass(frozen=True, slots=True)
class OrderViolation:
    """Two events of one key, acked ``earlier`` then ``later`` by ``client``, that Kafka holds
    the other way round (or on different partitions)."""

    client: str
    key: str
    earlier: str
    later: str
    earlier_at: Position
    later_at: Position

    def __str__(self) -> str:
        return (
            f"{self.client} key {self.key!r}: {self.earlier} acked before {self.later}, "
            f"but Kafka has {_pos(self.earlier_at)} vs {_pos(self.later_at)}"
        )


@dataclass(frozen=True, slots=True)
class StreamProblem:
    """One stream anomaly of one client on one channel."""

    client: str
    channel: str
    position: Position
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.client} {self.channel}: {_pos(self.position)}{extra}"


@dataclass(slots=True)
class Report:
    """The checker's verdict: counts of each kind of problem, with the offenders."""

    acked: int = 0
    sent: int = 0
    records: int = 0
    lost: list[str] = field(default_factory=list)
    backlog: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    """event id -> number of copies in Kafka (2 or more)."""
    raw_duplicates: dict[bytes, int] = field(default_factory=dict)
    """value bytes -> number of identical records (2 or more)."""
    phantom: list[str] = field(default_factory=list)
    out_of_order: list[OrderViolation] = field(default_factory=list)
    updates_received: int = 0
    updates_expected: int = 0
    skipped: list[StreamProblem] = field(default_factory=list)
    repeated: list[StreamProblem] = field(default_factory=list)
    stream_out_of_order: list[StreamProblem] = field(default_factory=list)
    unexpected: list[StreamProblem] = field(default_factory=list)

    @property
    def duplicate_copies(self) -> int:
        """Extra copies in Kafka beyond the first, over every duplicated event id."""
        return sum(n - 1 for n in self.duplicated.values())

    @property
    def no_loss(self) -> bool:
        """Nothing acknowledged is missing for good (backlog and quarantine are not loss)."""
        return not self.lost

    @property
    def events_ok(self) -> bool:
        """Every acknowledged event exactly once in Kafka, nothing else there, in key order."""
        return not (
            self.lost
            or self.backlog
            or self.quarantined
            or self.dead_lettered
            or self.duplicated
            or self.raw_duplicates
            or self.phantom
            or self.out_of_order
        )

    @property
    def streams_ok(self) -> bool:
        """Every subscriber got every update of its channels exactly once, in order."""
        return not (self.skipped or self.repeated or self.stream_out_of_order or self.unexpected)

    @property
    def ok(self) -> bool:
        """No problem of any kind (an acknowledged event still in a backlog is one: it is not
        in Kafka yet)."""
        return self.events_ok and self.streams_ok

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"reliability check {verdict}: {self.acked} acked, {self.sent} sent, "
            f"{self.records} records in Kafka, {self.updates_received} updates received "
            f"({self.updates_expected} owed)"
        ]
        sections: list[tuple[str, Sequence[object]]] = [
            ("lost (acked, not in Kafka nor in any store)", self.lost),
            ("still in a store backlog (acked, not forwarded yet)", self.backlog),
            ("quarantined in a store", self.quarantined),
            ("dead-lettered", self.dead_lettered),
            (
                "duplicated event ids",
                [f"{i} x{n}" for i, n in sorted(self.duplicated.items())],
            ),
            (
                "raw duplicate values",
                [f"{v[:60]!r}... x{n}" for v, n in self.raw_duplicates.items()],
            ),
            ("phantom (in Kafka, never sent)", self.phantom),
            ("out of order per key", self.out_of_order),
            ("stream: skipped", self.skipped),
            ("stream: repeated", self.repeated),
            ("stream: out of order", self.stream_out_of_order),
            ("stream: unexpected (not of the channel)", self.unexpected),
        ]
        for title, items in sections:
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines.extend(f"    - {item}" for item in list(items)[:EXAMPLES])
                if len(items) > EXAMPLES:
                    lines.append(f"    - ... {len(items) - EXAMPLES} more")
        return "\n".join(lines)


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
    return f"<no event id at {_pos((record.topic, record.partition, record.offset))}>"


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


def store_path(path: Path) -> Path:
    """A store file from either its path or its gateway's data directory."""
    return path / STORE_FILE if path.is_dir() else path


def read_store(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(backlog ids, quarantined ids, all ids) of one gateway store, read-only (safe while
    the gateway runs: SQLite WAL readers do not block the writer). The backlog is every event
    above the store's local forwarded mark that is not quarantined; the local mark may lag
    Kafka (the forwarder's position in Kafka is the truth), so a backlog id can also be in
    Kafka already: the checker only uses it for ids absent from Kafka."""
    with sqlite3.connect(f"file:{store_path(path)}?mode=ro", uri=True) as db:
        mark_rows = db.execute("SELECT value FROM meta WHERE name = 'forwarded_seq'").fetchall()
        mark = int(mark_rows[0][0]) if mark_rows else 0
        quarantined = {
            str(row[0]).lower()
            for row in db.execute("SELECT event_id FROM quarantine WHERE replayed_at_ms IS NULL")
        }
        backlog = {
            str(row[0]).lower()
            for row in db.execute("SELECT event_id FROM events WHERE seq > ?", (mark,))
        } - quarantined
        stored = {str(row[0]).lower() for row in db.execute("SELECT event_id FROM events")}
    return backlog, quarantined, stored


def read_stores(paths: Mapping[str, Path]) -> StoreState:
    """Read several gateway stores (name -> data dir or store file); stores that do not exist
    (an instance that never started) are skipped."""
    backlog: defaultdict[str, list[str]] = defaultdict(list)
    quarantined: defaultdict[str, list[str]] = defaultdict(list)
    stored: defaultdict[str, list[str]] = defaultdict(list)
    for name, path in paths.items():
        if not store_path(path).exists():
            continue
        in_backlog, in_quarantine, held = read_store(path)
        for event_id in in_backlog:
            backlog[event_id].append(name)
        for event_id in in_quarantine:
            quarantined[event_id].append(name)
        for event_id in held:
            stored[event_id].append(name)
    return StoreState(
        {k: tuple(v) for k, v in backlog.items()},
        {k: tuple(v) for k, v in quarantined.items()},
        {k: tuple(v) for k, v in stored.items()},
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


def _pos(position: Position) -> str:
    return f"{position[0]}[{position[1]}]@{position[2]}"
