"""One subscription of the fan-out: a bounded queue of items for one client on one channel.

:class:`Subscription` objects are made by :class:`~gateway.flows.fanout.Fanout` and driven by
it and its :class:`~gateway.flows.replayer.Replayer` (the private ``_offer``, ``_deliver``,
``_go_live``, ``_reset``, ``_end``); an adapter takes the items out with :meth:`next_item`
and :meth:`take_ready`. Items are :class:`Update` (a record and the cursor after it),
:class:`CaughtUp` (the replay is done: what follows is live) and :class:`Reset` (the history is
gone; always the last).

Writing in the consumer's cycle, as a broadcast does. An adapter that can write a frame
synchronously when its socket takes it sets :attr:`Subscription.writer` (a :class:`Writer`),
used only while the adapter's loop is parked in :meth:`Subscription.next_item` with nothing in
hand (so no frame of it is in flight and queue order is socket order). A record that is its
channel's only one in a batch goes to :meth:`Writer.write_one` without being queued, when the
queue is empty; otherwise, after the batch is queued, :meth:`Fanout.on_records` hands each
subscription it touched to :meth:`Writer.write_queued` once, so a batch's updates share frames.
Whatever the writer leaves wakes the adapter's loop as before. Waking one task per subscription
per cycle was most of the event loop's overhead per frame; queueing and taking back the one
update of a live record was a third of what remained.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.core.cursor import Cursor
from gateway.core.replay import SubscriptionEvent, SubscriptionPhase, SubscriptionState
from gateway.flows.downstream_ports import LogRecord


@dataclass(frozen=True, slots=True)
class Update:
    """One record for the client, and the cursor to persist once it is applied."""

    record: LogRecord
    cursor_after: Cursor


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """The replay is complete: what follows is live. ``cursor`` is where the client is now
    (for a "from now" subscription, the position it starts from)."""

    cursor: Cursor


@dataclass(frozen=True, slots=True)
class Reset:
    """The history of the subscription is gone: the client must re-snapshot. Always the last."""

    reason: str


Item = Update | CaughtUp | Reset


class Shared:
    """What one live record means to each cursor, worked out once for all the subscriptions of
    a channel at that cursor: the :class:`Update` to queue (one object, with one
    ``cursor_after`` object, shared by them all; its token and frame pieces are then built
    once), or ``False`` when the cursor is past the record. Keyed by value:
    :meth:`Cursor.advance` is a pure function of the cursor's value and the record, so equal
    cursors get equal results. The last cursor asked about is looked up by identity first:
    subscriptions at the same cursor usually hold the very same object (the ``cursor_after``
    of the update they shared last), and hashing a cursor is a Python call."""

    __slots__ = ("by_cursor", "last_cursor", "last_update")

    def __init__(self) -> None:
        self.by_cursor: dict[Cursor, Update | Literal[False]] = {}
        self.last_cursor: Cursor | None = None
        self.last_update: Update | Literal[False] = False


class Writer(Protocol):
    """An adapter's synchronous writer of a subscription's updates (module docstring)."""

    def write_queued(self, sub: Subscription) -> None:
        """Write the queued updates now, as far as the socket takes them (taken with
        :meth:`Subscription.take_updates`, what is refused given back with
        :meth:`Subscription.unread`; what is left in the queue wakes the adapter's loop)."""

    def write_one(self, sub: Subscription, update: Update) -> bool:
        """Write one update that was never queued (the queue is empty) now, if the socket
        takes it; whether it did (if not, it is queued)."""


Touched = dict["Subscription", None]
"""Subscriptions given records in one :meth:`Fanout.on_records` call, in order."""


class _Wakeup:
    """Wakes the one task waiting on it: what ``asyncio.Event`` did here, without the flag
    and the deque of waiters (a subscription holds two; an Event with its deque is 1.1 KiB and
    three objects for the collector). Only a wait in progress is woken: the waiter checks its
    condition before each wait, with no ``await`` in between."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until :meth:`set` is called (RuntimeError if another task waits already; one whose
        wait was cancelled does not)."""
        if self.waiting:
            raise RuntimeError("a second task waits on the same wake-up")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    @property
    def waiting(self) -> bool:
        """Whether a task waits (and was not woken yet)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def set(self) -> None:
        """Wake the waiting task, if any."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class SubscriptionClosed(Exception):
    """:meth:`Subscription.next_item` of an ended subscription with nothing left to hand out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """One channel for one client: a bounded queue of :class:`Update` / :class:`Reset` items.

    Its private methods (``_deliver``, ``_wait_for_room``, ``_go_live``, ``_reset``, ``_end``)
    are driven by the fan-out and its :class:`~gateway.flows.replayer.Replayer` only."""

    __slots__ = (
        "_announced_live",
        "_buffered_since_ns",
        "_markers",
        "_max",
        "_on_close",
        "_on_fall_behind",
        "_pending",
        "_pending_dropped",
        "_queue",
        "_ready",
        "_room",
        "channel",
        "closed_reason",
        "cursor",
        "fell_behind",
        "state",
        "tag",
        "task",
        "topics",
        "writer",
    )

    def __init__(
        self,
        channel: str,
        cursor: Cursor,
        max_items: int,
        on_close: Callable[[Subscription], None],
        on_fall_behind: Callable[[Subscription], None] = lambda sub: None,
        topics: frozenset[str] | None = None,
    ) -> None:
        self.channel = channel
        self.topics = topics
        """The topics whose records may belong to the channel (``None``: any); the cursor
        names only these, so history lost elsewhere never resets this subscription."""
        self.cursor = cursor if topics is None else cursor.restricted_to(topics)
        """Where the client is once it applied everything queued so far."""
        self.state = SubscriptionState()
        self.fell_behind = 0
        """Times the queue filled while live and the subscription went back to the log."""
        self.closed_reason: str | None = None
        self._max = max_items
        self._queue: deque[Item] = deque()
        self._markers = 0  # items in the queue that are not Updates
        self._pending: list[LogRecord] = []  # live records seen while replaying
        self._pending_dropped = False
        self._buffered_since_ns = time.monotonic_ns()
        """Every live record offered since this time is in ``_pending`` or ``_pending_dropped``
        is set: a page read that started later leaves no gap at the seam with live."""
        self._ready = _Wakeup()
        self._room = _Wakeup()
        self._on_close = on_close
        self._on_fall_behind = on_fall_behind
        self._announced_live = False
        self.task: asyncio.Task[None] | None = None
        self.tag = ""
        """The adapter's name for the subscription (the client's subscription id)."""
        self.writer: Writer | None = None
        """Set by an adapter that writes synchronously (module docstring); ``None``: every
        item goes through :meth:`next_item`."""

    @property
    def phase(self) -> SubscriptionPhase:
        """The state machine's phase (replaying, waiting, live, reset_sent, closed)."""
        return self.state.phase

    def replaying(self) -> bool:
        """Whether the subscription is still catching up from the log."""
        return self.state.phase is SubscriptionPhase.REPLAYING

    def catching_up(self) -> bool:
        """Whether the subscription is replaying or waiting for Kafka (not live, not ended)."""
        return self.state.phase in (SubscriptionPhase.REPLAYING, SubscriptionPhase.WAITING)

    @property
    def queued(self) -> int:
        """Items waiting for the adapter."""
        return len(self._queue)

    async def next_item(self) -> Item:
        """The next item for the client; raise :class:`SubscriptionClosed` once it has ended
        and everything it queued before (e.g. a final :class:`Reset`) was handed out."""
        while True:
            if self._queue:
                item = self._queue.popleft()
                if type(item) is not Update:
                    self._markers -= 1
                self._room.set()
                return item
            if self.closed_reason is not None:
                raise SubscriptionClosed(self.closed_reason)
            await self._ready.wait()  # parked: holding no item

    def take_ready(self, limit: int) -> list[Item]:
        """Up to ``limit`` items already queued, without waiting (to batch them in one frame)."""
        taken: list[Item] = []
        while self._queue and len(taken) < limit:
            item = self._queue.popleft()
            if type(item) is not Update:
                self._markers -= 1
            taken.append(item)
        if taken:
            self._room.set()
        return taken

    def take_updates(self, limit: int) -> list[Update]:
        """Up to ``limit`` :class:`Update` items from the head of the queue (for a
        :data:`Writer`; what it could not write it gives back with :meth:`unread`)."""
        queue = self._queue
        full = len(queue) >= self._max  # else no replay waits for room (see _wait_for_room)
        taken: list[Update]
        if not self._markers and len(queue) <= limit:  # all of them (the usual case)
            taken = list(queue)  # type: ignore[arg-type]  # no marker: only Updates
            queue.clear()
            if taken and full:
                self._room.set()
            return taken
        taken = []
        while queue and len(taken) < limit:
            item = queue[0]
            if not isinstance(item, Update):
                break
            queue.popleft()
            taken.append(item)
        if taken and full:
            self._room.set()
        return taken

    def unread(self, updates: Sequence[Update]) -> None:
        """Put updates taken with :meth:`take_updates` back at the head of the queue, in order
        (the socket did not take them)."""
        self._queue.extendleft(reversed(updates))

    def _flush(self) -> None:
        """After a batch of live records: write now what the writer can, wake the adapter's
        loop for the rest."""
        writer = self.writer
        waiter = self._ready._waiter  # _Wakeup.waiting, inline: this runs once per frame
        if writer is not None and waiter is not None and not waiter.done():
            writer.write_queued(self)
            if not self._queue:
                return
        self._ready.set()

    async def _wait_for_room(self) -> int:
        """Free slots in the queue, waiting until there is at least one."""
        while len(self._queue) >= self._max and self.state.delivers:
            await self._room.wait()
        return self._max - len(self._queue)

    def _offer(self, record: LogRecord, shared: Shared, touched: Touched, alone: bool) -> None:
        """A live record of the channel: buffer it while catching up, else deliver it; written
        at once, unqueued, if it is ``alone`` (its channel's only record in the batch) and the
        writer may write (module docstring)."""
        phase = self.state.phase
        if phase is SubscriptionPhase.LIVE:
            writer, waiter = self.writer, self._ready._waiter
            if (
                alone
                and not self._queue
                and writer is not None
                and waiter is not None
                and not waiter.done()
            ):
                cursor = self.cursor  # _update_for's first case, inline: once per frame
                if cursor is shared.last_cursor:
                    update = shared.last_update or None
                else:
                    update = self._update_for(record, shared)
                if update is not None:
                    self.cursor = update.cursor_after
                    if not writer.write_one(self, update):
                        self._queue.append(update)
                        touched[self] = None
                return
            self._deliver(record, shared, touched)
        elif phase is SubscriptionPhase.REPLAYING or phase is SubscriptionPhase.WAITING:
            if len(self._pending) >= self._max:  # it is in the log: read it again instead
                self._pending.clear()
                self._pending_dropped = True
            self._pending.append(record)

    def _update_for(self, record: LogRecord, shared: Shared | None) -> Update | None:
        """The update the record makes at the current cursor, ``None`` if the client has it.

        ``shared``: the results of this record for the cursors seen so far (see
        :class:`Shared`), filled in as new cursors come."""
        cursor = self.cursor
        if shared is None:
            update = None
        elif cursor is shared.last_cursor:
            return shared.last_update or None
        else:
            update = shared.by_cursor.get(cursor)
        if update is None:
            position = cursor.position(record.topic, record.partition)
            if position is not None and record.offset < position:
                update = False
            else:
                after = cursor.advance(record.topic, record.partition, record.offset)
                update = Update(record, after)
            if shared is not None:
                shared.by_cursor[cursor] = update
        if shared is not None:
            shared.last_cursor, shared.last_update = cursor, update
        return update or None

    def _deliver(
        self, record: LogRecord, shared: Shared | None = None, touched: Touched | None = None
    ) -> None:
        """Enqueue a record unless the client has it; fall behind when the queue is full.
        ``touched``: the batch's subscriptions, flushed once at its end (``None``: wake the
        adapter now)."""
        if shared is not None and self.cursor is shared.last_cursor:  # as in _offer
            update = shared.last_update or None
        else:
            update = self._update_for(record, shared)
        if update is None:  # the client has it
            return
        if len(self._queue) >= self._max:
            self._fall_behind()
            return
        self.cursor = update.cursor_after
        self._queue.append(update)
        if touched is None:
            self._ready.set()
        else:
            touched[self] = None

    def _go_live(self) -> None:
        """The replay is complete: deliver the buffered live records above the cursor."""
        pending, self._pending = self._pending, []
        self._caught_up()
        for record in pending:
            if self.phase is not SubscriptionPhase.LIVE:
                break
            self._deliver(record)

    def _caught_up(self) -> None:
        """Go live and, the first time, tell the client where it is (this item may exceed the
        bound by one)."""
        self.state.handle(SubscriptionEvent.REPLAY_DONE)
        if not self._announced_live:
            self._announced_live = True
            self._queue.append(CaughtUp(self.cursor))
            self._markers += 1
            self._ready.set()

    def _fall_behind(self) -> None:
        """The queue is full while live: take no more live records and read them from the log
        once the client makes room, as a replay does. Memory stays bounded by the queue and a
        burst never drops a client; one that stops reading is the adapter's to close."""
        self.state.handle(SubscriptionEvent.FELL_BEHIND)
        self.fell_behind += 1
        self._pending.clear()
        self._buffer_from_now()  # the record it refused is not buffered
        self._on_fall_behind(self)

    def _buffer_from_now(self) -> None:
        """The buffer is whole from now on: every live record offered later is in ``_pending``
        or flags it dropped (see ``_buffered_since_ns``)."""
        self._pending_dropped = False
        self._buffered_since_ns = time.monotonic_ns()

    def _reset(self, reason: str) -> None:
        """Queue a final :class:`Reset` (it may exceed the bound by one) and end."""
        if self.state.delivers:
            self._queue.append(Reset(reason))
            self._markers += 1
            self._end(SubscriptionEvent.RESET, reason)

    def _end(self, event: SubscriptionEvent, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.state.handle(event)
        self.closed_reason = reason
        if event is not SubscriptionEvent.RESET:
            self._queue.clear()  # bounded memory: nothing more goes to this client
            self._markers = 0
        self._pending.clear()
        self._ready.set()
        self._room.set()
        self._on_close(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.channel} {self.phase.value} queued={len(self._queue)}>"
