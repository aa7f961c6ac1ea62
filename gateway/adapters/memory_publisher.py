"""An in-memory :class:`~gateway.flows.ports.KafkaPublisher` for unit tests of the forwarder.

It keeps transactions' all-or-nothing rule, per-store positions and refusals of oversize
records, so that the contract tests can hold it and the aiokafka publisher to the same
assertions. Never evidence that exactly-once holds against a real broker.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.ids import LocalSeq
from gateway.core.records import OutRecord
from gateway.errors import KafkaUnavailable, RecordsRefused


class MemoryPublisher:
    def __init__(self, *, max_record_bytes: int = 1_000_000, topic_limit: int | None = None):
        self._max_record_bytes = max_record_bytes
        self._topic_limit = topic_limit
        """Like a topic's max.message.bytes: larger records are refused at publish time."""
        self.committed: list[OutRecord] = []
        self.positions: dict[str, LocalSeq] = {}
        self.down = False
        self.is_open = False
        self.transactions = 0

    @property
    def max_record_bytes(self) -> int:
        return self._max_record_bytes

    async def open(self, store_id: str) -> LocalSeq:
        if self.down:
            raise KafkaUnavailable("simulated outage")
        self.is_open = True
        return self.positions.get(store_id, LocalSeq(0))

    async def ping(self) -> None:
        if self.down or not self.is_open:
            self.is_open = False
            raise KafkaUnavailable("simulated outage")

    async def publish(
        self, records: Sequence[OutRecord], position: LocalSeq, store_id: str
    ) -> None:
        if self.down or not self.is_open:
            self.is_open = False
            raise KafkaUnavailable("simulated outage")
        if self._topic_limit is not None:
            refused: dict[int, str] = {
                r.seq: f"record of {r.size} bytes over the topic limit"
                for r in records
                if r.size > self._topic_limit
            }
            if refused:
                raise RecordsRefused(refused)
        self.committed.extend(records)
        self.positions[store_id] = position
        self.transactions += 1

    async def close(self) -> None:
        self.is_open = False
