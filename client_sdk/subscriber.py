"""The asyncio runtime of the device SDK's stream client: resumable, exactly-once subscriptions.

A :class:`Subscriber` keeps one websocket connection to ``WS /v1/stream`` (the ``websockets``
asyncio client), subscribes every registered channel with its persisted cursor, applies the
updates in order and persists cursors in a :class:`~client_sdk.cursor_store.CursorStore`,
and reconnects by itself after any drop::

    store = CursorStore("app.db")

    def on_update(update: Update, db: sqlite3.Connection) -> None:   # in the store transaction
        db.execute("INSERT OR REPLACE INTO stock VALUES (?, ?)", (update.key, update.data))

    async def on_reset(channel: str) -> str | None:                  # re-snapshot
        page = await http.get("/v1/snapshot", params={"channel": channel})
        ...                                                          # replace local state
        return page.json()["cursor"]

    subscriber = Subscriber("https://gateway.example", store, on_state=print)
    subscriber.subscribe("inventory:S1", on_update, on_reset=on_reset)
    task = asyncio.create_task(subscriber.run())
    ...
    await subscriber.close()                                         # run() returns

Delivery guarantees:

- **Synchronous handlers** (``handler(update, db)``) run in a worker thread inside the store's
  transaction, which also stores the update's cursor (a whole ``events`` frame is one
  transaction, storing the last update's cursor). When the handler writes its state through
  ``db`` only, every update is applied **exactly once**, across crashes, cancellations and
  restarts of the app or the gateway. A handler that raises rolls the frame back; ``run()``
  then raises that exception, and the update comes again on the next run.
- **Async handlers** (``async def handler(update)``) are awaited one update at a time, and the
  cursor is stored after each frame's updates: **at least once**. After a crash, updates since
  the stored cursor are delivered again; recognise them by ``(topic, partition, offset)`` or
  ``update.data["event_id"]``. The same holds for sync handlers with effects outside ``db``.

Resets (``docs/protocol.md`` §9): on a ``reset`` frame, and on an ``invalid_cursor`` error
(handled as a reset, §8.2 rule 6), the channel's cursor is dropped and the reset is recorded
durably in the store. Then ``on_reset(channel)`` is awaited: the app rebuilds the channel's
state (e.g. from ``GET /v1/snapshot``) and returns the cursor to resume from, or ``None`` for
"from now". Without ``on_reset`` the channel restarts from now, accepting the gap knowingly.
A crash during the rebuild calls ``on_reset`` again on the next run.

Reconnecting follows :func:`~client_sdk.protocol.reconnect_policy` with capped exponential
backoff and full jitter (base 0.5 s, cap 30 s by default); the backoff starts over once every
channel is live. Close codes that mean a client bug (1007, 1008, 1009) make ``run()`` raise
:class:`StreamClosedByPolicy` instead of looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.typing import Subprotocol

from client_sdk.auth import TokenSource, bearer_headers
from client_sdk.channels import Channel, Handler, ResetHandler
from client_sdk.cursor_store import CursorStore
from client_sdk.errors import StreamClosedByPolicy
from client_sdk.frames import Encoding
from client_sdk.protocol import (
    DontReconnect,
    ErrorEvent,
    Event,
    Live,
    ProtocolViolation,
    ResetEvent,
    StreamSession,
    Unsubscribed,
    Update,
    handshake_policy,
    reconnect_policy,
)
from client_sdk.states import StreamState, StreamStateChange
from gateway.core.backoff import Backoff

__all__ = ["StreamClosedByPolicy", "Subscriber"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest incoming message accepted (the protocol asks for at least 16 MiB)."""


class Subscriber:
    """Follows channels of a sync gateway over one self-healing websocket connection.

    ``url`` is the gateway's base URL (``http(s)://host:port``, the stream is at
    ``/v1/stream``) or a ``ws(s)://`` URL of the stream itself. ``encoding`` picks the
    subprotocol (``"msgpack"`` or ``"json"``). ``backoff`` paces reconnects (full jitter).
    ``on_state`` is called (synchronously, in the event loop) with every :class:`StreamStateChange`.
    """

    def __init__(
        self,
        url: str,
        store: CursorStore,
        *,
        encoding: Encoding = "msgpack",
        backoff: Backoff | None = None,
        on_state: Callable[[StreamStateChange], None] | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        token: TokenSource | None = None,
    ) -> None:
        self.url = _stream_url(url)
        self._token = token
        self._refused: tuple[int, float | None] | None = None
        """The HTTP status (and Retry-After) of the last refused handshake."""
        self.store = store
        self.encoding: Encoding = encoding
        self.backoff = backoff if backoff is not None else Backoff(base=0.5, cap=30.0)
        self._on_state = on_state
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_size = max_message_bytes
        self._channels: dict[str, Channel] = {}
        self._by_sub: dict[str, Channel] = {}
        self._next_sub = 0
        self._ws: ClientConnection | None = None
        self._session: StreamSession | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.state = StreamState.CLOSED

    # -- public API -------------------------------------------------------------------------

    def subscribe(
        self, channel: str, handler: Handler, *, on_reset: ResetHandler | None = None
    ) -> None:
        """Follow ``channel``: ``handler`` gets each update, in order.

        ``handler`` is either ``handler(update, db)`` (sync, exactly once, runs in the store
        transaction) or ``async handler(update)`` (at least once). ``on_reset(channel)``
        rebuilds the channel after a reset and returns the cursor to resume from. May be
        called before or while :meth:`run` runs.
        """
        if channel in self._channels:
            raise ValueError(f"already subscribed to {channel!r}")
        entry = Channel(channel, handler, inspect.iscoroutinefunction(handler), on_reset)
        self._channels[channel] = entry
        self._wake.set()
        ws, session = self._ws, self._session
        if ws is not None and session is not None:
            task = asyncio.get_running_loop().create_task(self._subscribe_now(ws, session, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Connect, follow the channels and reconnect after drops, until :meth:`close`.

        Raises :class:`StreamClosedByPolicy` when the gateway's close code forbids looping,
        and whatever a handler or ``on_reset`` raises (that frame is not applied; the reset
        is still pending and ``on_reset`` runs again on the next run). Cancellable: an update
        being applied when cancelled is committed or not, never half.
        """
        if self._runner is not None:
            raise RuntimeError("run() is already running")
        self._runner = asyncio.current_task()
        self._stopped.clear()
        try:
            await self._run()
        finally:
            self._set_state(StreamStateChange(StreamState.CLOSED))
            self._runner = None
            self._stopped.set()

    async def close(self) -> None:
        """Stop :meth:`run` (it returns) and close the connection; bounded in time."""
        self._closing = True
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        ws = self._ws
        if ws is not None:
            await ws.close()
        runner = self._runner
        if runner is None or runner is asyncio.current_task():
            return
        try:
            await asyncio.wait_for(self._stopped.wait(), self._close_timeout)
        except TimeoutError:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._stopped.wait(), self._close_timeout)

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called (a subscriber runs once)."""
        return self._closing

    # -- connection loop --------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            if not self._channels:
                self._wake.clear()
                await self._wake.wait()
                continue
            code = await self._connect_once()
            if self.closing:
                return
            refused, self._refused = self._refused, None
            policy = reconnect_policy(code) if refused is None else handshake_policy(*refused)
            if isinstance(policy, DontReconnect):
                self._set_state(StreamStateChange(StreamState.CLOSED, close_code=code))
                raise StreamClosedByPolicy(policy.code, policy.reason, policy.retry_after_s)
            if isinstance(policy, float):  # 429: as long as the gateway asked, at least
                delay = max(policy, self.backoff.next_delay())
            else:
                if policy.reset_backoff:
                    self.backoff.reset()
                delay = self.backoff.next_delay()
            self._set_state(StreamStateChange(StreamState.DISCONNECTED, code, retry_in=delay))
            await self._sleep(delay)

    async def _connect_once(self) -> int | None:
        """One connection, from handshake to close; its close code (``None``: no close
        frame, failed handshake, or a protocol violation by the server)."""
        self._set_state(StreamStateChange(StreamState.CONNECTING))
        session = StreamSession(self.encoding)
        try:
            async with connect(
                self.url,
                additional_headers=await bearer_headers(self._token),
                subprotocols=[Subprotocol(session.subprotocol)],
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                max_size=self._max_size,
                proxy=None,
            ) as ws:
                if ws.subprotocol != session.subprotocol:
                    raise ProtocolViolation(f"the gateway chose subprotocol {ws.subprotocol!r}")
                self._ws, self._session = ws, session
                self._set_state(StreamStateChange(StreamState.CONNECTED))
                try:
                    await self._serve(ws, session)
                except ProtocolViolation:
                    await ws.close(1002, "protocol violation")
                    raise
            return ws.close_code
        except InvalidURI:
            raise
        except InvalidStatus as exc:
            retry_after = exc.response.headers.get("retry-after")
            delay = float(retry_after) if retry_after and retry_after.isdigit() else None
            self._refused = (exc.response.status_code, delay)
            logger.warning("stream handshake refused: HTTP %d", exc.response.status_code)
            return None
        except ConnectionClosed as exc:  # e.g. a send after the close
            return exc.rcvd.code if exc.rcvd is not None else None
        except ProtocolViolation as exc:
            logger.warning("stream protocol violation by the gateway: %s", exc)
            return None
        except (OSError, TimeoutError, WebSocketException) as exc:
            logger.info("stream connection failed: %r", exc)
            return None
        finally:
            self._ws = self._session = None
            self._by_sub.clear()
            # Ids name subscriptions within one connection: numbered from c1 on each, so the
            # clients of an app send the same ids and the gateway builds a frame once for all.
            self._next_sub = 0
            for entry in self._channels.values():
                entry.sub, entry.live = None, False

    async def _serve(self, ws: ClientConnection, session: StreamSession) -> None:
        for entry in list(self._channels.values()):
            await self._subscribe(ws, session, entry)
        async for message in ws:
            events = session.receive(message)
            await self._dispatch(ws, session, events)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short by :meth:`close`."""
        self._wake.clear()
        if self._closing:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: it may swallow a cancel
                await self._wake.wait()

    # -- frames -----------------------------------------------------------------------------

    async def _dispatch(
        self, ws: ClientConnection, session: StreamSession, events: list[Event]
    ) -> None:
        updates = [e for e in events if isinstance(e, Update)]
        if updates:  # one events frame: all of one subscription
            await self._by_sub[updates[0].sub].apply(self.store, updates)
        for event in events:
            if isinstance(event, Live):
                await self._on_live(self._by_sub[event.sub], event)
            elif isinstance(event, ResetEvent):
                logger.warning("reset of %s: %s", event.channel, event.reason)
                await self._reset(ws, session, self._by_sub.pop(event.sub))
            elif isinstance(event, ErrorEvent):
                await self._on_error(ws, session, event)
            elif isinstance(event, Unsubscribed):
                entry = self._by_sub.pop(event.sub)
                entry.sub = None
                if not event.by_client:
                    logger.warning("gateway ended %s: %s", entry.name, event.reason)
                    await self._sleep(entry.retry.next_delay())
                    await self._subscribe(ws, session, entry)

    async def _on_live(self, entry: Channel, live: Live) -> None:
        await asyncio.to_thread(self.store.apply, entry.name, live.cursor, None)
        entry.live = True
        entry.retry.reset()
        if all(e.live for e in self._channels.values()):
            self.backoff.reset()
            self._set_state(StreamStateChange(StreamState.LIVE))

    async def _on_error(
        self, ws: ClientConnection, session: StreamSession, err: ErrorEvent
    ) -> None:
        entry = self._by_sub.get(err.sub) if err.sub is not None else None
        if entry is None or err.channel is None:
            logger.warning("stream error %s: %s", err.code, err.message)
            return
        self._by_sub.pop(err.sub or "", None)
        entry.sub = None
        if err.code == "invalid_cursor":  # §8.2 rule 6: as a reset, never "from now"
            logger.warning("stored cursor of %s refused: %s", entry.name, err.message)
            await self._reset(ws, session, entry)
        else:
            logger.error("subscribe of %s refused: %s %s", entry.name, err.code, err.message)

    async def _reset(self, ws: ClientConnection, session: StreamSession, entry: Channel) -> None:
        entry.sub, entry.live = None, False
        await asyncio.to_thread(self.store.mark_reset, entry.name)
        await self._subscribe(ws, session, entry)

    async def _subscribe_now(
        self, ws: ClientConnection, session: StreamSession, entry: Channel
    ) -> None:
        """:meth:`_subscribe` for a channel added while connected (a failure here is the
        connection's: the reader sees it and reconnects)."""
        with contextlib.suppress(OSError, WebSocketException, ProtocolViolation):
            await self._subscribe(ws, session, entry)

    async def _subscribe(
        self, ws: ClientConnection, session: StreamSession, entry: Channel
    ) -> None:
        """Subscribe ``entry`` with its stored cursor, rebuilding it first after a reset."""
        if await asyncio.to_thread(self.store.needs_reset, entry.name):
            delay = entry.retry.next_delay()
            if entry.retry.failures > 1:  # reset again at once: back off (§9)
                await self._sleep(delay)
            cursor = await entry.on_reset(entry.name) if entry.on_reset is not None else None
            await asyncio.to_thread(self.store.apply, entry.name, cursor, None)
        if self._closing or ws is not self._ws:
            return
        cursor = await asyncio.to_thread(self.store.get, entry.name)
        self._next_sub += 1
        sub = f"c{self._next_sub}"
        frame = session.subscribe(sub, entry.name, cursor)
        entry.sub, entry.live = sub, False
        self._by_sub[sub] = entry
        await ws.send(frame)

    def _set_state(self, change: StreamStateChange) -> None:
        if change.state is self.state and change.state is not StreamState.DISCONNECTED:
            return
        self.state = change.state
        if self._on_state is not None:
            self._on_state(change)


def _stream_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.scheme in ("ws", "wss") else parts.path.rstrip("/") + "/v1/stream"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
