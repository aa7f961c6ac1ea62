"""Which Kafka history the gateway streams from: the cluster id and the ids of the topics.

A stream cursor's epoch (:func:`gateway.core.cursor.derive_epoch`) must change when the
history behind it cannot be trusted: another cluster, or a topic deleted and re-created under
the same name (its offsets start again at 0 and mean other records). Kafka tells these apart by
ids: the cluster id, and since Kafka 2.8 a UUID per topic that a re-created topic does not keep.

aiokafka 0.14 speaks the Metadata API only up to v5, which carries the cluster id but not the
topic ids (they arrive in v10). So this module defines Metadata v10 to v13 on aiokafka's own
protocol building blocks (flexible versions: compact strings and arrays, tagged fields) plus a
16-byte UUID type, and sends it through an :class:`aiokafka.client.AIOKafkaClient`. The field
lists are those of the schemas in ``kafka-clients`` 4.1.1; the connection picks the highest
version both sides support, which is v13 for a Kafka 4.x broker.

aiokafka's errors are translated here: every failure to get an answer is ``KafkaUnavailable``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.errors import KafkaError as AiokafkaError
from aiokafka.protocol.api import RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from gateway.adapters.kafka_common import close_quietly, describe
from gateway.errors import KafkaUnavailable

_METADATA_API_KEY: Final = 3
_VERSIONS: Final = (10, 11, 12, 13)
"""Metadata versions defined here: v10 adds topic ids; v11 drops cluster authorized
operations; v12 allows lookups by id (same fields); v13 adds a top-level error code."""
_UNKNOWN_TOPIC: Final = 3
"""UNKNOWN_TOPIC_OR_PARTITION: the topic does not exist."""
_NO_ID: Final = uuid.UUID(int=0)
_TAGS: Final = ("tags", TaggedFields)


@dataclass(frozen=True, slots=True)
class HistoryIdentity:
    """The Kafka cluster and the ids of those of the asked topics that exist."""

    cluster_id: str
    topic_ids: dict[str, str]
    """Topic name -> topic id as a canonical UUID string; a missing topic is absent."""


class _Uuid:
    """Kafka's ``uuid`` field type: 16 raw bytes, big-endian."""

    @classmethod
    def encode(cls, value: uuid.UUID) -> bytes:
        return value.bytes

    @classmethod
    def decode(cls, data: BytesIO) -> uuid.UUID:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding UUID")
        return uuid.UUID(bytes=raw)

    @classmethod
    def repr(cls, value: uuid.UUID) -> str:
        return str(value)


def _request_schema(version: int) -> Schema:
    cluster_operations = (
        [("include_cluster_authorized_operations", Boolean)] if version == 10 else []
    )
    return Schema(
        ("topics", CompactArray(("topic_id", _Uuid), ("name", CompactString()), _TAGS)),
        ("allow_auto_topic_creation", Boolean),
        *cluster_operations,
        ("include_topic_authorized_operations", Boolean),
        _TAGS,
    )


def _response_schema(version: int) -> Schema:
    partition = CompactArray(
        ("error_code", Int16),
        ("partition_index", Int32),
        ("leader_id", Int32),
        ("leader_epoch", Int32),
        ("replica_nodes", CompactArray(Int32)),
        ("isr_nodes", CompactArray(Int32)),
        ("offline_replicas", CompactArray(Int32)),
        _TAGS,
    )
    broker = CompactArray(
        ("node_id", Int32),
        ("host", CompactString()),
        ("port", Int32),
        ("rack", CompactString()),
        _TAGS,
    )
    topic = CompactArray(
        ("error_code", Int16),
        ("name", CompactString()),
        ("topic_id", _Uuid),
        ("is_internal", Boolean),
        ("partitions", partition),
        ("topic_authorized_operations", Int32),
        _TAGS,
    )
    trailer = {10: [("cluster_authorized_operations", Int32)], 13: [("error_code", Int16)]}
    return Schema(
        ("throttle_time_ms", Int32),
        ("brokers", broker),
        ("cluster_id", CompactString()),
        ("controller_id", Int32),
        ("topics", topic),
        *trailer.get(version, []),
        _TAGS,
    )


def _struct_class(version: int) -> Any:
    """The request struct of one Metadata version (built with type(): aiokafka is untyped)."""
    attrs = {"API_KEY": _METADATA_API_KEY, "API_VERSION": version}
    response = type(
        f"MetadataResponse_v{version}", (Response,), {**attrs, "SCHEMA": _response_schema(version)}
    )
    return type(
        f"MetadataRequest_v{version}",
        (RequestStruct,),
        {
            **attrs,
            "FLEXIBLE_VERSION": True,
            "RESPONSE_TYPE": response,
            "SCHEMA": _request_schema(version),
        },
    )


_STRUCTS: Final = {version: _struct_class(version) for version in _VERSIONS}


class _TopicIdsRequest:
    """A Metadata request by topic name that never creates topics, in the highest version the
    broker and this module share (what ``AIOKafkaConnection.send`` asks of a request)."""

    API_KEY: Final = _METADATA_API_KEY

    def __init__(self, topics: Collection[str]) -> None:
        self._topics: list[tuple[uuid.UUID, str, dict[int, bytes]]] = [
            (_NO_ID, name, {}) for name in sorted(set(topics))
        ]

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        low, high = versions.get(_METADATA_API_KEY, (0, -1))
        usable = [version for version in _VERSIONS if low <= version <= high]
        if not usable:
            raise IncompatibleBrokerVersion(
                f"topic ids need Metadata v{_VERSIONS[0]}+; the broker speaks v{low}..v{high}"
            )
        version = max(usable)
        cluster_operations = [False] if version == 10 else []
        return _STRUCTS[version](self._topics, False, *cluster_operations, False, {})


async def read_history_identity(client: AIOKafkaClient, topics: Collection[str]) -> HistoryIdentity:
    """Ask any reachable broker of a bootstrapped ``client`` for the cluster id and topic ids."""
    request = _TopicIdsRequest(topics)
    nodes = [broker.nodeId for broker in client.cluster.brokers()]
    random.shuffle(nodes)
    failure: BaseException | None = None
    for node in nodes:
        try:
            response = await client.send(node, request)
        except (AiokafkaError, OSError, TimeoutError) as exc:
            failure = exc
            continue
        return _identity(response)
    reason = describe(failure) if failure is not None else "no broker known"
    raise KafkaUnavailable(f"cannot read topic ids: {reason}") from failure


async def fetch_history_identity(
    bootstrap: str, topics: Collection[str], request_timeout_ms: int = 10_000
) -> HistoryIdentity:
    """:func:`read_history_identity` through a client of its own, closed before returning."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id="sync-gateway-identity",
        request_timeout_ms=request_timeout_ms,
    )
    try:
        try:
            await client.bootstrap()
        except (AiokafkaError, OSError, TimeoutError) as exc:
            raise KafkaUnavailable(f"cannot reach Kafka: {describe(exc)}") from exc
        return await read_history_identity(client, topics)
    finally:
        await close_quietly(client.close())


def _identity(response: Any) -> HistoryIdentity:
    error = getattr(response, "error_code", 0)
    if error:
        raise KafkaUnavailable(f"Metadata answered error code {error}")
    cluster_id = response.cluster_id
    if not cluster_id:
        raise KafkaUnavailable("the broker names no cluster id")
    topic_ids: dict[str, str] = {}
    for error, name, topic_id, *_ in response.topics:
        if error == _UNKNOWN_TOPIC or name is None:
            continue
        if error or topic_id == _NO_ID:
            raise KafkaUnavailable(f"no topic id for {name!r} (error code {error})")
        topic_ids[name] = str(topic_id)
    return HistoryIdentity(cluster_id=str(cluster_id), topic_ids=topic_ids)
