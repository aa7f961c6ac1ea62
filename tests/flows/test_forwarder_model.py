"""Model-based test of the store -> forwarder -> Kafka path (guarantees 1-4 of DESIGN.md).

A hypothesis state machine drives the real :class:`SqliteEventStore` (a file in a temp dir), the
real :class:`Forwarder` and the in-memory publisher, wrapped so that "Kafka" can fail: unreachable
at open, unavailable or fenced at publish, a lost answer to a committed transaction, records the
broker refuses for good (a topic limit), oversize records (dead letters by plan), and process
crashes just before and just after the Kafka commit (the local mark is not written yet).

What survives a crash is what survives a kill -9: the Kafka side (:class:`FakeKafka`), and the
store's database and WAL files as they are at that moment, copied while the store is still open;
the next incarnation opens the copy. The dead forwarder and producer are dropped without a close
(the old store is closed after the copy only to free its thread; the copy never sees that).

A *forward* step runs one real forwarder session (``Forwarder._session``) with a budget of publish
attempts; the session ends when the budget is spent or the backlog is empty (the wrapper raises a
``KafkaUnavailable`` then, which ends a session like any outage). A *drain* runs the real session
loop (``start`` ... ``stop``, with backoff) against a healthy Kafka until the backlog is empty.

The model is the acknowledgement order of event ids (``append`` answered ``True``) and the poison
ones among them. After every step: Kafka's committed records hold a prefix of the acknowledgement
order (so no id twice, no phantom, per-key order kept, no gap), each on the right topic (the dead
letter topic for poison only), and the store still holds exactly the acknowledged events, with only
poison in quarantine. After a drain: every acknowledged event is in Kafka exactly once, poison on
the dead-letter topic and in quarantine, and the local mark equals Kafka's position.

Two deliberately broken publishers (one ignores the position read back from Kafka, one lets the
local mark run ahead of the Kafka commit) show that the machine finds such bugs.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import tempfile
import uuid
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from gateway.adapters.memory_publisher import MemoryPublisher
from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.core.backoff import Backoff
from gateway.core.ids import EventId, InstanceId, LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.core.records import OutRecord
from gateway.core.routing import DEFAULT_ROUTES, TopicRouter
from gateway.errors import KafkaError, KafkaFenced, KafkaUnavailable
from gateway.flows.forwarder import Forwarder, ForwarderSettings
from gateway.metrics import GatewayMetrics

T = TypeVar("T")

DLQ: Final = "dead-letters"
ROUTER: Final = TopicRouter(DEFAULT_ROUTES)
KEYS: Final = ("k0", "k1", "k2")
TYPE_OF_KEY: Final = {"k0": "Order.Placed", "k1": "Order.Placed", "k2": "Inventory.Updated"}
MAX_RECORD_BYTES: Final = 2000
"""Larger records are dead letters by plan (the forwarder never tries them)."""
TOPIC_LIMIT: Final = 1000
"""Larger records are refused by "the broker" (RecordsRefused): dead letters after a try."""
NORMAL: Final = "normal"
TOO_LARGE: Final = "too_large"
REFUSED: Final = "refused"
VALUE_BYTES: Final = {NORMAL: 300, TOO_LARGE: 5000, REFUSED: 1200}
BATCH_MAX: Final = 4
DRAIN_DEADLINE_S: Final = 10.0
RAM_DIR: Final = "/dev/shm" if Path("/dev/shm").is_dir() else None
"""Store files in RAM where there is a tmpfs: fsyncs are free, and a process crash (the copy of
the files as they are) is all the model simulates; durability against power loss is not its job."""


class SimulatedCrash(BaseException):
    """The process dies here. Not an ``Exception``: nothing in the gateway may catch it."""


class StepOver(KafkaUnavailable):
    """Ends a forwarding step (its publish budget is spent, or the backlog is empty)."""


class Fault(StrEnum):
    UNAVAILABLE = "unavailable"
    """The next publish fails; nothing committed."""
    FENCED = "fenced"
    """Another producer took our transactional id; the next publish is fenced."""
    LOST_ACK = "lost_ack"
    """The next transaction commits in Kafka, but its answer is lost (the client sees a timeout)."""
    UNREACHABLE_AT_OPEN = "unreachable_at_open"
    """The next session cannot open: Kafka unreachable."""
    CRASH_BEFORE_COMMIT = "before_kafka_commit"
    """The process dies just before its next Kafka commit."""
    CRASH_AFTER_COMMIT = "after_kafka_commit"
    """The process dies just after its next Kafka commit, before the local mark."""


PUBLISH_FAULTS: Final = (Fault.UNAVAILABLE, Fault.FENCED, Fault.LOST_ACK)


@dataclass
class FakeKafka:
    """The Kafka cluster: what survives every gateway crash and restart."""

    cluster: MemoryPublisher
    epoch: int = 0
    """Producer epoch of our transactional id: a newer ``open`` fences older producers."""
    faults: deque[Fault] = field(default_factory=deque)
    open_failures: int = 0


class StepPublisher:
    """One gateway incarnation's producer on :class:`FakeKafka` (a ``KafkaPublisher``).

    With a ``budget`` (forwarding steps) it allows that many publish attempts, then ends the
    session; it also ends the session when the forwarder goes idle (pings). With ``budget`` None
    it runs free (drains)."""

    def __init__(self, kafka: FakeKafka, store: SqliteEventStore) -> None:
        self._kafka = kafka
        self._store = store
        self._epoch = -1
        self.budget: int | None = 0
        self.idle_pings = 0
        """Pings of the forwarder, which it sends only when it has nothing to forward."""

    @property
    def max_record_bytes(self) -> int:
        return self._kafka.cluster.max_record_bytes

    async def open(self, store_id: str) -> LocalSeq:
        if self._kafka.open_failures:
            self._kafka.open_failures -= 1
            raise KafkaUnavailable("simulated: cluster unreachable at open")
        self._kafka.epoch += 1
        self._epoch = self._kafka.epoch
        return await self._kafka.cluster.open(store_id)

    async def publish(
        self, records: Sequence[OutRecord], position: LocalSeq, store_id: str
    ) -> None:
        if self.budget is not None:
            if self.budget <= 0:
                raise StepOver("step budget spent")
            self.budget -= 1
        if self._epoch != self._kafka.epoch:
            raise KafkaFenced("simulated: fenced by a newer producer")
        fault = self._kafka.faults.popleft() if self._kafka.faults else None
        if fault is Fault.UNAVAILABLE:
            raise KafkaUnavailable("simulated: publish timed out, nothing committed")
        if fault is Fault.FENCED:
            self._kafka.epoch += 1
            raise KafkaFenced("simulated: fenced by a newer producer")
        await self._kafka.cluster.publish(records, position, store_id)
        if fault is Fault.LOST_ACK:
            raise KafkaUnavailable("simulated: commit outcome unknown (it did commit)")

    async def ping(self) -> None:
        if self.budget is not None:
            raise StepOver("backlog empty")
        await self._kafka.cluster.ping()
        self.idle_pings += 1

    async def close(self) -> None:
        await self._kafka.cluster.close()


def event_id_of(record: OutRecord) -> EventId:
    return EventId(dict(record.headers)["event_id"].decode())


BATCHES: Final = st.lists(
    st.tuples(st.booleans(), st.integers(0, 1000), st.sampled_from(KEYS)), min_size=1, max_size=6
)
"""A device's batch: (re-send an id seen before?, which one, key of a new event)."""


class ForwarderMachine(RuleBasedStateMachine):
    """System: SqliteEventStore + Forwarder + StepPublisher over FakeKafka. Model: acks."""

    publisher_class: type[StepPublisher] = StepPublisher

    def __init__(self) -> None:
        super().__init__()
        self._runner = asyncio.Runner()
        self._tmp = tempfile.TemporaryDirectory(prefix="forwarder-model-", dir=RAM_DIR)
        self._generation = 0
        self.kafka = FakeKafka(
            MemoryPublisher(max_record_bytes=MAX_RECORD_BYTES, topic_limit=TOPIC_LIMIT)
        )
        self.crash_at: str | None = None
        """A crash point of the forwarder (``crash_hook``) where the process is to die."""
        # The model.
        self.acked: list[EventId] = []
        self.events: dict[EventId, StorableEvent] = {}
        self.kind: dict[EventId, str] = {}
        self._next_id = 0
        self.store_id = ""
        self._open_incarnation(self._new_store_path())
        self.store_id = self.store.store_id

    # -- harness ------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def _new_store_path(self) -> Path:
        self._generation += 1
        return Path(self._tmp.name) / f"incarnation-{self._generation}" / "store.db"

    def _crash_hook(self, point: str) -> None:
        if self.crash_at == point:
            self.crash_at = None
            raise SimulatedCrash(point)

    def _open_incarnation(self, path: Path) -> None:
        """A new gateway process on the store file at ``path``."""
        store = SqliteEventStore(path)
        self._run(store.open())
        self.store = store
        self.publisher = self.publisher_class(self.kafka, store)
        forwarder_settings = ForwarderSettings(
            router=ROUTER,
            dead_letter_topic=DLQ,
            instance=InstanceId("model"),
            bootstrap="memory",
            batch_max=BATCH_MAX,
            idle_wait_s=0.01,
            ping_interval_s=0.0,
            housekeeping_interval_s=0.05,
            prune_interval_s=1e9,  # pruning is not part of the model
            crash_hook=self._crash_hook,
        )
        self.forwarder = Forwarder(
            store,
            self.publisher,
            forwarder_settings,
            GatewayMetrics(),
            Backoff(0.001, 0.005, random.Random(0)),
        )
        if self.store_id:
            assert store.store_id == self.store_id, "the store's identity changed on reopen"

    def _die(self) -> None:
        """kill -9: keep what is on disk now, drop every object of the process."""
        old = self.store
        path = self._new_store_path()
        path.parent.mkdir(parents=True)
        for suffix in ("", "-wal"):  # -shm is rebuilt from the WAL by the next opener
            source = Path(f"{old.path}{suffix}")
            if source.exists():
                shutil.copyfile(source, Path(f"{path}{suffix}"))
        # The dead process's resources are released (it is not a clean close of the copy).
        self._run(old.close())
        shutil.rmtree(old.path.parent)
        self._open_incarnation(path)

    async def _session(self, publishes: int) -> bool:
        """One real forwarder session with a publish budget; True if the process crashed."""
        self.publisher.budget = publishes
        try:
            await self.forwarder._session()
        except KafkaError:
            pass  # the session loop would back off and open a new session
        except SimulatedCrash:
            return True
        return False

    async def _drain(self) -> None:
        """Kafka healthy again: the real session loop forwards until the backlog is empty."""
        self.kafka.faults.clear()
        self.kafka.open_failures = 0
        self.crash_at = None
        self.publisher.budget = None
        self.forwarder.start()
        try:
            # Forwarder.drain() polls every 50 ms: too slow for hundreds of drains. Same test,
            # then wait for an idle point after it (an empty read, so nothing in flight): a
            # broken forwarder may show an empty backlog with a transaction still open.
            idle_pings: int | None = None
            for _ in range(int(DRAIN_DEADLINE_S / 0.002)):
                if idle_pings is None and (await self.store.backlog()).events == 0:
                    idle_pings = self.publisher.idle_pings
                elif idle_pings is not None and self.publisher.idle_pings > idle_pings:
                    break
                await asyncio.sleep(0.002)
            else:
                backlog = await self.store.backlog()
                raise AssertionError(f"not drained in {DRAIN_DEADLINE_S}s: {backlog}")
        finally:
            await self.forwarder.stop()

    async def _check_drained(self) -> None:
        self.kafka_holds_a_prefix_of_the_acknowledged_order()
        ids = [event_id_of(r) for r in self.kafka.cluster.committed]
        missing = [i for i in self.acked if i not in set(ids)]
        assert not missing, f"acknowledged events never reached Kafka: {missing}"
        assert ids == self.acked, "Kafka does not hold every acknowledged event exactly once"
        poison = {i for i in self.acked if self.kind[i] != NORMAL}
        quarantined = {e.event_id for e in await self.store.quarantined()}
        assert quarantined == poison, f"quarantine {quarantined} != poison {poison}"
        assert (await self.store.backlog()).events == 0
        mark = await self.store.forwarded_mark()
        position = self.kafka.cluster.positions.get(self.store_id, LocalSeq(0))
        assert mark == position, f"local mark {mark} != Kafka position {position}"

    def _new_event(self, key: str, kind: str) -> StorableEvent:
        self._next_id += 1
        return StorableEvent(
            event_id=EventId(str(uuid.UUID(int=self._next_id))),
            event_type=TYPE_OF_KEY[key],
            event_version=1,
            key=key,
            source="device-1",
            correlation_id="corr-1",
            value=b'{"n":' + str(self._next_id).encode() + b"}" + b" " * VALUE_BYTES[kind],
        )

    def _append(self, batch: list[tuple[StorableEvent, str]]) -> None:
        known = set(self.events)
        expected: list[bool] = []
        for stored, _ in batch:
            expected.append(stored.event_id not in known)
            known.add(stored.event_id)
        outcomes = self._run(self.store.append([stored for stored, _ in batch]))
        assert outcomes == expected, f"append answered {outcomes}, the model says {expected}"
        for (stored, kind), new in zip(batch, outcomes, strict=True):
            if new:
                self.acked.append(stored.event_id)
                self.events[stored.event_id] = stored
                self.kind[stored.event_id] = kind

    # -- rules --------------------------------------------------------------------------------

    @initialize(items=BATCHES)
    def first_batch(self, items: list[tuple[bool, int, str]]) -> None:
        """Every run starts with a backlog (else many short runs would test nothing)."""
        self.append(items)

    @rule(items=BATCHES)
    def append(self, items: list[tuple[bool, int, str]]) -> None:
        """A device's batch: new events, and re-sent ids (earlier batches or this one)."""
        batch: list[tuple[StorableEvent, str]] = []
        for resend, pick, key in items:
            candidates = [*self.acked, *(e.event_id for e, _ in batch)]
            if resend and candidates:
                event_id = candidates[pick % len(candidates)]
                original = self.events.get(event_id)
                if original is None:  # sent earlier in this batch
                    original = next(e for e, _ in batch if e.event_id == event_id)
                batch.append((original, NORMAL))
            else:
                batch.append((self._new_event(key, NORMAL), NORMAL))
        self._append(batch)

    @rule(kind=st.sampled_from((TOO_LARGE, REFUSED)), key=st.sampled_from(KEYS))
    def append_poison(self, kind: str, key: str) -> None:
        """An event Kafka will never take: too large by plan, or refused by the broker."""
        self._append([(self._new_event(key, kind), kind)])

    @rule(publishes=st.integers(1, 4), fault=st.none() | st.sampled_from(Fault))
    def forward(self, publishes: int, fault: Fault | None) -> None:
        """One forwarder session of at most ``publishes`` attempts, with a fault armed or not
        (a fault that does not strike in this session stays armed for a later one)."""
        if fault is Fault.UNREACHABLE_AT_OPEN:
            self.kafka.open_failures += 1
        elif fault in PUBLISH_FAULTS:
            self.kafka.faults.append(fault)
        elif fault is not None:
            self.crash_at = fault.value
        if self._run(self._session(publishes)):
            self._die()

    @rule()
    def crash(self) -> None:
        self._die()

    @rule()
    def restart(self) -> None:
        async def stop() -> None:
            await self.forwarder.stop()
            await self.store.close()

        self._run(stop())
        self._open_incarnation(self.store.path)

    @rule()
    def drain(self) -> None:
        self._run(self._drain())
        self._run(self._check_drained())

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def kafka_holds_a_prefix_of_the_acknowledged_order(self) -> None:
        records = self.kafka.cluster.committed
        ids = [event_id_of(r) for r in records]
        twice = [i for i, n in Counter(ids).items() if n > 1]
        assert not twice, f"event ids committed twice in Kafka: {twice}"
        phantoms = [i for i in ids if i not in self.events]
        assert not phantoms, f"records in Kafka that were never acknowledged: {phantoms}"
        for key in KEYS:
            in_kafka = [i for i in ids if self.events[i].key == key]
            acked = [i for i in self.acked if self.events[i].key == key]
            assert in_kafka == acked[: len(in_kafka)], f"key {key}: order or gap in Kafka"
        assert ids == self.acked[: len(ids)], "Kafka does not hold a prefix of the store order"
        for record, event_id in zip(records, ids, strict=True):
            original = self.events[event_id]
            if self.kind[event_id] == NORMAL:
                assert record.topic == ROUTER.topic_for(original.event_type), record.topic
                assert (record.key, record.value) == (original.key.encode(), original.value)
            else:
                assert record.topic == DLQ, f"poison {event_id} on {record.topic}"
                assert json.loads(record.value)["event_id"] == event_id

    @invariant()
    def store_keeps_exactly_the_acknowledged_events(self) -> None:
        async def check() -> None:
            assert await self.store.count() == len(self.acked), "store lost or invented events"
            for event_id in self.acked[-3:]:
                stored = await self.store.get(event_id)
                assert stored is not None, f"acknowledged {event_id} is not in the store"
                assert stored.event == self.events[event_id]
            for entry in await self.store.quarantined():
                assert self.kind[entry.event_id] != NORMAL, f"innocent {entry} quarantined"

        self._run(check())

    def teardown(self) -> None:
        failing = sys.exc_info()[0] is not None
        try:
            if not failing:  # the final drain; skipped when a step already failed
                self._run(self._drain())
                self._run(self._check_drained())
        finally:
            try:
                self._run(self.store.close())
            finally:
                self._runner.close()
                self._tmp.cleanup()


class ForgetsKafkaPosition(StepPublisher):
    """Broken on purpose: ignores the position read back from Kafka (reports none)."""

    async def open(self, store_id: str) -> LocalSeq:
        await super().open(store_id)
        return LocalSeq(0)


class MarksBeforePublishing(StepPublisher):
    """Broken on purpose: the local mark is advanced before the Kafka transaction."""

    async def publish(
        self, records: Sequence[OutRecord], position: LocalSeq, store_id: str
    ) -> None:
        await self._store.mark_forwarded(position)
        await super().publish(records, position, store_id)


class ForgetfulMachine(ForwarderMachine):
    publisher_class = ForgetsKafkaPosition


class EagerMarkMachine(ForwarderMachine):
    publisher_class = MarksBeforePublishing


def test_store_and_forwarder_against_the_model(long_run: bool) -> None:
    run_state_machine_as_test(
        ForwarderMachine,
        settings=settings(
            max_examples=500 if long_run else 40,
            stateful_step_count=60 if long_run else 30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.parametrize(
    ("machine", "violation"),
    [
        (ForgetfulMachine, "committed twice"),
        (EagerMarkMachine, "gap|never reached Kafka"),
    ],
    ids=["ignores-kafka-position", "marks-before-publish"],
)
def test_the_model_catches_a_broken_forwarder(
    machine: type[ForwarderMachine], violation: str
) -> None:
    with pytest.raises(AssertionError, match=violation):
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=200,
                stateful_step_count=30,
                deadline=None,
                database=None,
                derandomize=True,
                phases=(Phase.generate,),
                suppress_health_check=[HealthCheck.too_slow],
                print_blob=False,
            ),
        )
