"""Catching a subscription up from its cursor: from Kafka below the local log, then from the
log, then live, with no gap and no duplicate at either seam.

A :class:`Replayer` runs in the subscription's task (:meth:`Replayer.run`). It repeats one
*step* until the subscription is live or ended, deciding before every step with
:func:`gateway.core.replay.decide_replay`, one decision per partition (the partitions of the
log and those the cursor names; a partition the cursor does not name starts at offset 0):

1. Any partition's decision is ``Reset`` (epoch changed, cursor ahead, history gone): the
   subscription gets :class:`~gateway.flows.fanout.Reset` and ends; nothing is skipped silently.
2. Some partition is ``FromKafka(c, until)``: its records ``[c, until)`` are read from Kafka
   (:class:`~gateway.flows.downstream_ports.KafkaHistory`) in chunks; those whose channels
   include the subscription's are delivered in order, the cursor moving to the position each
   chunk reached (past records of other channels and transaction markers too). Then decide
   again: usually the log continues where Kafka stopped.
3. Otherwise one page of the channel is read from the log, from the cursor's positions, and
   delivered; partitions that need Kafka while it is unreachable (``Wait``) are held back (the
   page reads nothing of them), so updates cached locally still replay during an outage. A
   page is delivered only if the log still held every partition it moved from its position
   onwards after the read (pruning can move a partition's start under a read).
4. When a page was the last (complete) and no partition is waiting, the buffered live records
   are delivered and the subscription goes live (below). When partitions are waiting, the
   subscription is ``waiting`` (:attr:`~gateway.core.replay.SubscriptionPhase.WAITING`) and
   decides again after a capped, jittered backoff; it resumes once Kafka answers.

Kafka is asked only for partitions whose decision it can change (``Wait``, or a cursor ahead
of the log), so a cursor within the log needs no Kafka at all. Deciding again after each step
keeps the replay right while bounds move under it (retention prunes the log, Kafka deletes
segments: a read that falls out of Kafka's range fails and the next decision says why).

The seam with live. Live records of the channel that arrive while the subscription catches up
are buffered (:meth:`Subscription._offer`); they are committed to the log before they are
offered, so when the buffer overflows it is dropped and the log read once more. The buffer is
delivered only after a complete page whose read started after the buffer was last known whole:
every record committed after that read's snapshot is in the buffer, every record before it was
in the page or is below the cursor. Delivery skips records below the cursor, so records met
twice (in Kafka or the log, and buffered) are delivered once.

Subscriptions that need the same page (channel, positions, size) share one read of it: in a
resume storm the subscribers of a channel come back from equal cursors. A page read that started
before a subscription's buffer was last known whole (:attr:`Subscription._buffered_since_ns`)
is delivered to it all the same (every record in it is committed and after its cursor), but is
not its last: it reads once more, from where that page left it.

Replay waits for room in the subscription's queue: a client far behind is paced, never "slow".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from gateway.core import replay
from gateway.core.backoff import Backoff
from gateway.core.cursor import MAX_OFFSET, Cursor
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.replay import SubscriptionEvent, SubscriptionPhase
from gateway.errors import KafkaUnavailable
from gateway.flows.downstream_ports import (
    DownstreamLog,
    KafkaHistory,
    LogPage,
    LogRecord,
    PartitionKey,
    RecordChannels,
)
from gateway.flows.subscription import Shared, Subscription

log = logging.getLogger(__name__)

KAFKA_REPLAY_MISSING: Final = "history_not_in_local_log"
"""Reset reason when the records after a cursor are only in Kafka and the replayer was given no
Kafka history to read them from."""

_HELD: Final = KafkaOffset(MAX_OFFSET)
"""A log read position past any record: the page reads nothing of that partition."""


def cursor_at(epoch: Epoch, positions: Mapping[PartitionKey, KafkaOffset]) -> Cursor:
    """A cursor of ``epoch`` at ``(topic, partition) -> next offset`` positions."""
    nested: dict[str, dict[int, KafkaOffset]] = {}
    for (topic, partition), offset in positions.items():
        nested.setdefault(topic, {})[partition] = offset
    return Cursor(epoch, nested)


@dataclass(slots=True)
class _Plan:
    """The decisions of one step, reduced to what to do next."""

    keys: list[PartitionKey]
    reset: str | None = None
    kafka: tuple[PartitionKey, replay.FromKafka] | None = None
    """The first partition to read from Kafka."""
    waiting: set[PartitionKey] = field(default_factory=set)
    """Partitions whose next records are only in Kafka, which does not answer."""


@dataclass(frozen=True, slots=True)
class _Read:
    """A page read in flight, shared by the subscriptions that need that page."""

    started_ns: int
    page: asyncio.Future[LogPage]


_ReadKey = tuple[str, tuple[tuple[PartitionKey, KafkaOffset], ...], int]


class Replayer:
    """Replays subscriptions of one fan-out from Kafka and the local log (the module's steps).

    Without ``history`` and ``channels`` there is no Kafka fallback: a cursor whose records are
    not in the log gets a reset with reason :data:`KAFKA_REPLAY_MISSING`.
    """

    def __init__(
        self,
        downstream_log: DownstreamLog,
        epoch: Epoch | None,
        *,
        history: KafkaHistory | None = None,
        channels: RecordChannels | None = None,
        page_size: int = 500,
        retry_cap_s: float = 10.0,
        crash_hook: Callable[[str], None] | None = None,
        shared_records: int = 20_000,
    ) -> None:
        """``shared_records`` bounds the records whose updates replays share (see
        :meth:`_shared_for`)."""
        if (history is None) != (channels is None):
            raise ValueError("replay from Kafka needs both history and channels")
        if page_size < 1 or retry_cap_s <= 0:
            raise ValueError("page_size and retry_cap_s must be positive")
        self._log = downstream_log
        self._epoch_known = asyncio.Event()
        self._epoch: Epoch | None = None
        self.epoch = epoch
        self._history = history
        self._channels = channels
        self._page = page_size
        self._retry_cap_s = retry_cap_s
        self._crash_hook = crash_hook or (lambda point: None)
        """Testing: called at ``mid_replay`` (a page delivered, the replay not complete)."""
        self._shared: dict[tuple[str, int, int], Shared] = {}
        self._shared_max = shared_records
        self._reads: dict[_ReadKey, _Read] = {}
        """Page reads that subscriptions may join (see :meth:`_read`)."""
        self._flights: set[asyncio.Future[LogPage]] = set()
        """Every page read in flight, joinable or forgotten."""

    def forget(self) -> None:
        """Drop what replays share (a partition reset or a new epoch: history restarts); reads
        in flight go on for those that wait for them, and no one else joins them."""
        self._shared.clear()
        self._reads.clear()

    async def close(self) -> None:
        """Cancel the page reads in flight (their subscriptions are ended) and wait for them."""
        self._reads.clear()
        flights = list(self._flights)
        for page in flights:
            page.cancel()
        for page in flights:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await page

    def _shared_for(self, record: LogRecord) -> Shared:
        """What the record means to each cursor, for every subscription that replays it: in a
        resume storm, the subscribers of a channel read the same records from equal cursors,
        and then share their updates (one cursor advance, one token, one JSON piece, and frames
        shared as live ones are) instead of each building its own. Keyed by the record's place
        in Kafka (each subscription reads its own copy of the record); bounded, cleared when
        full."""
        key = (record.topic, record.partition, record.offset)
        shared = self._shared.get(key)
        if shared is None:
            if len(self._shared) >= self._shared_max:
                self._shared.clear()
            shared = self._shared[key] = Shared()
        return shared

    @property
    def epoch(self) -> Epoch | None:
        """The history the log holds; ``None`` until known (a new instance that has not reached
        Kafka yet): replays wait for it rather than judge a cursor against nothing."""
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: Epoch | None) -> None:
        self._epoch = epoch
        if epoch is None:
            self._epoch_known.clear()
        else:
            self._epoch_known.set()

    async def run(self, sub: Subscription, *, from_now: bool) -> None:
        """Catch ``sub`` up and make it live, or end it (reset, or failure: disconnect)."""
        try:
            epoch = self._epoch
            if epoch is None:
                sub.state.handle(SubscriptionEvent.WAIT)
                await self._epoch_known.wait()
                _resume(sub)
                epoch = self._epoch
                assert epoch is not None
            if from_now:
                sub.cursor = cursor_at(epoch, _of(sub, await self._log.positions()))
            elif sub.cursor.epoch != epoch:
                sub._reset(replay.ResetReason.EPOCH_CHANGED.value)
                return
            await self._catch_up(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("replay of %s failed: %s", sub.channel, exc)
            if sub.state.delivers:
                sub._end(SubscriptionEvent.DISCONNECT, f"replay failed: {exc}")

    async def _catch_up(self, sub: Subscription) -> None:
        backoff = Backoff(cap=self._retry_cap_s)
        while sub.catching_up():
            await asyncio.sleep(0)  # one step at a time: never starve the loop, whatever the ports
            plan = await self._plan(sub)
            if plan.reset is not None:
                sub._reset(plan.reset)
                return
            if plan.kafka is not None:
                _resume(sub)
                try:
                    await self._from_kafka(sub, *plan.kafka)
                except KafkaUnavailable as exc:
                    await _wait(sub, backoff, str(exc))
                else:
                    backoff.reset()
                continue
            if not await self._local_page(sub, plan):
                continue
            if plan.waiting:
                await _wait(sub, backoff, f"Kafka is unreachable; {len(plan.waiting)} partitions")
            elif not sub._pending_dropped and sub.catching_up():
                _resume(sub)
                sub._go_live()  # the buffer holds everything committed since the last read

    async def _plan(self, sub: Subscription) -> _Plan:
        """Decide every partition; ask Kafka only where its answer can change the decision."""
        named = {(topic, partition) for topic, partition, _ in sub.cursor.entries()}
        plan = _Plan(sorted(set(_of(sub, await self._log.positions())) | named))
        kafka_down = False
        for topic, partition in plan.keys:
            position = sub.cursor.position(topic, partition) or KafkaOffset(0)
            held = await self._log.bounds(topic, partition)
            local = None if held is None else replay.LocalBounds(held.start, held.next)
            decision = replay.decide_replay(position, local=local, kafka=None, epoch_matches=True)
            ahead = local is not None and position > local.next
            if isinstance(decision, replay.Wait) or ahead:
                if self._history is None:
                    if isinstance(decision, replay.Wait):
                        plan.reset = KAFKA_REPLAY_MISSING
                        return plan
                elif not kafka_down:
                    try:
                        found = await self._history.bounds(topic, partition)
                    except KafkaUnavailable as exc:
                        log.debug("Kafka bounds of %s:%d unknown: %s", topic, partition, exc)
                        kafka_down = True  # the other partitions would wait for it too
                    else:
                        kafka = replay.KafkaBounds(found.earliest, found.end)
                        decision = replay.decide_replay(
                            position, local=local, kafka=kafka, epoch_matches=True
                        )
            if isinstance(decision, replay.Reset):
                plan.reset = decision.reason.value
                return plan
            if isinstance(decision, replay.FromKafka) and plan.kafka is None:
                plan.kafka = ((topic, partition), decision)
            elif isinstance(decision, replay.Wait):
                plan.waiting.add((topic, partition))
        return plan

    async def _from_kafka(
        self, sub: Subscription, key: PartitionKey, step: replay.FromKafka
    ) -> None:
        """Deliver the channel's records of ``[from, until)`` of one partition from Kafka."""
        assert self._history is not None
        topic, partition = key
        position = step.from_offset
        while position < step.until_offset and sub.catching_up():
            records, reached = await self._history.read(
                topic, partition, position, step.until_offset, self._page
            )
            if reached <= position:
                raise KafkaUnavailable(f"reading {topic}:{partition} made no progress")
            for record in records:
                channels = self._channels_of(record)
                if sub.channel in channels:
                    await sub._wait_for_room()
                    if not sub.catching_up():
                        return
                    sub._deliver(replace(record, channels=channels), self._shared_for(record))
            if sub.catching_up():
                sub.cursor = sub.cursor.advance_to(topic, partition, reached)
            position = reached

    def _channels_of(self, record: LogRecord) -> tuple[str, ...]:
        """The record's channels as the downstream consumer computes them (none on failure)."""
        assert self._channels is not None
        try:
            return tuple(dict.fromkeys(self._channels.channels_for(record.topic, record.value)))
        except Exception as exc:  # the consumer skips such a record too
            log.warning("channel mapping failed on a replayed record (skipped): %s", exc)
            return ()

    async def _local_page(self, sub: Subscription, plan: _Plan) -> bool:
        """Deliver one page of the channel from the log; whether it was the last one."""
        room = await sub._wait_for_room()
        if not sub.catching_up():
            return False
        if sub._pending_dropped:
            sub._buffer_from_now()
        after = {
            key: _HELD if key in plan.waiting else (sub.cursor.position(*key) or KafkaOffset(0))
            for key in plan.keys
        }
        read = self._read(sub.channel, after, min(room, self._page))
        page = await asyncio.shield(read.page)  # shared: one sharer's cancel is not the others'
        moved = {
            key: offset
            for key, offset in _of(sub, page.positions).items()
            if key not in plan.waiting and offset != after.get(key, 0)
        }
        for key in moved:  # was anything pruned or reset under the read? then decide again
            held = await self._log.bounds(*key)
            if held is None or held.start > after.get(key, 0):
                return False
        if not sub.catching_up():
            return False
        shared_for = self._shared_for
        for record in page.records:
            # never overflows: limit <= room, and only replay enqueues
            sub._deliver(record, shared_for(record))
        sub.cursor = sub.cursor.advance_many(moved)
        if page.records and not page.complete:
            self._crash_hook("mid_replay")
        return page.complete and sub._buffered_since_ns < read.started_ns

    def _read(self, channel: str, after: dict[PartitionKey, KafkaOffset], limit: int) -> _Read:
        """The read of this page in flight, or a new one."""
        key = (channel, tuple(after.items()), limit)
        read = self._reads.get(key)
        if read is None:
            page = asyncio.ensure_future(self._log.read([channel], after, limit))
            read = self._reads[key] = _Read(time.monotonic_ns(), page)
            self._flights.add(page)
            page.add_done_callback(functools.partial(self._read_done, key, read))
        return read

    def _read_done(self, key: _ReadKey, read: _Read, page: asyncio.Future[LogPage]) -> None:
        self._flights.discard(page)
        if self._reads.get(key) is read:
            del self._reads[key]
        if not page.cancelled():
            page.exception()  # each sharer raises it; retrieved even if none is left


def _of(
    sub: Subscription, positions: Mapping[PartitionKey, KafkaOffset]
) -> dict[PartitionKey, KafkaOffset]:
    """The positions in the subscription's topics."""
    if sub.topics is None:
        return dict(positions)
    return {key: offset for key, offset in positions.items() if key[0] in sub.topics}


def _resume(sub: Subscription) -> None:
    if sub.phase is SubscriptionPhase.WAITING:
        sub.state.handle(SubscriptionEvent.RESUME)


async def _wait(sub: Subscription, backoff: Backoff, why: str) -> None:
    """Wait for Kafka (the subscription is ``waiting`` meanwhile), then decide again."""
    if sub.phase is SubscriptionPhase.REPLAYING:
        sub.state.handle(SubscriptionEvent.WAIT)
        log.info("replay of %s waits for Kafka: %s", sub.channel, why)
    await asyncio.sleep(backoff.next_delay())
