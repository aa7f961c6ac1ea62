"""Downstream consumer: Kafka update topics -> the local downstream log, with no gap and no
duplicate, whatever the link does.

A *session* starts the source on every partition of the topics, decides where each partition
continues (:func:`plan_start`: at the log's stored position, or from a fresh start when the log
has no history for it or its history cannot continue), then fetches batches. Each batch's
records, with their channels, and the consumer positions are appended to the log in one
transaction, and only then are listeners told. A crash at any point resumes from the log's
positions: what is committed is never read twice, what is not is read again. Any Kafka or store
failure ends the session; a new one starts after a capped, jittered backoff, with a new consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.core.backoff import Backoff
from gateway.core.ids import Epoch, KafkaOffset
from gateway.errors import KafkaUnavailable, StoreError
from gateway.flows.downstream_ports import (
    DownstreamListener,
    DownstreamLog,
    Fetched,
    KafkaSource,
    LogRecord,
    OffsetRange,
    PartitionKey,
    RecordChannels,
)
from gateway.flows.sessions import SessionLoop

log = logging.getLogger(__name__)


class ResetReason(StrEnum):
    NEW = "new partition"
    DELETED = "records were deleted from Kafka before they were consumed"
    BEYOND_END = "the stored position is beyond the partition's end (topic re-created?)"


@dataclass(frozen=True, slots=True)
class PartitionReset:
    partition: PartitionKey
    offset: KafkaOffset
    reason: ResetReason


@dataclass(frozen=True, slots=True)
class StartPlan:
    seek: dict[PartitionKey, KafkaOffset]
    """Where every partition of the session is read from."""
    resets: list[PartitionReset] = field(default_factory=list)
    """Partitions whose log history starts afresh (at their seek position)."""


def plan_start(
    stored: Mapping[PartitionKey, KafkaOffset],
    ranges: Mapping[PartitionKey, OffsetRange],
    *,
    from_latest: bool = False,
) -> StartPlan:
    """Continue each partition at its stored position when Kafka still holds it; otherwise
    start its history afresh, at the earliest offset (or the end, for a new partition with
    ``from_latest``), and say why, so that no subscriber is ever moved past a gap silently."""
    seek: dict[PartitionKey, KafkaOffset] = {}
    resets: list[PartitionReset] = []
    for key, available in sorted(ranges.items()):
        position = stored.get(key)
        if position is None:
            start = available.end if from_latest else available.earliest
            resets.append(PartitionReset(key, start, ResetReason.NEW))
        elif position < available.earliest:
            resets.append(PartitionReset(key, available.earliest, ResetReason.DELETED))
        elif position > available.end:
            resets.append(PartitionReset(key, available.earliest, ResetReason.BEYOND_END))
        else:
            seek[key] = position
    seek.update((reset.partition, reset.offset) for reset in resets)
    return StartPlan(seek, resets)


@dataclass(frozen=True, slots=True)
class DownstreamSettings:
    topics: tuple[str, ...]
    bootstrap: str
    batch_max: int = 500
    """Most records per append. An append holds the event loop while it runs (a few ms per
    hundred records; see ``SqliteWriter``), so a backlog goes in slices."""
    fetch_timeout_s: float = 0.5
    ping_interval_s: float = 2.0
    """While idle, how often the link is checked (an outage makes fetches empty, not fail)."""
    metadata_interval_s: float = 30.0
    """How often new partitions or topics are looked for (a change starts a new session)."""
    missing_topic_interval_s: float = 1.0
    """The same while some of the topics do not exist yet (e.g. before the first publish)."""
    start_from_latest: bool = False
    """Where a partition the log has never seen starts: its end, else its earliest record."""
    retention_ms: int = 7 * 24 * 3600 * 1000
    prune_interval_s: float = 60.0


class DownstreamConsumer(SessionLoop):
    """Keeps the downstream log up to date with the update topics and tells listeners."""

    name = "downstream consumer"
    down_hint = "; the local log is still served and catches up when Kafka is back"

    def __init__(
        self,
        downstream_log: DownstreamLog,
        source: KafkaSource,
        channels: RecordChannels,
        settings: DownstreamSettings,
        backoff: Backoff | None = None,
        identity: Callable[[], Awaitable[Epoch]] | None = None,
    ) -> None:
        """``identity`` names the history Kafka holds now (e.g. from the cluster id and the
        topic ids); when it differs from the log's, the log begins a new epoch and listeners
        are told, before anything is consumed."""
        super().__init__(
            settings.bootstrap, backoff if backoff is not None else Backoff(base=0.2, cap=10.0)
        )
        self._log = downstream_log
        self._source = source
        self._channels = channels
        self._s = settings
        self._listeners: list[DownstreamListener] = []
        self._identity = identity
        self._suspect: set[PartitionKey] = set()
        self.positions: dict[PartitionKey, KafkaOffset] = {}
        """The log's positions as of the last append (where "now" is for a new subscriber)."""
        self.lag: int | None = None
        self.consumed = 0
        self.batches = 0
        """Appends that stored records (``consumed / batches``: records per batch)."""
        self.work_s = 0.0
        """Time spent storing fetched batches and handing them to the listeners (the streams'
        fan-out): its rate near 1 s per second means the process has no time to spare, and a
        backlog, once there, is not worked off."""
        self.unmapped = 0
        """Records of no channel (or that the mapping failed on): not stored, not told."""
        self.resets = 0

    def add_listener(self, listener: DownstreamListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: DownstreamListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "topics": list(self._s.topics),
            "partitions": len(self.positions),
            "lag": self.lag,
            "consumed": self.consumed,
            "unmapped": self.unmapped,
            "resets": self.resets,
        }

    async def _close(self) -> None:
        await self._source.close()

    async def _session(self) -> None:
        try:
            ranges = await self._source.start(self._s.topics)
            if self._identity is not None:
                await self._check_epoch(await self._identity())
            stored = await self._log.positions()
            plan = plan_start(stored, ranges, from_latest=self._s.start_from_latest)
            await self._apply_resets(plan.resets)
            await self._source.seek(plan.seek)
            self.positions = await self._log.positions()
            self._link_up(f"consuming {', '.join(self._s.topics)}")
            self._backoff.reset()
            await self._consume(set(ranges))
        finally:
            await self._source.close()

    async def _check_epoch(self, epoch: Epoch) -> None:
        held = await self._log.epoch()
        if held == epoch:
            return
        if held is not None:
            log.warning(
                "Kafka history changed (epoch %s -> %s): the log starts afresh", held, epoch
            )
        await self._log.begin_epoch(epoch)
        self.positions = {}
        for listener in list(self._listeners):
            try:
                listener.on_epoch(epoch)
            except Exception:
                log.exception("downstream listener failed on a new epoch")

    async def _apply_resets(self, resets: Sequence[PartitionReset]) -> None:
        beyond = {r.partition for r in resets if r.reason is ResetReason.BEYOND_END}
        if beyond - self._suspect:
            # Seen once, it may be a new leader whose end offset lags: look again first.
            self._suspect |= beyond
            raise KafkaUnavailable(f"positions beyond the end of {sorted(beyond)}; re-checking")
        for reset in resets:
            await self._log.reset_partition(*reset.partition, reset.offset)
            if reset.reason is ResetReason.NEW:
                log.info("consuming %s:%d from offset %d", *reset.partition, reset.offset)
                continue
            self.resets += 1
            log.warning(
                "history of %s:%d restarts at offset %d: %s",
                *reset.partition,
                reset.offset,
                reset.reason.value,
            )
            for listener in list(self._listeners):
                try:
                    listener.on_reset(reset.partition, reset.offset, reset.reason.value)
                except Exception:
                    log.exception("downstream listener failed on a reset")
        self._suspect.clear()

    async def _consume(self, partitions: set[PartitionKey]) -> None:
        """Fetch and append until the link fails or the partitions change."""
        last_contact = last_metadata = time.monotonic()
        complete = {topic for topic, _ in partitions} >= set(self._s.topics)
        metadata_interval = (
            self._s.metadata_interval_s if complete else self._s.missing_topic_interval_s
        )
        while True:
            fetched = await self._source.fetch(self._s.batch_max, self._s.fetch_timeout_s)
            self.lag = fetched.lag
            started = time.perf_counter()
            await self._append(fetched)
            self.work_s += time.perf_counter() - started
            now = time.monotonic()
            if fetched.records:
                last_contact = now
            elif now - last_contact >= self._s.ping_interval_s:
                await self._source.ping()  # so that an idle link's state is true too
                last_contact = now
            if now - last_metadata >= metadata_interval:
                last_metadata = now
                if await self._source.partitions(self._s.topics) != partitions:
                    log.info("partitions of %s changed: new session", ", ".join(self._s.topics))
                    return

    async def _append(self, fetched: Fetched) -> None:
        moved = {k: v for k, v in fetched.positions.items() if self.positions.get(k) != v}
        if not fetched.records and not moved:
            return
        records = self._channelled(fetched.records)
        fresh = await self._log.append_batch(records, moved)
        for key, position in moved.items():
            self.positions[key] = max(self.positions.get(key, position), position)
        for record in fresh:
            past = KafkaOffset(record.offset + 1)
            self.positions[record.partition_key] = max(
                self.positions.get(record.partition_key, past), past
            )
        self.consumed += len(fresh)
        if not fresh:
            return
        self.batches += 1
        for listener in list(self._listeners):
            try:
                listener.on_records(fresh)
            except Exception:
                log.exception("downstream listener failed on new records")

    def _channelled(self, records: Sequence[LogRecord]) -> list[LogRecord]:
        """The records with their channels; those of no channel are dropped (no subscriber
        could ever read them) and counted, their offsets still passed by the positions."""
        mapped: list[LogRecord] = []
        failure: Exception | None = None
        for record in records:
            try:
                channels = tuple(
                    dict.fromkeys(self._channels.channels_for(record.topic, record.value))
                )
            except Exception as exc:  # a record no mapping understands must not stop the path
                failure, channels = exc, ()
            if channels:  # built directly: dataclasses.replace costs more than the mapping
                mapped.append(
                    LogRecord(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        record.headers,
                        record.timestamp_ms,
                        channels,
                    )
                )
        self.unmapped += len(records) - len(mapped)
        if failure is not None:
            log.warning("channel mapping failed on a record (it is skipped): %s", failure)
        return mapped

    async def _housekeeping(self) -> None:
        """Prune records past their retention (positions are kept)."""
        while True:
            cutoff = int(time.time() * 1000) - self._s.retention_ms
            try:
                pruned = await self._log.prune(cutoff)
            except StoreError as exc:
                log.warning("downstream log pruning failed: %s", exc)
            else:
                if pruned:
                    log.info("pruned %d downstream records past retention", pruned)
            await asyncio.sleep(self._s.prune_interval_s)
