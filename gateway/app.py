"""The one wiring module: builds every component from a :class:`GatewayConfig` and hands the
Starlette application its routes and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute

from gateway.adapters.cursor_key import cursor_key
from gateway.adapters.edge_guards import authenticator, subject_limits
from gateway.adapters.http_auth import AuthMiddleware, EdgeSettings
from gateway.adapters.http_changes import ChangesEndpoint, ChangesSettings
from gateway.adapters.http_context import RequestContextMiddleware
from gateway.adapters.http_ingest import IngestEndpoint
from gateway.adapters.http_ops import healthz, metrics_endpoint, openapi, readyz_endpoint
from gateway.adapters.http_snapshot import SnapshotEndpoint
from gateway.adapters.kafka_consumer import AiokafkaSource, ConsumerSettings
from gateway.adapters.kafka_history import AiokafkaHistory
from gateway.adapters.kafka_identity import fetch_history_identity
from gateway.adapters.kafka_producer import AiokafkaPublisher, KafkaSettings
from gateway.adapters.redis_dedup import RedisFleetDedup
from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.adapters.ws_stream import StreamEndpoint, StreamSettings
from gateway.config import GatewayConfig
from gateway.core.channels import ChannelMapper
from gateway.core.cursor import CursorCodec, derive_epoch
from gateway.core.ids import Epoch, InstanceId
from gateway.core.ingest import IngestLimits
from gateway.core.routing import TopicRouter
from gateway.core.schemas import SchemaRegistry
from gateway.errors import StoreError
from gateway.flows.downstream import DownstreamConsumer, DownstreamSettings
from gateway.flows.fanout import Fanout
from gateway.flows.forwarder import Forwarder, ForwarderSettings
from gateway.flows.ingest import IngestFlow
from gateway.flows.ports import FleetDedup
from gateway.flows.sessions import LinkState
from gateway.gc_policy import GcPolicy, GcSettings
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
        self.authenticate = authenticator(config)
        self.limits = subject_limits(config)
        self.metrics = GatewayMetrics()
        self.gc = GcPolicy(GcSettings(freeze_interval_s=config.gc_freeze_interval_s), self.metrics)
        self.stopping = asyncio.Event()
        """Set by :meth:`begin_shutdown`: readiness fails, long-polls answer at once."""
        self.fleet: FleetDedup | None = None
        if config.redis_url is not None:
            self.fleet = RedisFleetDedup(
                config.redis_url,
                config.instance_id,
                window_s=config.retention_s,
                pending_ttl_s=config.fleet_pending_ttl_s,
            )
        self.schemas = SchemaRegistry.load(config.schema_dir)
        router = TopicRouter(config.topic_routes)
        router.check_covers(self.schemas.event_types)
        crash_hook = self.crash_hook = _crash_hook(config.crash_point)
        self.store = SqliteEventStore(
            config.store_path,
            max_group_events=config.group_commit_max_events,
            max_bytes=config.max_store_bytes,
            min_free_bytes=config.store_min_free_bytes,
            on_commit=self.metrics.commit_group_events.observe,
            crash_hook=crash_hook,
        )
        self.ingest = IngestFlow(
            store=self.store,
            checker=self.schemas,
            ingest_limits=IngestLimits(
                max_batch_events=config.max_batch_events,
                max_event_bytes=config.max_event_bytes,
            ),
            metrics=self.metrics,
            limits=self.limits,
            fleet=self.fleet,
            crash_hook=crash_hook,
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
                min_interval_s=config.forward_min_interval_ms / 1000,
                retention_ms=config.retention_s * 1000,
                prune_interval_s=config.prune_interval_s,
                crash_hook=crash_hook,
            ),
            self.metrics,
        )
        self._build_downstream(config)

    def _build_downstream(self, config: GatewayConfig) -> None:
        self.channels = ChannelMapper.from_config(config.channel_rules)
        self.downstream_log = SqliteDownstreamLog(
            config.downstream_path, snapshot_families=config.snapshot_families
        )
        self.consumer = DownstreamConsumer(
            self.downstream_log,
            AiokafkaSource(
                ConsumerSettings(
                    bootstrap=config.kafka_bootstrap,
                    client_id=f"sync-gateway-downstream-{config.instance_id}",
                    request_timeout_ms=config.kafka_request_timeout_ms,
                )
            ),
            self.channels,
            identity=self._history_identity,
            settings=DownstreamSettings(
                topics=tuple(sorted(self.channels.topics)),
                bootstrap=config.kafka_bootstrap,
                start_from_latest=config.downstream_start_from_latest,
                retention_ms=config.downstream_retention_s * 1000,
                prune_interval_s=config.prune_interval_s,
            ),
        )
        self.history = AiokafkaHistory(config.kafka_bootstrap, config.kafka_request_timeout_ms)
        self.fanout = Fanout(
            self.downstream_log,
            None,  # until the log's or Kafka's epoch is known
            now=lambda: self.consumer.positions,
            max_queue=config.stream_queue_max,
            history=self.history,
            channels=self.channels,
            topics_for=self.channels.topics_for,
            crash_hook=self.crash_hook,
        )
        self.consumer.add_listener(self.fanout)
        self.codec = CursorCodec(cursor_key(config))
        self.metrics.downstream_lag.set_function(lambda: self.consumer.lag or 0)
        downstream = self.metrics.downstream
        downstream.set_function("records", lambda: self.consumer.consumed)
        downstream.set_function("batches", lambda: self.consumer.batches)
        downstream.set_function("work_seconds", lambda: self.consumer.work_s)
        downstream.set_function("log_held_seconds", lambda: self.downstream_log.checkpoints_held_s)
        self.metrics.downstream_link_up.set_function(
            lambda: 1 if self.consumer.state is LinkState.UP else 0
        )

    async def _history_identity(self) -> Epoch:
        topics = sorted(self.channels.topics)
        identity = await fetch_history_identity(
            self.config.kafka_bootstrap, topics, self.config.kafka_request_timeout_ms
        )
        return derive_epoch(identity.cluster_id, identity.topic_ids)

    async def start(self) -> None:
        """Open the stores and start the consumer and forwarder; on failure (e.g. a damaged
        store), whatever was started is stopped again so that the process can exit."""
        try:
            await self._start()
        except BaseException:
            for close in (
                self.consumer.stop,
                self.fanout.close,
                self.history.close,
                self.downstream_log.close,
                self.store.close,
            ):
                with contextlib.suppress(Exception):
                    await close()
            raise

    async def _start(self) -> None:
        await self.downstream_log.open()
        self.fanout.epoch = await self.downstream_log.epoch()
        self.consumer.start()
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
        await self.consumer.stop()
        await self.fanout.close()
        await self.history.close()
        await self.downstream_log.close()
        await self.limits.close()
        if self.fleet is not None:
            await self.fleet.close()

    def begin_shutdown(self) -> None:
        """A graceful shutdown begins (SIGTERM): load balancers see the instance not ready,
        waiting long-polls answer now (the server closes websockets with 1012), then the
        lifespan's :meth:`stop` flushes the backlog to Kafka within ``shutdown_drain_s``."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.stopping.set()
            return
        # called from a signal handler, which may interrupt the loop anywhere: hand it over
        loop.call_soon_threadsafe(self._stop_serving)

    def _stop_serving(self) -> None:
        if not self.stopping.is_set():
            log.info("graceful shutdown begins: not ready, long-polls answered, websockets 1012")
        self.stopping.set()

    async def status(self) -> tuple[bool, dict[str, Any]]:
        """Readiness (store usable, not shutting down) and what an operator wants to see."""
        kafka = self.forwarder.status()
        try:
            backlog = await self.store.backlog()
            dlq = len(await self.store.quarantined())
        except StoreError as exc:
            return False, {"store": {"state": "unavailable", "error": str(exc)}, "kafka": kafka}
        age = None
        if backlog.oldest_received_ms is not None:
            age = round(max(0.0, time.time() - backlog.oldest_received_ms / 1000), 3)
        return not self.stopping.is_set(), {
            "instance": self.config.instance_id,
            "state": "stopping" if self.stopping.is_set() else "serving",
            "store": {"state": "open", "path": str(self.config.store_path)},
            "backlog": {"events": backlog.events, "oldest_age_s": age},
            "dlq": {"events": dlq},
            "kafka": kafka,
            "downstream": {
                **self.consumer.status(),
                "subscriptions": self.fanout.subscriptions,
            },
        }

    def routes(self) -> list[BaseRoute]:
        ingest = IngestEndpoint(
            self.ingest,
            max_body_bytes=self.config.max_body_bytes,
            retry_after_s=self.config.store_retry_after_s,
            body_timeout_s=self.config.body_timeout_s,
        )
        stream = StreamEndpoint(
            self.fanout,
            self.codec,
            self.ingest,
            self.metrics,
            StreamSettings(
                max_subscriptions=self.config.stream_max_subscriptions,
                idle_timeout_s=self.config.stream_idle_timeout_s,
                send_stall_timeout_s=self.config.stream_send_stall_timeout_s,
                token_grace_s=self.config.jwt_leeway_s,
            ),
            self.limits,
        )
        changes = ChangesEndpoint(
            self.fanout,
            self.codec,
            self.metrics,
            ChangesSettings(max_wait_s=self.config.changes_max_wait_s),
            self.stopping,
        )
        snapshot = SnapshotEndpoint(
            self.downstream_log,
            self.codec,
            lambda: self.fanout.epoch,
            retry_after_s=self.config.store_retry_after_s,
        )
        return [
            Route("/v1/events", ingest.handle, methods=["POST"]),
            WebSocketRoute("/v1/stream", stream.handle),
            Route("/v1/changes", changes.handle, methods=["GET"]),
            Route("/v1/snapshot", snapshot.handle, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz_endpoint(self.status), methods=["GET"]),
            Route("/metrics", metrics_endpoint(self.metrics), methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]

    def middleware(self) -> list[Middleware]:
        public = {"/healthz", "/readyz"}
        if self.config.public_metrics:
            public |= {"/metrics", "/openapi.json"}
        refusals = self.metrics.auth_refusals
        return [
            Middleware(RequestContextMiddleware),
            Middleware(
                AuthMiddleware,
                authenticate=self.authenticate,
                limits=self.limits,
                settings=EdgeSettings(
                    public_paths=frozenset(public),
                    allowed_origins=frozenset(self.config.allowed_origins),
                    max_connections_per_subject=self.config.max_connections_per_subject,
                ),
                on_refused=lambda reason: refusals.labels(reason).inc(),
            ),
        ]


def build_app(config: GatewayConfig) -> Starlette:
    gateway = Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        gateway.gc.start()
        try:
            yield
        finally:
            gateway.gc.stop()
            await gateway.stop()

    app = Starlette(routes=gateway.routes(), lifespan=lifespan, middleware=gateway.middleware())
    app.state.gateway = gateway
    return app
