"""Fan-out of the downstream path: log records -> per-subscription bounded queues, no transport.

A :class:`Fanout` is a :class:`~gateway.flows.downstream_ports.DownstreamListener` of the
downstream consumer and holds :class:`~gateway.flows.subscription.Subscription` objects, one
per (client, channel). A websocket or long-poll adapter sits on top: it calls
:meth:`Fanout.subscribe`, then loops on ``Subscription.next_item`` and writes each update or
reset as a frame, or writes the updates of a batch at once (a writer: see
:mod:`gateway.flows.subscription`).

Replay, then live, with no gap and no duplicate at the seams. A subscription with a cursor
starts ``replaying`` in a background task run by a :class:`~gateway.flows.replayer.Replayer`:
records older than the local log come from Kafka (given a ``history`` and the record
``channels``), then the channel is paged out of the log from the cursor's positions, and when a
page is complete the live records buffered meanwhile (those at or above the cursor) are
delivered and the subscription goes ``live``. While the records it needs are only in Kafka and
Kafka is unreachable, it is ``waiting`` (it retries; nothing is skipped). History that is gone
gets a :class:`Reset`; without a ``history``, so does a cursor older than the log (reason
:data:`KAFKA_REPLAY_MISSING`). A partition the cursor does not name is replayed from offset 0.
See :mod:`gateway.flows.replayer` for the steps and the seams.

Live, a record of the channel is delivered when its offset is at or above the cursor's position
in its partition (records below it the client has already). Replay waits for room in the queue
(a client far behind is paced, not dropped). A live subscription whose queue is full (a burst
bigger than the queue, or a client reading slowly) *falls behind*: it takes no more live records
and replays them from the log as the client makes room, then goes live again. Memory stays
bounded by the queue and other subscriptions are unaffected; a client that stops reading
altogether is closed by the transport adapter (its sends stall).

When the consumer resets a partition (:meth:`Fanout.on_reset`), every subscription whose cursor
names it gets a :class:`Reset` and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Mapping, Sequence

from gateway.core.channels import valid_channel
from gateway.core.cursor import Cursor
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.replay import ResetReason, SubscriptionEvent
from gateway.flows.downstream_ports import (
    DownstreamLog,
    KafkaHistory,
    LogRecord,
    PartitionKey,
    RecordChannels,
)
from gateway.flows.replayer import KAFKA_REPLAY_MISSING as KAFKA_REPLAY_MISSING
from gateway.flows.replayer import Replayer, cursor_at
from gateway.flows.subscription import Shared, Subscription, Touched

_UNKNOWN = Epoch("unknown")
"""Placeholder epoch of a "from now" subscription's cursor until its replay task sets it."""


class Fanout:
    """Routes committed log records to subscriptions; a DownstreamListener."""

    def __init__(
        self,
        downstream_log: DownstreamLog,
        epoch: Epoch | None,
        *,
        now: Callable[[], Mapping[PartitionKey, KafkaOffset]] | None = None,
        max_queue: int = 1000,
        page_size: int = 500,
        history: KafkaHistory | None = None,
        channels: RecordChannels | None = None,
        retry_cap_s: float = 10.0,
        topics_for: Callable[[str], Collection[str]] | None = None,
        crash_hook: Callable[[str], None] | None = None,
    ) -> None:
        """``topics_for`` says which topics can hold a channel's records (e.g.
        ``ChannelMapper.topics_for``): cursors then name those topics only. ``now`` gives the
        positions a "from now" subscription starts at (e.g. ``lambda: consumer.positions``);
        without it they are read from the log. ``max_queue`` bounds each
        subscription's queue (and its buffer of live records during replay). ``history`` and
        ``channels`` (the downstream consumer's channel mapping), given together, replay cursors
        older than the log from Kafka; ``retry_cap_s`` caps the backoff while Kafka is needed
        but unreachable."""
        if max_queue < 1:
            raise ValueError("max_queue must be positive")
        self._epoch = epoch
        self._now = now
        self._topics_for = topics_for
        self._max = max_queue
        self._replayer = Replayer(
            downstream_log,
            epoch,
            history=history,
            channels=channels,
            page_size=page_size,
            retry_cap_s=retry_cap_s,
            crash_hook=crash_hook,
        )
        self._by_channel: dict[str, set[Subscription]] = {}
        # One bound method each for all subscriptions (not two objects per subscription).
        self._on_close, self._on_fall_behind = self._detach, self._catch_up

    @property
    def epoch(self) -> Epoch | None:
        """The history cursors are issued in (and must match to resume); ``None`` until known,
        and subscriptions wait until it is."""
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: Epoch | None) -> None:
        self._epoch = epoch
        self._replayer.epoch = epoch

    @property
    def subscriptions(self) -> int:
        """Open subscriptions."""
        return sum(len(subs) for subs in self._by_channel.values())

    def subscribe(self, channel: str, cursor: Cursor | None) -> Subscription:
        """A subscription to ``channel`` after ``cursor`` (``None``: from now). Must be called on
        the event loop; a replay, if any, runs in a task. Raise ValueError for a bad channel."""
        if not valid_channel(channel):
            raise ValueError(f"invalid channel {channel!r:.80}")
        topics = None if self._topics_for is None else frozenset(self._topics_for(channel))
        rest = (self._max, self._on_close, self._on_fall_behind, topics)
        if cursor is None and self._now is not None and self._epoch is not None:
            sub = Subscription(channel, cursor_at(self._epoch, self._now()), *rest)
            sub._caught_up()
        else:
            sub = Subscription(channel, cursor or Cursor(self._epoch or _UNKNOWN), *rest)
            sub.task = asyncio.create_task(self._replayer.run(sub, from_now=cursor is None))
        self._by_channel.setdefault(channel, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """End a subscription (idempotent); its queue is dropped."""
        sub._end(SubscriptionEvent.UNSUBSCRIBE, "unsubscribed")

    async def close(self) -> None:
        """Unsubscribe everything and wait for replay tasks to end."""
        subs = [s for subs in self._by_channel.values() for s in subs]
        for sub in subs:
            self.unsubscribe(sub)
        tasks = [s.task for s in subs if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._replayer.close()

    # -- DownstreamListener -----------------------------------------------------------------

    def on_records(self, records: Sequence[LogRecord]) -> None:
        """Offer each record to the subscriptions of its channels (never blocks). Those at
        the same cursor share the work and the result (:class:`Shared`). A channel's only
        record in the batch may be written at once; then each subscription given records is
        flushed once (see :mod:`gateway.flows.subscription`)."""
        by_channel = self._by_channel
        touched: Touched = {}
        counts: dict[str, int] = {}
        if len(records) > 1:
            for record in records:
                for channel in record.channels:
                    counts[channel] = counts.get(channel, 0) + 1
        for record in records:
            for channel in record.channels:
                subs = by_channel.get(channel)
                if subs:
                    shared = Shared()
                    alone = counts.get(channel, 1) == 1
                    for sub in list(subs):
                        sub._offer(record, shared, touched, alone)
        for sub in touched:
            sub._flush()

    def on_reset(self, partition: PartitionKey, offset: KafkaOffset, reason: str) -> None:
        """Reset every subscription whose cursor names the partition."""
        self._replayer.forget()
        for subs in list(self._by_channel.values()):
            for sub in list(subs):
                if sub.cursor.position(*partition) is not None:
                    sub._reset(f"partition {partition[0]}:{partition[1]} reset: {reason}")

    def on_epoch(self, epoch: Epoch) -> None:
        """A new history: every subscription gets a reset; new cursors carry ``epoch``. (When
        no epoch was known, subscriptions were waiting for one: they just go on.)"""
        known, self.epoch = self._epoch, epoch
        self._replayer.forget()
        if known is None:
            return
        for subs in list(self._by_channel.values()):
            for sub in list(subs):
                sub._reset(ResetReason.EPOCH_CHANGED.value)

    # -- internals --------------------------------------------------------------------------

    def _catch_up(self, sub: Subscription) -> None:
        """A live subscription fell behind: replay it from its cursor again. If its replay
        task is still running (it fell behind while that task made it live), that task goes
        on replaying: a second one would race it, and a page it read before the fall could
        make it go live over a record that was never queued (a gap)."""
        if sub.task is not None and not sub.task.done():
            return
        sub.task = asyncio.create_task(self._replayer.run(sub, from_now=False))

    def _detach(self, sub: Subscription) -> None:
        subs = self._by_channel.get(sub.channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_channel[sub.channel]
        if sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()
