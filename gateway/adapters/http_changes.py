"""Long-poll adapter of the downstream path: ``GET /v1/changes``, for clients that cannot hold
a websocket. Same cursors, same fan-out, same guarantees as ``WS /v1/stream``.

``GET /v1/changes?channel=C&cursor=T&wait=S&limit=N`` subscribes to ``C`` after cursor ``T``
(none: from now), and answers as soon as it has updates (up to ``N``), when the subscription's
history is gone (``reset``), or after ``S`` seconds with none. The answer::

    {"channel": C, "cursor": TOKEN, "live": BOOL, "reset": null | {"reason": R},
     "events": [UPDATE, ...]}

``cursor`` is where to poll from next (after the last update, or where "now" was); ``live``
says the answer reached the live end (no backlog left when it was built). JSON, or msgpack when
the Accept header asks for ``application/msgpack``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from gateway.adapters.http_auth import principal_of
from gateway.adapters.http_errors import error_response
from gateway.adapters.stream_items import check_channel, decode_cursor, reset_label, update_view
from gateway.core.codec import MediaType, encode, preferred_media_type
from gateway.core.cursor import CursorCodec
from gateway.core.stream_protocol import Encoding, ErrorCode, FrameWriter, UpdateView
from gateway.errors import AuthError, FrameError
from gateway.flows.fanout import Fanout
from gateway.flows.subscription import CaughtUp, Reset, Subscription, SubscriptionClosed, Update
from gateway.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class ChangesSettings:
    max_wait_s: float = 30.0
    """Longest ``wait`` a client may ask for (longer values are capped)."""
    default_wait_s: float = 20.0
    max_events: int = 1000
    """Largest ``limit``; also the default."""
    replay_grace_s: float = 2.0
    """Longest wait for a replay's first updates, also when ``wait`` is shorter."""


@dataclass(slots=True)
class _Answer:
    cursor: str | None
    updates: list[UpdateView]
    live: bool = False
    reset: str | None = None


class ChangesEndpoint:
    """ASGI endpoint for ``GET /v1/changes``."""

    def __init__(
        self,
        fanout: Fanout,
        codec: CursorCodec,
        metrics: GatewayMetrics,
        settings: ChangesSettings | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self._fanout = fanout
        self._codec = codec
        self._metrics = metrics
        self._s = settings or ChangesSettings()
        self._stopping = stopping or asyncio.Event()
        """Set when the gateway begins a graceful shutdown: waiting polls answer at once."""
        self._writers = {
            MediaType.JSON: FrameWriter(Encoding.JSON),
            MediaType.MSGPACK: FrameWriter(Encoding.MSGPACK),
        }

    async def handle(self, request: Request) -> Response:
        media = preferred_media_type(request.headers.get("accept"), MediaType.JSON)
        try:
            principal = principal_of(request.scope)
            channel, token, wait_s, limit = self._parameters(request)
            check_channel(channel)
            principal.require_subscribe(channel)
            cursor = decode_cursor(self._codec, token)
        except AuthError as exc:
            return error_response(exc, media, retry_after_s=1)
        except FrameError as exc:
            self._metrics.stream_frame_errors.labels(exc.error_code).inc()
            body = {"error": {"code": exc.error_code, "message": str(exc), "retriable": False}}
            return Response(encode(body, media), 400, media_type=media.value)
        sub = self._fanout.subscribe(channel, cursor)
        if cursor is not None:
            self._metrics.stream_replays.inc()
        self._metrics.stream_subscriptions.inc()
        try:
            answer = await self._collect(sub, _Answer(token, []), wait_s, limit)
        finally:
            self._fanout.unsubscribe(sub)
            self._metrics.stream_subscriptions.dec()
        self._metrics.stream_updates.inc(len(answer.updates))
        if answer.reset is not None:
            self._metrics.stream_resets.labels(reset_label(answer.reset)).inc()
        frame = self._writers[media].changes(
            channel, answer.updates, answer.cursor, live=answer.live, reset=answer.reset
        )
        data = frame.encode() if isinstance(frame, str) else frame
        return Response(data, 200, media_type=media.value, headers={"Cache-Control": "no-store"})

    def _parameters(self, request: Request) -> tuple[str, str | None, float, int]:
        query = request.query_params
        channel = query.get("channel")
        if channel is None:
            raise FrameError(ErrorCode.INVALID_CHANNEL, "the 'channel' parameter is required")
        try:
            wait_s = float(query.get("wait", self._s.default_wait_s))
            limit = int(query.get("limit", self._s.max_events))
        except ValueError:
            raise FrameError(
                ErrorCode.INVALID_FIELD, "'wait' must be a number and 'limit' an integer"
            ) from None
        if not 0 <= wait_s < float("inf") or not 1 <= limit <= self._s.max_events:
            raise FrameError(
                ErrorCode.INVALID_FIELD,
                f"need 0 <= wait and 1 <= limit <= {self._s.max_events}",
            )
        return channel, query.get("cursor") or None, min(wait_s, self._s.max_wait_s), limit

    async def _next_item(self, sub: Subscription, timeout_s: float) -> Update | CaughtUp | Reset:
        """The subscription's next item; TimeoutError after ``timeout_s`` or at shutdown."""
        item = asyncio.ensure_future(sub.next_item())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({item, stopping}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            stopping.cancel()
            if not item.done():
                item.cancel()
        if item.done() and not item.cancelled():
            return item.result()
        raise TimeoutError

    async def _collect(
        self, sub: Subscription, answer: _Answer, wait_s: float, limit: int
    ) -> _Answer:
        loop = asyncio.get_running_loop()
        start = loop.time()
        # A replay runs in a task: even "wait=0" gives it a moment to produce its first page.
        replay_deadline = start + max(wait_s, self._s.replay_grace_s)
        while len(answer.updates) < limit and answer.reset is None:
            items = sub.take_ready(limit - len(answer.updates))
            if not items:
                deadline = start + wait_s if answer.live else replay_deadline
                remaining = deadline - loop.time()
                if answer.updates or remaining <= 0 or self._stopping.is_set():
                    break
                try:
                    items = [await self._next_item(sub, remaining)]
                except (TimeoutError, SubscriptionClosed):
                    break
            for item in items:
                if isinstance(item, Update):
                    answer.updates.append(update_view(item, self._codec))
                    answer.cursor = answer.updates[-1].cursor
                elif isinstance(item, CaughtUp):
                    answer.live = True
                    answer.cursor = self._codec.encode(item.cursor)
                elif isinstance(item, Reset):
                    answer.reset = item.reason
        answer.live = answer.live and sub.queued == 0 and answer.reset is None
        return answer
