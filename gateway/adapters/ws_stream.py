"""Websocket adapter of the downstream path: ``WS /v1/stream``.

It only moves frames: :mod:`gateway.core.stream_protocol` parses what the client sends and
builds what goes back, :class:`~gateway.flows.fanout.Fanout` decides what each subscription
receives. Per connection there is one reader (client frames, in order) and one *pump* task per
subscription, which waits for the subscription's next item, takes whatever else is already
queued (up to ``frame_max_updates``) and writes it as one ``events`` frame. Live updates
usually do not wait for the pump: when the socket takes them, the fan-out's cycle writes them
at once (:attr:`Subscription.writer`, :data:`~gateway.adapters.ws_protocol.SEND_NOW`).

Backpressure: the transport's send awaits while the socket buffer is full, so a client that
reads slowly stalls its pumps; its subscriptions' bounded queues fill and fall behind to the
log (the fan-out replays them from there as the client drains). A client whose socket does not
drain at all for ``send_stall_timeout_s`` is closed with :attr:`CloseCode.SLOW_CONSUMER`; it
resumes from its last cursor. Memory per connection is bounded by the queues and the transport
buffer; other clients never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.adapters.http_auth import principal_of
from gateway.adapters.http_context import traceparent_of
from gateway.adapters.stream_items import (
    check_channel,
    decode_cursor,
    rate_limited_frame,
    reset_label,
)
from gateway.adapters.ws_frames import TEXT, EventFrames, WireFrame, wire_frame
from gateway.adapters.ws_protocol import send_now_of
from gateway.core.authz import Principal
from gateway.core.cursor import CursorCodec
from gateway.core.stream_protocol import (
    CloseCode,
    Encoding,
    ErrorCode,
    FrameWriter,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    choose_subprotocol,
    parse_frame,
)
from gateway.errors import AuthError, FrameError, GatewayError, RateLimited, RequestError
from gateway.flows.fanout import Fanout
from gateway.flows.ingest import IngestFlow
from gateway.flows.limits import UNLIMITED, SubjectLimits
from gateway.flows.subscription import CaughtUp, Reset, Subscription, SubscriptionClosed, Update
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    max_subscriptions: int = 64
    """Subscriptions one connection may hold."""
    idle_timeout_s: float = 60.0
    """A connection with no subscription and no frame for this long is closed."""
    frame_max_updates: int = 64
    """Most updates in one ``events`` frame."""
    error_budget: int = 20
    """Refused frames a connection may send before it is closed (policy violation)."""
    send_stall_timeout_s: float = 15.0
    """A frame that cannot be handed to the socket for this long closes the connection as a
    slow consumer (the socket buffer is full and the client does not drain it)."""
    close_timeout_s: float = 30.0
    """How long a close frame may wait for a client that does not read (then the connection
    is dropped without one)."""
    token_grace_s: float = 0.0
    """A connection is closed (4003) this long after its token's ``exp``."""


class _Gone(Exception):
    """The client is gone: sending failed."""


class StreamEndpoint:
    """The ``WS /v1/stream`` endpoint: one instance serves every connection."""

    def __init__(
        self,
        fanout: Fanout,
        codec: CursorCodec,
        ingest: IngestFlow,
        metrics: GatewayMetrics,
        settings: StreamSettings | None = None,
        limits: SubjectLimits = UNLIMITED,
    ) -> None:
        self.fanout = fanout
        self.codec = codec
        self.ingest = ingest
        self.metrics = metrics
        self.settings = settings or StreamSettings()
        self.limits = limits
        self.writers = {encoding: FrameWriter(encoding) for encoding in Encoding}
        self.event_frames = {e: EventFrames(self.writers[e], codec) for e in Encoding}
        self._unreported = 0

    def count_updates(self, count: int) -> None:
        """Updates written; added to the metric once per turn of the event loop (an ``inc``
        per frame was a twentieth of a frame's cost)."""
        if not self._unreported:
            asyncio.get_running_loop().call_soon(self._report_updates)
        self._unreported += count

    def _report_updates(self) -> None:
        self.metrics.stream_updates.inc(self._unreported)
        self._unreported = 0

    async def handle(self, websocket: WebSocket) -> None:
        try:
            principal = principal_of(websocket.scope)
        except AuthError:
            await websocket.close(int(CloseCode.POLICY_VIOLATION))  # before accept: HTTP 403
            return
        name, encoding = choose_subprotocol(websocket.scope.get("subprotocols", []))
        await websocket.accept(subprotocol=name)
        self.metrics.stream_connections.inc()
        try:
            await _Connection(self, websocket, self.writers[encoding], principal).run()
        finally:
            self.metrics.stream_connections.dec()


class _Connection:
    __slots__ = (
        "_close",
        "_e",
        "_errors",
        "_event_frames",
        "_finished",
        "_frame_max",
        "_loop",
        "_principal",
        "_progress_at",
        "_pumps",
        "_send_now",
        "_sending",
        "_stall_timer",
        "_subs",
        "_writer",
        "_ws",
    )

    def __init__(
        self,
        endpoint: StreamEndpoint,
        websocket: WebSocket,
        writer: FrameWriter,
        principal: Principal,
    ):
        self._e = endpoint
        self._ws = websocket
        self._writer = writer
        self._event_frames = endpoint.event_frames[writer.encoding]
        self._principal = principal
        self._subs: dict[str, Subscription] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._errors = 0
        self._close: tuple[CloseCode, str] | None = None
        self._loop = asyncio.get_running_loop()
        self._finished: asyncio.Future[None] = self._loop.create_future()
        """Done when the connection is to end (awaited with the reader: no task of its own)."""
        self._sending = 0
        """Sends in flight (each pump and the reader may have one)."""
        self._progress_at = 0.0
        """When a send last completed, or one started with none in flight (loop time)."""
        self._stall_timer: asyncio.TimerHandle | None = None
        self._send_now = send_now_of(websocket.scope)
        self._frame_max = endpoint.settings.frame_max_updates

    async def run(self) -> None:
        reader = asyncio.create_task(self._read_loop())
        expiry = self._expiry_timer()
        try:
            await asyncio.wait({reader, self._finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            if expiry is not None:
                expiry.cancel()
            if self._stall_timer is not None:
                self._stall_timer.cancel()
            for sub in list(self._subs.values()):
                self._e.fanout.unsubscribe(sub)
            pumps = list(self._pumps.values())
            for pump in pumps:
                pump.cancel()
            for task in (reader, *pumps):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # Its subscriptions hold it as their writer: no cycle left for the collector.
            self._subs.clear()
            self._pumps.clear()
        if self._close is not None:
            code, reason = self._close
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._e.settings.close_timeout_s):
                    await self._ws.close(int(code), reason)

    def _expiry_timer(self) -> asyncio.TimerHandle | None:
        """A timer that closes the connection when its token expires (a timer, not a task:
        a connection holds as few objects as it can)."""
        expires_at = self._principal.expires_at
        if expires_at is None or not math.isfinite(expires_at):
            return None
        return self._loop.call_later(
            max(0.0, expires_at + self._e.settings.token_grace_s - time.time()),
            self._finish,
            CloseCode.TOKEN_EXPIRED,
            "token expired: reconnect with a fresh token",
        )

    def _finish(self, code: CloseCode, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
        self._end()

    def _end(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    async def _send(self, frame: str | bytes | WireFrame) -> None:
        wire = frame if isinstance(frame, WireFrame) else wire_frame(frame)
        # The socket takes it now (the usual case): written at once, without the ASGI chain.
        # Not while another send waits, so that a waiting frame is not overtaken.
        if not self._sending and self._send_now is not None and self._send_now(wire):
            return
        message = (
            {"type": "websocket.send", "text": wire.payload.decode()}
            if wire.opcode == TEXT
            else {"type": "websocket.send", "bytes": wire.payload}
        )
        # Stall detection without a timeout per send (``asyncio.timeout`` costs a timer per
        # frame, more than the rest of the send): one timer per connection, re-armed lazily.
        if not self._sending:
            self._progress_at = self._loop.time()
            if self._stall_timer is None:
                self._stall_timer = self._loop.call_at(
                    self._progress_at + self._e.settings.send_stall_timeout_s, self._check_stall
                )
        self._sending += 1
        try:
            await self._ws.send(message)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self._end()
            raise _Gone from exc
        finally:
            self._sending -= 1
            if self._sending:
                self._progress_at = self._loop.time()

    def _check_stall(self) -> None:
        """The stall timer: close the connection as a slow consumer if a send has waited for the
        socket for ``send_stall_timeout_s`` with none completing meanwhile (they wait for the
        same buffer). Its pumps, blocked in their sends, are cancelled by :meth:`run`."""
        self._stall_timer = None
        if not self._sending or self._finished.done():
            return  # re-armed by the next send
        stall = self._e.settings.send_stall_timeout_s
        due = self._progress_at + stall
        if self._loop.time() < due:
            self._stall_timer = self._loop.call_at(due, self._check_stall)
            return
        self._e.metrics.stream_slow_closes.inc()
        self._finish(CloseCode.SLOW_CONSUMER, f"slow consumer: not drained in {stall:g}s")

    async def _read_loop(self) -> None:
        settings = self._e.settings
        while True:
            try:
                async with asyncio.timeout(settings.idle_timeout_s):
                    message = await self._ws.receive()
            except TimeoutError:
                if self._subs:
                    continue
                self._finish(CloseCode.IDLE_TIMEOUT, "idle timeout")
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is None:
                continue
            try:
                await self._on_frame(data)
            except _Gone:
                return

    async def _on_frame(self, data: str | bytes) -> None:
        try:
            command = parse_frame(data, self._writer.encoding)
            try:
                await self._e.limits.check_request(self._principal)
            except RateLimited as exc:
                sub, req = getattr(command, "sub", None), getattr(command, "req", None)
                raise rate_limited_frame(exc, sub=sub, req=req) from None
            if isinstance(command, Subscribe):
                await self._subscribe(command)
            elif isinstance(command, Unsubscribe):
                sub = self._subs.get(command.sub)
                if sub is None:
                    raise FrameError(
                        ErrorCode.UNKNOWN_SUBSCRIPTION, "no such subscription", sub=command.sub
                    )
                self._e.fanout.unsubscribe(sub)  # its pump says "unsubscribed", in order
            elif isinstance(command, Publish):
                await self._publish(command)
            elif isinstance(command, Ping):
                await self._send(self._writer.pong())
        except FrameError as exc:
            self._e.metrics.stream_frame_errors.labels(exc.error_code).inc()
            await self._send(self._writer.error(exc))
            if exc.error_code != ErrorCode.UNAVAILABLE:  # the gateway's fault, not the client's
                self._errors += 1
            if self._errors > self._e.settings.error_budget:
                self._finish(CloseCode.POLICY_VIOLATION, "too many refused frames")

    async def _subscribe(self, command: Subscribe) -> None:
        if command.sub in self._subs:
            raise FrameError(
                ErrorCode.DUPLICATE_SUBSCRIPTION, "subscription id in use", sub=command.sub
            )
        if len(self._subs) >= self._e.settings.max_subscriptions:
            raise FrameError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self._e.settings.max_subscriptions} subscriptions per connection",
                sub=command.sub,
            )
        check_channel(command.channel, sub=command.sub)
        if not self._principal.may_subscribe(command.channel):
            raise FrameError(
                ErrorCode.FORBIDDEN, "the token does not allow this channel", sub=command.sub
            )
        cursor = decode_cursor(self._e.codec, command.cursor, sub=command.sub)
        sub = self._e.fanout.subscribe(command.channel, cursor)
        if cursor is not None:
            self._e.metrics.stream_replays.inc()
        self._subs[command.sub] = sub
        self._e.metrics.stream_subscriptions.inc()
        self._pumps[command.sub] = asyncio.create_task(self._pump(command.sub, sub))
        if self._send_now is not None:
            sub.tag = command.sub
            sub.writer = self

    def write_queued(self, sub: Subscription) -> None:
        """:class:`~gateway.flows.subscription.Writer`: queued updates as ``events`` frames while
        the socket takes them and no send waits (never overtaken). Never raises."""
        limit = self._frame_max
        while updates := sub.take_updates(limit):
            if not self._write(sub, updates, len(updates)):
                sub.unread(updates)
                return
            if len(updates) < limit:
                return  # the queue is empty or a marker leads it

    def _write(self, sub: Subscription, update: Update | Sequence[Update], n: int = 1) -> bool:
        """The ``events`` frame of one update, or of a run of ``n`` of them, if the socket
        takes it now and no send waits (never overtaken). Never raises."""
        send_now = self._send_now
        if send_now is None or self._sending or self._finished.done():
            return False
        try:
            sent = send_now(self._event_frames.of(sub.tag, update))
        except Exception:
            log.exception("writing to a stream of %s failed; its pump goes on", sub.channel)
            return False
        if sent:
            self._e.count_updates(n)
        return sent

    write_one = _write  # Writer: one update, never queued (no extra call per frame)

    async def _publish(self, command: Publish) -> None:
        try:
            results = await self._e.ingest.ingest(
                {"events": command.events}, self._principal, traceparent_of(self._ws.scope)
            )
        except RateLimited as exc:
            raise rate_limited_frame(exc, req=command.req) from None
        except RequestError as exc:
            raise FrameError(ErrorCode.PUBLISH_REFUSED, str(exc), req=command.req) from None
        except GatewayError as exc:
            raise FrameError(ErrorCode.UNAVAILABLE, str(exc), req=command.req) from None
        await self._send(self._writer.ack(command.req, [r.to_dict() for r in results]))

    async def _pump(self, sub_id: str, sub: Subscription) -> None:
        reset_sent = False
        try:
            await self._send(self._writer.subscribed(sub_id, sub.channel))
            while True:
                first = await sub.next_item()
                items = [first, *sub.take_ready(self._e.settings.frame_max_updates - 1)]
                reset_sent = await self._write_items(sub_id, sub, items) or reset_sent
        except SubscriptionClosed as closed:
            if not reset_sent:
                with contextlib.suppress(_Gone):
                    await self._send(self._writer.unsubscribed(sub_id, closed.reason))
        except _Gone:
            pass
        except Exception:
            log.exception("stream of %s failed; the connection is closed", sub.channel)
            self._finish(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._e.fanout.unsubscribe(sub)  # idempotent; never leak a fan-out subscription
            if self._subs.get(sub_id) is sub:
                del self._subs[sub_id]
                self._e.metrics.stream_subscriptions.dec()
            if self._pumps.get(sub_id) is asyncio.current_task():
                del self._pumps[sub_id]

    async def _write_items(
        self, sub_id: str, sub: Subscription, items: Sequence[Update | CaughtUp | Reset]
    ) -> bool:
        """Write queued items as frames (runs of updates as one ``events`` frame); return
        whether a reset was among them."""
        writer, codec, frame_of = self._writer, self._e.codec, self._event_frames.of
        batch: list[Update] = []
        reset = False
        for item in items:
            if isinstance(item, Update):
                batch.append(item)
                continue
            if batch:
                await self._send(frame_of(sub_id, batch))
                self._e.count_updates(len(batch))
                batch = []
            if isinstance(item, CaughtUp):
                await self._send(writer.live(sub_id, codec.encode(item.cursor)))
            else:
                reset = True
                self._e.metrics.stream_resets.labels(reset_label(item.reason)).inc()
                await self._send(writer.reset(sub_id, sub.channel, item.reason))
        if batch:
            await self._send(frame_of(sub_id, batch))
            self._e.count_updates(len(batch))
        return reset
