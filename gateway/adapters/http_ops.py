"""Operational HTTP endpoints: liveness, readiness, Prometheus metrics, OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.adapters.openapi import openapi_document
from gateway.metrics import GatewayMetrics

ReadinessProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
"""Returns (ready, details): ready when the store is usable; details name every component."""


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz_endpoint(probe: ReadinessProbe) -> Callable[[Request], Awaitable[Response]]:
    async def readyz(request: Request) -> Response:
        ready, details = await probe()
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", **details}, 200 if ready else 503
        )

    return readyz


def metrics_endpoint(metrics: GatewayMetrics) -> Callable[[Request], Awaitable[Response]]:
    async def metrics_view(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics_view


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())
