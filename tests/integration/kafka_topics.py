"""Per-test Kafka topic names, so that tests sharing one broker never see each other's data."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.core.routing import DEFAULT_ROUTES


class TestTopics:
    __test__ = False  # not a test class

    def __init__(self) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.routes = {aggregate: f"{self.prefix}.{t}" for aggregate, t in DEFAULT_ROUTES.items()}
        self.orders = self.routes["Order"]
        self.inventory = self.routes["Inventory"]
        self.channel_rules = (
            f"{self.inventory}=inventory:{{payload.storeId}},"
            f"{self.orders}=orders:{{payload.userId}}"
        )
        self.dead_letters = f"{self.prefix}.dead-letters"

    def settings(self, bootstrap: str) -> dict[str, str]:
        """Gateway settings that route everything to this test's topics."""
        return {
            "kafka_bootstrap": bootstrap,
            "instance_id": f"{self.prefix}-gw",
            "topic_routes": json.dumps(self.routes),
            "dead_letter_topic": self.dead_letters,
            "position_topic": f"{self.prefix}.positions",
            "channel_rules": self.channel_rules,
            "cursor_key": "test-cursor-key-0123456789",
        }


async def create_topic(bootstrap: str, name: str, partitions: int, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, topic: str, deadline_s: float = 30.0) -> None:
    """Delete a topic and wait (bounded) until metadata no longer lists it: the deletion
    completes asynchronously, and a topic created before then would clash with it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        deadline = time.monotonic() + deadline_s
        while topic in await admin.list_topics():
            assert time.monotonic() < deadline, f"{topic} still listed after {deadline_s}s"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
