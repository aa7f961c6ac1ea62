"""The interfaces of the downstream path and the plain records that pass along it::

    Kafka --KafkaSource--> DownstreamConsumer --RecordChannels--> DownstreamLog --> fan-out

Positions are Kafka positions throughout: ``(topic, partition) -> next offset``, the offset of the
next record a ``read_committed`` consumer would get (control markers and aborted records make
offsets of a partition non-contiguous, so "next" is not "last record + 1"). A stream cursor names
such positions, never local row ids, which is why it survives restarts and works on any instance.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias

from gateway.core.ids import Epoch, KafkaOffset

PartitionKey: TypeAlias = tuple[str, int]
"""(topic, partition number)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One committed Kafka record as the downstream log holds it, with its channels.

    ``value`` is empty for a tombstone (a Kafka record with a null value); envelopes never are.
    """

    topic: str
    partition: int
    offset: KafkaOffset
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int
    channels: tuple[str, ...] = ()

    @property
    def partition_key(self) -> PartitionKey:
        return (self.topic, self.partition)


class OffsetRange(NamedTuple):
    """What Kafka holds of one partition now."""

    earliest: KafkaOffset
    """First offset still in Kafka (older ones were deleted by retention)."""
    end: KafkaOffset
    """Next offset a ``read_committed`` consumer would reach (the last stable offset)."""


class LogBounds(NamedTuple):
    """What the downstream log holds of one partition: every committed record of some channel
    with ``start <= offset < next`` (records of no channel are not kept: nobody reads them)."""

    start: KafkaOffset
    next: KafkaOffset


@dataclass(frozen=True, slots=True)
class LogPage:
    """Answer of :meth:`DownstreamLog.read`."""

    records: list[LogRecord]
    """Records of the channels asked for, in per-partition offset order (partitions interleave
    in the order the log received them)."""
    positions: dict[PartitionKey, KafkaOffset]
    """A valid cursor after this page: every record of the channels below these positions has
    been returned now or was before ``after``. When ``complete``, these are the log's positions
    (so a cursor of a quiet channel still moves on), else ``after`` advanced past what was
    returned."""
    complete: bool
    """False when ``limit`` cut the page short: read again from ``positions``."""


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    """Answer of :meth:`DownstreamLog.snapshot`: one page of a channel's compacted view."""

    items: list[LogRecord]
    """The latest record of each key of the channel, ordered by key (bytewise), each with
    ``channels`` set to just the channel asked for."""
    positions: dict[PartitionKey, KafkaOffset]
    """The log's positions, read together with the items: every record of the channel below
    them is reflected in the snapshot, so a cursor of these positions continues right after
    it (the snapshot's pages as a whole, taking the *first* page's positions; see
    :meth:`DownstreamLog.snapshot`)."""
    next_key: bytes | None
    """Where the next page starts (pass it as ``after_key``); ``None`` on the last page."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One batch from a :class:`KafkaSource`."""

    records: list[LogRecord]
    """Committed records, without channels, in per-partition offset order."""
    positions: dict[PartitionKey, KafkaOffset]
    """Consumer position of every assigned partition after these records (it also moves past
    aborted records and transaction markers when no record comes back)."""
    lag: int | None
    """Committed records in Kafka not consumed yet, where the consumer knows it."""


class DownstreamLog(Protocol):
    """Local cache of the update topics: records by (topic, partition, offset) with their
    channels, and the consumer position of each partition, written together."""

    async def append_batch(
        self, records: Sequence[LogRecord], positions: Mapping[PartitionKey, KafkaOffset]
    ) -> list[LogRecord]:
        """Store records and move positions in one transaction; return the records that were
        new. Records below a partition's stored position are ignored (already held or pruned);
        a position never moves back, and moves at least past the records stored. A partition
        seen for the first time starts at its first record (or at the position if none).
        Raises :class:`~gateway.errors.StoreUnavailable`."""
        ...

    async def positions(self) -> dict[PartitionKey, KafkaOffset]:
        """Next offset to consume of every partition the log knows."""
        ...

    async def bounds(self, topic: str, partition: int) -> LogBounds | None:
        """What the log holds of a partition; ``None`` if the partition is unknown."""
        ...

    async def read(
        self,
        channels: Collection[str],
        after: Mapping[PartitionKey, KafkaOffset],
        limit: int,
    ) -> LogPage:
        """Records of any of ``channels`` at or after ``after`` (a partition missing from
        ``after`` is read from offset 0), at most ``limit``, each once. The caller checks
        :meth:`bounds` first: history below a partition's ``start`` is not in the log."""
        ...

    async def reset_partition(self, topic: str, partition: int, offset: KafkaOffset) -> None:
        """Forget what the log holds of a partition; its history starts again at ``offset``
        (a new partition, records deleted in Kafka before they were consumed, a re-created
        topic)."""
        ...

    async def prune(self, older_than_ms: int) -> int:
        """Delete records with a timestamp before the cutoff, as a prefix of each partition
        (a record is kept while an older-offset one is), keeping positions; return how many."""
        ...

    async def count(self) -> int:
        """Records held."""
        ...

    async def epoch(self) -> Epoch | None:
        """The history the log holds (``None`` before the first contact with Kafka)."""
        ...

    async def begin_epoch(self, epoch: Epoch) -> None:
        """Forget every record, position and snapshot row and record ``epoch`` as the
        history now held, in one transaction (the old history cannot be trusted)."""
        ...

    @property
    def snapshot_families(self) -> frozenset[str]:
        """Channel families (the part of a channel name before ``:``) whose compacted view
        :meth:`snapshot` keeps."""
        ...

    async def snapshot(
        self, channel: str, *, after_key: bytes | None = None, limit: int = 1000
    ) -> SnapshotPage:
        """The compacted view of a channel of a snapshot family: the latest record of each
        key (the last one stored, should a key's records come from several partitions;
        records without a key are not kept; a tombstone removes its key), for a client
        with no cursor or told ``reset``. It is written with :meth:`append_batch` in the same
        transaction, survives :meth:`prune`, and :meth:`reset_partition` drops the keys whose
        latest record came from that partition. Items with a key above ``after_key`` (all if
        ``None``), at most ``limit`` (at least 1), ordered by key; ``positions`` are the log's
        positions read in the same read transaction as the items.

        Paging caveat: each page is read at its own moment, so later pages may already reflect
        records that arrived after the first page was read. The client must use the *first*
        page's ``positions`` as its cursor: streaming from there replays those records, which
        is harmless for state-per-key updates (applying the newer record again gives the same
        state), whereas a later page's positions could skip records of keys it had already
        passed. Raises ``ValueError`` for a channel outside :attr:`snapshot_families` or a
        ``limit`` below 1, :class:`~gateway.errors.StoreUnavailable` if the log cannot be
        read."""
        ...


class KafkaSource(Protocol):
    """A ``read_committed`` reader of whole topics at positions the caller chooses (no
    consumer group: the positions live in the downstream log)."""

    async def start(self, topics: Collection[str]) -> dict[PartitionKey, OffsetRange]:
        """Connect and take every partition of the existing ``topics``; return what Kafka holds
        of each. Nothing is fetched before :meth:`seek`. Raises ``KafkaUnavailable``."""
        ...

    async def seek(self, positions: Mapping[PartitionKey, KafkaOffset]) -> None:
        """Where to read each partition taken by :meth:`start` from (all must be named)."""
        ...

    async def fetch(self, max_records: int, timeout_s: float) -> Fetched:
        """The next committed records, waiting up to ``timeout_s`` for some. Raises
        ``KafkaUnavailable``, also when a position fell out of Kafka's range."""
        ...

    async def partitions(self, topics: Collection[str]) -> set[PartitionKey]:
        """Partitions of the existing ``topics`` according to fresh cluster metadata."""
        ...

    async def earliest_and_end(self, topic: str, partition: int) -> OffsetRange:
        """What Kafka holds of one partition now (also when not started)."""
        ...

    async def ping(self) -> None:
        """Raise ``KafkaUnavailable`` unless the cluster answers a metadata request."""
        ...

    async def close(self) -> None: ...


class RecordChannels(Protocol):
    """Which channels a record belongs to (e.g. ``inventory:<storeId>``, ``orders:<userId>``)."""

    def channels_for(self, topic: str, value: bytes) -> Sequence[str]: ...


class DownstreamListener(Protocol):
    """Told what the consumer committed to the log (called on the event loop; must not block)."""

    def on_records(self, records: Sequence[LogRecord]) -> None:
        """New records, already committed to the log, in per-partition offset order."""
        ...

    def on_reset(self, partition: PartitionKey, offset: KafkaOffset, reason: str) -> None:
        """The log forgot a partition's history, which now starts at ``offset``: subscribers
        positioned in that partition must be told ``reset``."""
        ...

    def on_epoch(self, epoch: Epoch) -> None:
        """The log began a new history (cluster changed, a topic re-created): every cursor of
        the old one is void."""
        ...


class KafkaHistory(Protocol):
    """Random access to the committed history Kafka still holds, for replays of cursors older
    than the downstream log (``read_committed``, no consumer group, channels not computed)."""

    async def bounds(self, topic: str, partition: int) -> OffsetRange:
        """What Kafka holds of one partition now. Raises ``KafkaUnavailable``."""
        ...

    async def read(
        self,
        topic: str,
        partition: int,
        from_offset: KafkaOffset,
        until_offset: KafkaOffset,
        max_records: int,
    ) -> tuple[list[LogRecord], KafkaOffset]:
        """Committed records of ``[from_offset, until_offset)`` in offset order, without
        channels, at most ``max_records``, and the position reached: the next offset to read,
        past the last record returned and possibly further (transaction markers and aborted
        records hold no record for anyone); ``until_offset`` once the range is done. Bounded
        in time: returns at least one record or a position past ``from_offset``, else raises.
        Raises ``KafkaUnavailable``, also when ``from_offset`` is no longer in Kafka (the
        caller decides again with fresh :meth:`bounds`)."""
        ...
