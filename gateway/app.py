"""The one wiring module: builds every component from a :class:`GatewayConfig` and hands the
Starlette application its routes and lifespan."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from starlette.applications import Starlette
from starlette.routing import Route

from gateway.adapters.http_ingest import IngestEndpoint
from gateway.adapters.http_ops import healthz, metrics_endpoint, openapi, readyz_endpoint
from gateway.adapters.kafka_producer import AiokafkaPublisher, KafkaSettings
from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.config import GatewayConfig
from gateway.core.ids import InstanceId
from gateway.core.ingest import IngestLimits
from gateway.core.routing import TopicRouter
from gateway.core.schemas import SchemaRegistry
from gateway.errors import StoreError
from gateway.flows.forwarder import Forwarder, ForwarderSettings
from gateway.flows.ingest import IngestFlow
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

CRASH_EXIT_CODE: Final = 86


def _crash_hook(point: str | None) -> Callable[[str], None]:
    def hook(name: str) -> None:
        if name == point:
            log.error("crash point %r reached: exiting abruptly", name)
            os._exit(CRASH_EXIT_CODE)

    return hook


class Gateway:
    """The running parts of one gateway instance."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.schemas = SchemaRegistry.load(config.schema_dir)
        router = TopicRouter(config.topic_routes)
        router.check_covers(self.schemas.event_types)
        self.store = SqliteEventStore(
            config.store_path,
            max_group_events=config.group_commit_max_events,
            max_bytes=config.max_store_bytes,
            on_commit=self.metrics.commit_group_events.observe,
        )
        self.ingest = IngestFlow(
            store=self.store,
            checker=self.schemas,
            limits=IngestLimits(
                max_batch_events=config.max_batch_events,
                max_event_bytes=config.max_event_bytes,
            ),
            metrics=self.metrics,
        )
        instance = InstanceId(config.instance_id)
        self.publisher = AiokafkaPublisher(
            KafkaSettings(
                bootstrap=config.kafka_bootstrap,
                instance=instance,
                position_topic=config.position_topic,
                topics={topic: {} for topic in [*router.topics, config.dead_letter_topic]},
                create_topics=config.create_topics,
                partitions=config.topic_partitions,
                replication_factor=config.topic_replication_factor,
                request_timeout_ms=config.kafka_request_timeout_ms,
                transaction_timeout_s=config.kafka_transaction_timeout_s,
                max_record_bytes=config.max_record_bytes,
            )
        )
        self.forwarder = Forwarder(
            self.store,
            self.publisher,
            ForwarderSettings(
                router=router,
                dead_letter_topic=config.dead_letter_topic,
                instance=instance,
                bootstrap=config.kafka_bootstrap,
                batch_max=config.forward_batch_max,
                retention_ms=config.retention_s * 1000,
                prune_interval_s=config.prune_interval_s,
                crash_hook=_crash_hook(config.crash_point),
            ),
            self.metrics,
        )

    async def start(self) -> None:
        await self.store.open()
        backlog = await self.store.backlog()
        log.info(
            "gateway %s: store %s open, %d events not yet forwarded",
            self.config.instance_id,
            self.config.store_path,
            backlog.events,
        )
        self.forwarder.start()

    async def stop(self) -> None:
        if self.config.shutdown_drain_s > 0 and not await self.forwarder.drain(
            self.config.shutdown_drain_s
        ):
            log.warning("shutting down with a backlog; it is forwarded at the next start")
        await self.forwarder.stop()
        await self.store.close()

    async def status(self) -> tuple[bool, dict[str, Any]]:
        """Readiness (store usable) and what an operator wants to see."""
        kafka = self.forwarder.status()
        try:
            backlog = await self.store.backlog()
            dlq = len(await self.store.quarantined())
        except StoreError as exc:
            return False, {"store": {"state": "unavailable", "error": str(exc)}, "kafka": kafka}
        age = None
        if backlog.oldest_received_ms is not None:
            age = round(max(0.0, time.time() - backlog.oldest_received_ms / 1000), 3)
        return True, {
            "instance": self.config.instance_id,
            "store": {"state": "open", "path": str(self.config.store_path)},
            "backlog": {"events": backlog.events, "oldest_age_s": age},
            "dlq": {"events": dlq},
            "kafka": kafka,
        }

    def routes(self) -> list[Route]:
        ingest = IngestEndpoint(
            self.ingest,
            max_body_bytes=self.config.max_body_bytes,
            retry_after_s=self.config.store_retry_after_s,
        )
        return [
            Route("/v1/events", ingest.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz_endpoint(self.status), methods=["GET"]),
            Route("/metrics", metrics_endpoint(self.metrics), methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]


def build_app(config: GatewayConfig) -> Starlette:
    gateway = Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(routes=gateway.routes(), lifespan=lifespan)
    app.state.gateway = gateway
    return app
