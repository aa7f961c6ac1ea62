"""Request context at the edge: the correlation id of every request and websocket connection
(logged with each of its lines and echoed in ``X-Correlation-Id``) and its W3C trace context
(kept with the events it publishes, forwarded to Kafka as the ``traceparent`` header)."""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.trace import correlation_id, parse_traceparent
from gateway.logs import CORRELATION_ID

TRACEPARENT_KEY: Final = "sync_gateway.traceparent"
CORRELATION_HEADER: Final = b"x-correlation-id"


def traceparent_of(scope: Scope) -> str | None:
    """The request's valid ``traceparent``, if it sent one."""
    value = scope.get("state", {}).get(TRACEPARENT_KEY)
    return value if isinstance(value, str) else None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lowercase), if any."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        traceparent = parse_traceparent(header(scope, b"traceparent"))
        correlation = correlation_id(header(scope, CORRELATION_HEADER), traceparent)
        scope.setdefault("state", {})[TRACEPARENT_KEY] = traceparent
        encoded = correlation.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                message["headers"] = [*message.get("headers", ()), (CORRELATION_HEADER, encoded)]
            await send(message)

        token = CORRELATION_ID.set(correlation)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            CORRELATION_ID.reset(token)
