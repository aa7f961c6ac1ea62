"""When is a freshly started Kafka broker really ready? When metadata lists it, a
transactional producer can find its transaction coordinator, and the group coordinator answers.
The probes run in a private event loop, so that a synchronous caller (a pytest fixture) or one
already inside an event loop can both wait on them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

_READINESS_GROUP = "__sync_gateway_readiness"
_READINESS_TXN_ID = "__sync_gateway_readiness"
_PROBE_REQUEST_TIMEOUT_MS = 5000
_PROBE_ATTEMPT_TIMEOUT = 15.0


class NotReady(Exception):
    pass


async def _probe_once(bootstrap: str) -> None:
    """One readiness check: metadata, group coordinator, transaction coordinator (raises if not)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="sync-gateway-readiness",
        request_timeout_ms=_PROBE_REQUEST_TIMEOUT_MS,
    )
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        if not cluster.get("brokers"):
            raise NotReady("metadata lists no broker")
        coordinator = await admin.find_coordinator(_READINESS_GROUP, 0)
        responses = await admin.describe_consumer_groups(
            [_READINESS_GROUP], group_coordinator_id=coordinator
        )
        for response in responses:
            for group in response.groups:
                # 0: NONE (an unknown group is "Dead"); 69: GROUP_ID_NOT_FOUND (newer versions).
                if group[0] not in (0, 69):
                    raise NotReady(f"group coordinator answers error code {group[0]}")
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="sync-gateway-readiness",
        transactional_id=_READINESS_TXN_ID,
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=_PROBE_REQUEST_TIMEOUT_MS,
    )
    try:
        await producer.start()  # InitProducerId through the transaction coordinator
    finally:
        await producer.stop()


async def wait_until_ready(bootstrap: str, deadline: float, alive: Callable[[], bool]) -> None:
    last_error = "no attempt made"
    while True:
        if not alive():
            raise NotReady("the broker process exited")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"last readiness probe: {last_error}")
        try:
            await asyncio.wait_for(
                _probe_once(bootstrap), timeout=min(remaining, _PROBE_ATTEMPT_TIMEOUT)
            )
            return
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)


def run_in_private_loop(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine with `asyncio.run` in a helper thread (the caller may own a running loop)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(factory())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="kafka-broker-readiness", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
