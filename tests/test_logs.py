"""The log filter that demotes aiokafka's self-retried errors, and only those."""

from __future__ import annotations

import logging

import pytest

from gateway.logs import demote_transient_kafka_errors


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_a_retried_leader_error_of_aiokafka_becomes_a_warning() -> None:
    line = record(
        "aiokafka.consumer.fetcher",
        logging.ERROR,
        "Failed fetch offsets from 1: [Error 6] NotLeaderForPartitionError: TopicPartition(...)",
    )
    assert demote_transient_kafka_errors(line)
    assert (line.levelno, line.levelname) == (logging.WARNING, "WARNING")


@pytest.mark.parametrize(
    ("name", "level", "message"),
    [
        ("aiokafka.producer", logging.ERROR, "Unable to update metadata: KafkaConnectionError"),
        ("gateway.flows.forwarder", logging.ERROR, "NotLeaderForPartitionError in our code"),
        ("aiokafka.consumer.fetcher", logging.CRITICAL, "NotLeaderForPartitionError"),
    ],
)
def test_other_errors_keep_their_level(name: str, level: int, message: str) -> None:
    line = record(name, level, message)
    assert demote_transient_kafka_errors(line)
    assert line.levelno == level
