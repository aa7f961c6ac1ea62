"""The testing toolkit against itself: the shared real Kafka broker and Redis server work.

Uses the session fixtures `kafka_broker` and `redis_server` of tests/conftest.py; starts no
broker of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from gateway.testing import kafka_broker as kafka_broker_module
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_jars import ensure_jars
from gateway.testing.ports import free_port, port_is_open, wait_for_port
from gateway.testing.redis_server import RedisServer

pytestmark = pytest.mark.integration

STEP_TIMEOUT = 20.0


def _topic() -> str:
    return f"harness-{uuid.uuid4().hex[:12]}"


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), STEP_TIMEOUT)
        await asyncio.wait_for(admin.create_topics([NewTopic(topic, 1, 1)]), STEP_TIMEOUT)
    finally:
        await admin.close()


@asynccontextmanager
async def _transactional_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"harness-{uuid.uuid4().hex[:12]}",
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=10_000,
    )
    try:
        await asyncio.wait_for(producer.start(), STEP_TIMEOUT)
        yield producer
    finally:
        await producer.stop()


async def _produce_in_transaction(
    producer: AIOKafkaProducer, topic: str, values: list[bytes], *, commit: bool
) -> None:
    await producer.begin_transaction()
    for value in values:
        await asyncio.wait_for(producer.send_and_wait(topic, value), STEP_TIMEOUT)
    if commit:
        await asyncio.wait_for(producer.commit_transaction(), STEP_TIMEOUT)
    else:
        await asyncio.wait_for(producer.abort_transaction(), STEP_TIMEOUT)


async def _read_until(
    bootstrap: str, topic: str, last: bytes, *, isolation_level: str = "read_committed"
) -> list[bytes]:
    """Every value of `topic` from the start up to and including `last`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    values: list[bytes] = []
    try:
        await asyncio.wait_for(consumer.start(), STEP_TIMEOUT)
        async with asyncio.timeout(STEP_TIMEOUT):
            while last not in values:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    values.extend(record.value for record in records)
    finally:
        await consumer.stop()
    return values


async def test_transactions_round_trip_read_committed(kafka_broker: KafkaBroker) -> None:
    topic = _topic()
    await _create_topic(kafka_broker.bootstrap, topic)
    async with _transactional_producer(kafka_broker.bootstrap) as producer:
        await _produce_in_transaction(producer, topic, [b"aborted-1", b"aborted-2"], commit=False)
        await _produce_in_transaction(producer, topic, [b"kept-1", b"kept-2"], commit=True)

    committed = await _read_until(kafka_broker.bootstrap, topic, b"kept-2")
    assert committed == [b"kept-1", b"kept-2"]
    # The aborted records did reach the log: only read_committed hides them.
    everything = await _read_until(
        kafka_broker.bootstrap, topic, b"kept-2", isolation_level="read_uncommitted"
    )
    assert everything == [b"aborted-1", b"aborted-2", b"kept-1", b"kept-2"]


async def test_stop_start_keeps_data_and_address(kafka_broker: KafkaBroker) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = _topic()
    group = f"harness-{uuid.uuid4().hex[:12]}"
    partition = TopicPartition(topic, 0)
    await _create_topic(bootstrap, topic)
    async with _transactional_producer(bootstrap) as producer:
        await _produce_in_transaction(producer, topic, [b"before"], commit=True)
    committer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        await asyncio.wait_for(committer.start(), STEP_TIMEOUT)
        committer.assign([partition])
        await asyncio.wait_for(committer.commit({partition: 1}), STEP_TIMEOUT)
    finally:
        await committer.stop()

    try:
        await asyncio.to_thread(kafka_broker.stop)
        assert not kafka_broker.is_running
        assert not port_is_open("127.0.0.1", kafka_broker.port)
        await asyncio.to_thread(kafka_broker.start)
    finally:
        if not kafka_broker.is_running:  # leave the shared broker running for later tests
            await asyncio.to_thread(kafka_broker.start)
    assert kafka_broker.is_running
    assert kafka_broker.bootstrap == bootstrap

    async with _transactional_producer(bootstrap) as producer:
        await _produce_in_transaction(producer, topic, [b"after"], commit=True)
    assert await _read_until(bootstrap, topic, b"after") == [b"before", b"after"]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    try:
        await asyncio.wait_for(reader.start(), STEP_TIMEOUT)
        assert await asyncio.wait_for(reader.committed(partition), STEP_TIMEOUT) == 1
    finally:
        await reader.stop()


async def test_pause_makes_sends_time_out_until_resume(kafka_broker: KafkaBroker) -> None:
    topic = _topic()
    await _create_topic(kafka_broker.bootstrap, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, acks="all", request_timeout_ms=2000
    )
    try:
        await asyncio.wait_for(producer.start(), STEP_TIMEOUT)
        await asyncio.wait_for(producer.send_and_wait(topic, b"warm"), STEP_TIMEOUT)
        kafka_broker.pause()
        try:
            assert kafka_broker.is_paused
            with pytest.raises(KafkaError):
                await asyncio.wait_for(producer.send_and_wait(topic, b"frozen"), 10)
        finally:
            kafka_broker.resume()
        assert not kafka_broker.is_paused
        await asyncio.wait_for(producer.send_and_wait(topic, b"thawed"), STEP_TIMEOUT)
    finally:
        await producer.stop()


def test_jars_are_cached_and_not_fetched_again(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    libs = ensure_jars()
    assert any(libs.glob("kafka_2.13-*.jar"))
    monkeypatch.setenv("PATH", "/nonexistent")  # neither java nor mvn can be found now
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert ensure_jars() == libs


def test_run_without_java_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    argv = ["run", "--data-dir", str(tmp_path / "kafka"), "--port", str(free_port())]
    assert kafka_broker_module.main([*argv, "--controller-port", str(free_port())]) == 3
    assert "java" in capsys.readouterr().err


def test_wait_for_port_times_out_on_a_closed_port() -> None:
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", free_port(), timeout=0.3)


def test_redis_set_get_and_flushall(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url, socket_timeout=2.0) as client:
        client.set("harness:key", b"value")
        assert client.get("harness:key") == b"value"
        redis_server.flushall()
        assert client.get("harness:key") is None
        assert client.dbsize() == 0


def test_redis_kill_and_restart_gives_an_empty_server(redis_server: RedisServer) -> None:
    url = redis_server.url
    with redis.Redis.from_url(url, socket_timeout=2.0) as client:
        client.set("harness:survivor", b"value")
        assert client.dbsize() == 1
    try:
        redis_server.kill()
        assert not redis_server.is_running
        with (
            pytest.raises(redis.ConnectionError),
            redis.Redis.from_url(url, socket_connect_timeout=1.0) as client,
        ):
            client.ping()
        redis_server.start()
    finally:
        if not redis_server.is_running:
            redis_server.start()
    assert redis_server.url == url
    with redis.Redis.from_url(url, socket_timeout=2.0) as client:
        assert client.ping()
        assert client.dbsize() == 0
