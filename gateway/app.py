"""The one wiring module: builds every component from a :class:`GatewayConfig` and hands the
Starlette application its routes and lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from gateway.adapters.http_ingest import IngestEndpoint
from gateway.adapters.http_ops import healthz, metrics_endpoint, openapi, readyz_endpoint
from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.config import GatewayConfig
from gateway.core.ingest import IngestLimits
from gateway.core.schemas import SchemaRegistry
from gateway.errors import StoreError
from gateway.flows.ingest import IngestFlow
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class Gateway:
    """The running parts of one gateway instance."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.schemas = SchemaRegistry.load(config.schema_dir)
        self.store = SqliteEventStore(
            config.store_path, max_group_events=config.group_commit_max_events
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

    async def start(self) -> None:
        await self.store.open()
        log.info(
            "gateway %s ready: store %s, %d events stored",
            self.config.instance_id,
            self.config.store_path,
            await self.store.count(),
        )

    async def stop(self) -> None:
        await self.store.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            stored = await self.store.count()
        except StoreError as exc:
            return False, {"store": {"state": "unavailable", "error": str(exc)}}
        return True, {"store": {"state": "open", "events": stored}}

    def routes(self) -> list[Route]:
        ingest = IngestEndpoint(
            self.ingest,
            max_body_bytes=self.config.max_body_bytes,
            retry_after_s=self.config.store_retry_after_s,
        )
        return [
            Route("/v1/events", ingest.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz_endpoint(self.readiness), methods=["GET"]),
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
