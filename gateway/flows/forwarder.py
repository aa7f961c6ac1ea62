"""Forwarder: local store -> Kafka, exactly once, in store order, whatever the link does.

A *session* opens the Kafka link (which fences zombies and reads back the position committed in
Kafka), then forwards batches: each batch's records and the new position go in one Kafka
transaction, and only after its commit is the local mark advanced. A crash between the two is
harmless: the next session starts from Kafka's position, not the local mark. Any Kafka failure
ends the session; a new one starts after a capped, jittered backoff, with a new producer.

Since a session starts from Kafka's position, the local mark is only a hint (for pruning, the
backlog gauges and a position topic that was reset): it is written in the background, so the
next transaction never waits for the mark's fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.backoff import Backoff
from gateway.core.forwarding import plan_records
from gateway.core.ids import InstanceId, LocalSeq
from gateway.core.records import QuarantineEntry, StoredEvent
from gateway.core.routing import TopicRouter
from gateway.errors import KafkaUnavailable, RecordsRefused, StoreError
from gateway.flows.ports import EventStore, KafkaPublisher
from gateway.flows.sessions import SessionLoop
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    router: TopicRouter
    dead_letter_topic: str
    instance: InstanceId
    bootstrap: str
    batch_max: int = 5000
    min_interval_s: float = 0.025
    """Least time between the starts of two transactions while events keep coming."""
    idle_wait_s: float = 0.5
    ping_interval_s: float = 2.0
    """While idle, how often the link is checked (else /readyz would report a dead link up)."""
    retention_ms: int = 7 * 24 * 3600 * 1000
    housekeeping_interval_s: float = 1.0
    prune_interval_s: float = 60.0
    crash_hook: Callable[[str], None] = field(default=lambda point: None)
    """Fault injection for tests: called at named points; may end the process."""


class Forwarder(SessionLoop):
    name = "forwarder"
    down_hint = (
        "; events are still acknowledged into the local store and will be forwarded when"
        " Kafka is back"
    )

    def __init__(
        self,
        store: EventStore,
        publisher: KafkaPublisher,
        settings: ForwarderSettings,
        metrics: GatewayMetrics,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(
            settings.bootstrap, backoff if backoff is not None else Backoff(base=0.2, cap=10.0)
        )
        self._store = store
        self._publisher = publisher
        self._s = settings
        self._metrics = metrics
        self.position = LocalSeq(0)
        self._mark_wanted = LocalSeq(0)
        self._marking: asyncio.Task[None] | None = None
        self._mark_failing = False

    def status(self) -> dict[str, Any]:
        return {**super().status(), "position": self.position}

    async def _close(self) -> None:
        if self._marking is not None:
            await self._marking  # never raises: failures are logged
        await self._publisher.close()

    async def drain(self, deadline_s: float) -> bool:
        """Wait until the backlog is forwarded or the deadline passes; True if drained."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if (await self._store.backlog()).events == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    async def _session(self) -> None:
        kafka_position = await self._publisher.open(self._store.store_id)
        local_mark = await self._store.forwarded_mark()
        if local_mark > kafka_position:
            log.warning(
                "local mark %d is ahead of Kafka's position %d for %s (position topic reset?);"
                " continuing from the local mark",
                local_mark,
                kafka_position,
                self._s.instance,
            )
        self.position = max(kafka_position, local_mark)
        if kafka_position > local_mark:
            await self._store.mark_forwarded(kafka_position)
        self._link_up(f"forwarding from local seq {self.position}")
        self._metrics.kafka_up.set(1)
        last_contact = time.monotonic()
        began = 0.0  # when the last transaction began
        batch: list[StoredEvent] = []
        while True:
            # Transactions cost the broker a fixed amount of work each: under steady load,
            # space them out a little and let each carry more.
            wait = self._s.min_interval_s - (time.monotonic() - began)
            if wait > 0:
                await asyncio.sleep(wait)
            batch = await self._top_up(batch)
            if not batch:
                if time.monotonic() - last_contact >= self._s.ping_interval_s:
                    await self._publisher.ping()  # so that an idle link's state is true too
                    last_contact = time.monotonic()
                await self._store.wait_for_append(self._s.idle_wait_s)
                continue
            last_contact = began = time.monotonic()
            # A full batch means a backlog: read the next one (in the store's thread) while
            # this one goes to Kafka. Otherwise read after the commit, so that the next
            # transaction takes everything that arrived meanwhile.
            upcoming = (
                asyncio.ensure_future(self._store.read_after(batch[-1].seq, self._s.batch_max))
                if len(batch) >= self._s.batch_max
                else None
            )
            try:
                await self._forward_all(batch)
            except BaseException:
                if upcoming is not None:
                    upcoming.cancel()
                    # wait for the read to wind down, but never swallow our own cancellation
                    # (stop() during this wait must end the session, not start another)
                    await asyncio.wait({upcoming})
                    if not upcoming.cancelled():
                        upcoming.exception()  # retrieved: the error that ends the session wins
                raise
            batch = await upcoming if upcoming is not None else []

    async def _top_up(self, batch: list[StoredEvent]) -> list[StoredEvent]:
        """``batch`` plus the events stored after it (or after the position), up to a full
        batch."""
        room = self._s.batch_max - len(batch)
        if room <= 0:
            return batch
        after = batch[-1].seq if batch else self.position
        return batch + await self._store.read_after(after, room)

    async def _forward_all(self, batch: list[StoredEvent]) -> None:
        try:
            await self._forward(batch)
        except RecordsRefused:
            # Kafka refused part of a multi-record batch: find the culprits one by one,
            # so that no innocent event of the batch lands in the dead letters.
            for stored in batch:
                await self._forward([stored])
        self._backoff.reset()

    async def _forward(self, batch: list[StoredEvent]) -> None:
        """Commit one batch (plus dead letters and position) to Kafka, then mark it locally."""
        refused: dict[LocalSeq, str] = {}
        bare: set[LocalSeq] = set()
        while True:
            plan = plan_records(
                batch,
                refused,
                bare_letters=bare,
                router=self._s.router,
                dead_letter_topic=self._s.dead_letter_topic,
                instance=self._s.instance,
                max_record_bytes=self._publisher.max_record_bytes,
            )
            if plan.dead_letters:
                await self._quarantine(batch, plan.dead_letters)
            try:
                self._s.crash_hook("before_kafka_commit")
                await self._publisher.publish(plan.records, plan.position, self._store.store_id)
                break
            except RecordsRefused as exc:
                if len(batch) > 1:
                    raise
                for seq, reason in exc.refused.items():
                    seq = LocalSeq(seq)
                    if seq in bare:
                        raise KafkaUnavailable(
                            f"the dead-letter topic {self._s.dead_letter_topic} refuses even"
                            f" a bare dead letter ({reason}); fix its configuration"
                        ) from exc
                    if seq in refused:
                        bare.add(seq)  # the full dead letter is too large: send it bare
                    else:
                        refused[seq] = reason
        self._s.crash_hook("after_kafka_commit")
        self.position = plan.position
        self._advance_mark(plan.position)
        self._metrics.forwarded.inc(len(batch) - len(plan.dead_letters))
        # One observation per transaction, for its oldest event (per event would cost more
        # than the rest of the forwarding of that event).
        oldest_ms = batch[0].received_at_ms
        self._metrics.forward_latency.observe(max(0.0, time.time() - oldest_ms / 1000))

    def _advance_mark(self, position: LocalSeq) -> None:
        """Have the local mark follow ``position`` in the background (latest wins)."""
        self._mark_wanted = position
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._write_marks(), name="forwarder-mark")

    async def _write_marks(self) -> None:
        written: LocalSeq | None = None
        while written != self._mark_wanted:
            wanted = self._mark_wanted
            try:
                await self._store.mark_forwarded(wanted)
            except StoreError as exc:
                # Kafka holds the position; the next commit tries the mark again.
                if not self._mark_failing:
                    log.warning("the local forwarded mark cannot advance to %d: %s", wanted, exc)
                self._mark_failing = True
                return
            if self._mark_failing:
                log.info("the local forwarded mark advances again (now %d)", wanted)
            self._mark_failing = False
            written = wanted

    async def _quarantine(self, batch: list[StoredEvent], dead: dict[LocalSeq, str]) -> None:
        now_ms = int(time.time() * 1000)
        entries = [
            QuarantineEntry(s.seq, s.event.event_id, dead[s.seq], now_ms)
            for s in batch
            if s.seq in dead
        ]
        for entry in entries:
            log.error(
                "event %s (seq %d) goes to the dead letters: %s",
                entry.event_id,
                entry.seq,
                entry.reason,
            )
        await self._store.quarantine(entries)
        self._metrics.dlq_events.set(len(await self._store.quarantined()))

    def _link_down(self, exc: Exception) -> None:
        super()._link_down(exc)
        self._metrics.kafka_up.set(0)

    async def _housekeeping(self) -> None:
        """Refresh backlog gauges; prune forwarded events past their retention."""
        last_prune = 0.0
        while True:
            with contextlib.suppress(StoreError):
                backlog = await self._store.backlog()
                self._metrics.backlog_events.set(backlog.events)
                age = 0.0
                if backlog.oldest_received_ms is not None:
                    age = max(0.0, time.time() - backlog.oldest_received_ms / 1000)
                self._metrics.backlog_age.set(age)
                self._metrics.dlq_events.set(len(await self._store.quarantined()))
                if time.monotonic() - last_prune >= self._s.prune_interval_s:
                    last_prune = time.monotonic()
                    cutoff = int(time.time() * 1000) - self._s.retention_ms
                    pruned = await self._store.prune_forwarded(cutoff)
                    if pruned:
                        log.info("pruned %d forwarded events past retention", pruned)
            await asyncio.sleep(self._s.housekeeping_interval_s)
