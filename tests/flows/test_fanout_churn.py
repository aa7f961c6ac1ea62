"""Fan-out over the real SQLite log under churn: records keep arriving while many subscribers
drop at random moments (mid-frame, mid-replay) and resume with the cursor of the last item they
applied. Every subscriber must end with every record of its channel since it first subscribed,
once and in per-partition order (DESIGN.md guarantee 5), and no log read may see the log as it
was before a commit that finished before the read began (a stale snapshot lets a replay go live
over records it never read: a silent gap).

CI runs two seeds (~10 s); ``--long`` runs twenty."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Mapping
from pathlib import Path

from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from gateway.core.cursor import Cursor
from gateway.core.ids import Epoch, KafkaOffset
from gateway.flows.downstream_ports import LogBounds, LogPage, PartitionKey
from gateway.flows.fanout import Fanout
from gateway.flows.subscription import CaughtUp, SubscriptionClosed, Update
from tests.adapters.test_downstream_log import rec

EPOCH = Epoch("e1")
TOPIC = "inventory.events"
PARTITIONS = 3
CHANNELS = [f"inventory:st-{i}" for i in range(4)]
BATCHES = 250
SUBSCRIBERS = 40


class CheckedLog(SqliteDownstreamLog):
    """The SQLite log, noting every read that misses a commit finished before it began."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.committed: dict[PartitionKey, KafkaOffset] = {}
        self.stale: list[str] = []

    async def read(
        self, channels: Collection[str], after: Mapping[PartitionKey, KafkaOffset], limit: int
    ) -> LogPage:
        before = dict(self.committed)
        page = await super().read(channels, after, limit)
        if page.complete:
            self.stale += [
                f"read {k}: {page.positions.get(k)} < {v}"
                for k, v in before.items()
                if page.positions.get(k, 0) < v
            ]
        return page

    async def bounds(self, topic: str, partition: int) -> LogBounds | None:
        before = self.committed.get((topic, partition))
        held = await super().bounds(topic, partition)
        if before is not None and held is not None and held.next < before:
            self.stale.append(f"bounds {topic}:{partition}: {held.next} < {before}")
        return held


async def churn(tmp_path: Path, seed: int) -> tuple[list[str], list[str]]:
    """One run; (problems, stale reads)."""
    rng = random.Random(seed)
    dlog = CheckedLog(tmp_path / f"log-{seed}.sqlite3")
    await dlog.open()
    await dlog.begin_epoch(EPOCH)
    nexts = dict.fromkeys(range(PARTITIONS), 0)
    history: dict[str, list[tuple[int, int]]] = {c: [] for c in CHANNELS}
    fanout = Fanout(dlog, EPOCH, max_queue=20, now=lambda: dict(dlog.committed))
    produced = asyncio.Event()

    async def produce() -> None:
        for _ in range(BATCHES):
            batch = []
            for _ in range(rng.randint(1, 12)):
                partition, channel = rng.randrange(PARTITIONS), rng.choice(CHANNELS)
                batch.append(rec(TOPIC, partition, nexts[partition], channel))
                history[channel].append((partition, nexts[partition]))
                nexts[partition] += 1 + (rng.random() < 0.5)  # transaction markers
            moved = {(TOPIC, p): KafkaOffset(n) for p, n in nexts.items()}
            fresh = await dlog.append_batch(batch, moved)
            dlog.committed.update(moved)
            fanout.on_records(fresh)
            await asyncio.sleep(rng.uniform(0, 0.01))
        produced.set()

    async def subscriber(i: int) -> tuple[str, list[tuple[int, int]], str]:
        channel, crng = CHANNELS[i % len(CHANNELS)], random.Random(seed * 1000 + i)
        cursor: Cursor | None = None
        got: list[tuple[int, int]] = []
        for _ in range(10_000):  # bounded: the producer ends long before
            final = produced.is_set()
            sub = fanout.subscribe(channel, cursor)
            try:
                async with asyncio.timeout(10 if final else crng.uniform(0.005, 0.3)):
                    while True:
                        items = [await sub.next_item(), *sub.take_ready(7)]
                        for item in items:
                            if not final and crng.random() < 0.02:
                                raise ConnectionError  # dropped mid-frame: the rest is lost
                            if isinstance(item, Update):
                                got.append((item.record.partition, item.record.offset))
                                cursor = item.cursor_after
                            elif isinstance(item, CaughtUp):
                                cursor = item.cursor
                                if final:
                                    return channel, got, ""
                            else:
                                return channel, got, f"subscriber {i} reset: {item.reason}"
                        await asyncio.sleep(crng.uniform(0, 0.004))
            except (ConnectionError, SubscriptionClosed, TimeoutError):
                if final:
                    return channel, got, f"subscriber {i} did not catch up at the end"
            finally:
                fanout.unsubscribe(sub)
            await asyncio.sleep(crng.uniform(0, 0.02))
        return channel, got, f"subscriber {i} never ended"

    producer = asyncio.create_task(produce())
    results = await asyncio.gather(*(subscriber(i) for i in range(SUBSCRIBERS)))
    await producer
    await fanout.close()
    await dlog.close()
    problems = [problem for _, _, problem in results if problem]
    for i, (channel, got, _) in enumerate(results):
        first: dict[int, int] = {}
        for partition, offset in got:
            first.setdefault(partition, offset)
        for partition, start in first.items():
            received = [o for p, o in got if p == partition]
            owed = [o for p, o in history[channel] if p == partition and o >= start]
            if received != owed:
                missing = sorted(set(owed) - set(received))
                problems.append(
                    f"seed {seed} subscriber {i} partition {partition}: {len(missing)} missing "
                    f"(first {missing[:3]}), {len(received) - len(set(received))} repeated"
                )
    return problems, dlog.stale


async def test_subscribers_dropping_and_resuming_miss_nothing(
    tmp_path: Path, long_run: bool
) -> None:
    for seed in range(20 if long_run else 2):
        problems, stale = await churn(tmp_path, seed)
        assert not stale, stale[:5]
        assert not problems, problems[:5]
