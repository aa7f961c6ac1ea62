"""Uploads the outbox to the gateway: size-capped batches to ``POST /v1/events``, retried until
the gateway has answered for every event.

The loop, in short::

    batch = outbox.pending(limit, max_bytes)        # oldest first
    POST /v1/events {"events": batch}                # msgpack (default) or JSON
      200      -> outbox.mark_done(results)          # accepted/duplicate leave, rejected move aside
      413      -> halve the batch, send again        # one event alone: rejected locally
      503/429  -> wait Retry-After, send again
      5xx, connection error, timeout -> wait (capped exponential backoff, full jitter), again
      other 4xx -> record the error, wait (backoff), again: never dropped

An event leaves the outbox only with the gateway's answer for it; a batch whose answer is lost
is sent again with the same event ids and comes back ``duplicate``.

Observable: :meth:`Uploader.stats` (pending, oldest pending age, rejected, last error),
:attr:`Uploader.connection`, per-event receipts and connection changes through the
``on_receipt`` / ``on_state`` callbacks and the :meth:`Uploader.events` async iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Literal

import httpx

from client_sdk.auth import TokenSource, bearer_headers
from client_sdk.batches import JSON, MSGPACK, encode_batch, read_answer, too_large_receipt
from client_sdk.errors import (
    BatchTooLarge,
    ClientClosed,
    ConnectionFailed,
    FlushTimeout,
    ServerError,
    ServiceUnavailable,
    UploadError,
)
from client_sdk.outbox import Outbox
from client_sdk.records import OutboxStats, PendingEvent, Receipt
from client_sdk.states import ConnectionState, StateChange
from gateway.core.backoff import Backoff

__all__ = ["Uploader", "UploaderEvent"]

log = logging.getLogger("client_sdk.uploader")

GROW_BACK_AFTER: Final = 32
"""Successful batches after which a batch size halved by a 413 is doubled again."""


UploaderEvent = Receipt | StateChange
"""What :meth:`Uploader.events` yields."""

_END: Final = object()


class Uploader:
    """Sends the events of an :class:`~client_sdk.outbox.Outbox` to a gateway.

    ``base_url``: the gateway, e.g. ``https://sync.example.com``. ``batch_events`` and
    ``batch_bytes`` cap one request (keep them under the gateway's ``max_batch_events`` and
    ``max_body_bytes``; a 413 halves them anyway). ``encoding``: ``"msgpack"`` or ``"json"``.
    ``backoff``: delays between failed attempts (default: 0.2 s doubling to 30 s, full jitter).
    ``poll_interval``: how often the outbox is looked at when nobody calls :meth:`notify`
    (events published by another process or handle). ``token``: the bearer token, or a
    function giving the current one, asked before every request (:mod:`client_sdk.auth`; a 401
    is retried with whatever it gives next). ``headers``: sent with every request. ``http``: a
    client to use (not closed by :meth:`close`); by default one is made with ``timeout``.

    Use :meth:`run` as a task (it loops until :meth:`close`) and/or :meth:`flush`; both may run
    at once, they share one sender.
    """

    def __init__(
        self,
        outbox: Outbox,
        base_url: str,
        *,
        batch_events: int = 500,
        batch_bytes: int = 512 * 1024,
        encoding: Literal["msgpack", "json"] = "msgpack",
        backoff: Backoff | None = None,
        on_receipt: Callable[[Receipt], object] | None = None,
        on_state: Callable[[StateChange], object] | None = None,
        http: httpx.AsyncClient | None = None,
        headers: dict[str, str] | None = None,
        token: TokenSource | None = None,
        poll_interval: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        if batch_events < 1 or batch_bytes < 1:
            raise ValueError("batch_events and batch_bytes must be positive")
        if encoding not in ("msgpack", "json"):
            raise ValueError(f"encoding must be 'msgpack' or 'json', not {encoding!r}")
        self.outbox = outbox
        self._url = base_url.rstrip("/") + "/v1/events"
        self._batch_events = batch_events
        self._batch_bytes = batch_bytes
        self._limit_events = batch_events
        self._limit_bytes = batch_bytes
        self._successes = 0
        self._encoding = encoding
        self._backoff = backoff if backoff is not None else Backoff(base=0.2, cap=30.0)
        self._on_receipt = on_receipt
        self._on_state = on_state
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._headers = {
            "content-type": MSGPACK if encoding == "msgpack" else JSON,
            "accept": MSGPACK if encoding == "msgpack" else JSON,
            **(headers or {}),
        }
        self._token = token
        self._poll_interval = poll_interval
        self._state = ConnectionState.UNKNOWN
        self._last_error: str | None = None
        self._not_before = 0.0  # monotonic time before which no request is sent
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closed = False
        self._run_task: asyncio.Task[None] | None = None
        self._subscribers: set[asyncio.Queue[object]] = set()
        self.dropped_notifications = 0
        """Notifications not delivered to an :meth:`events` iterator whose queue was full."""
        self.uploaded = 0
        """Events the gateway answered for (accepted, duplicate or rejected) since start."""

    # -- observation -----------------------------------------------------------------------------

    @property
    def connection(self) -> ConnectionState:
        """The current connection state."""
        return self._state

    @property
    def last_error(self) -> str | None:
        """The last upload failure (None after a success)."""
        return self._last_error

    async def stats(self) -> OutboxStats:
        """The outbox's pending count, oldest pending age, rejected count and last error."""
        return await asyncio.to_thread(self.outbox.stats)

    def events(self, max_queued: int = 10_000) -> AsyncIterator[UploaderEvent]:
        """Receipts and state changes from now on, until :meth:`close`.

        Subscribes at once (not at the first ``anext``). A consumer that falls more than
        ``max_queued`` behind misses notifications (counted in ``dropped_notifications``); the
        receipts themselves stay in the outbox.
        """
        queue: asyncio.Queue[object] = asyncio.Queue(max_queued)
        if self._closed:
            queue.put_nowait(_END)
        else:
            self._subscribers.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[object]) -> AsyncIterator[UploaderEvent]:
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                assert isinstance(item, Receipt | StateChange)
                yield item
        finally:
            self._subscribers.discard(queue)

    def _notify(self, item: object) -> None:
        for queue in self._subscribers:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped_notifications += 1

    def _set_state(self, state: ConnectionState, error: str | None = None) -> None:
        if state is self._state:
            return
        change = StateChange(state, self._state, error)
        self._state = state
        log.info("gateway link %s -> %s%s", change.previous, state, f": {error}" if error else "")
        _call(self._on_state, change)
        self._notify(change)

    # -- driving ---------------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake the uploader: events were just published. Call it from the loop's thread
        (from another thread: ``loop.call_soon_threadsafe(uploader.notify)``)."""
        self._wake.set()

    async def run(self) -> None:
        """Upload until :meth:`close`: whenever woken by :meth:`notify`, every
        ``poll_interval`` otherwise, and with backoff after failures. Never raises for upload
        failures (they are retried); returns when closed."""
        if self._closed:
            raise ClientClosed("uploader is closed")
        self._run_task = asyncio.current_task()
        try:
            while not self._closed:
                self._wake.clear()
                try:
                    sent = await self._send_next()
                except UploadError:
                    sent = 0  # recorded by _send_next; the wait below honours the backoff
                if sent:
                    continue
                await self._sleep_until_woken()
        finally:
            self._run_task = None

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Upload every event published before this call, then return.

        Failures are retried (backoff, Retry-After) until ``timeout`` seconds have passed;
        then :class:`~client_sdk.errors.FlushTimeout` (the events stay pending).
        """
        if self._closed:
            raise ClientClosed("uploader is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        high = await asyncio.to_thread(self.outbox.last_seq)
        while True:
            remaining = await asyncio.to_thread(self.outbox.pending_count, high)
            if remaining == 0:
                return
            if self._closed:
                raise ClientClosed("uploader closed during flush")
            if deadline is not None and time.monotonic() >= deadline:
                raise FlushTimeout(
                    f"{remaining} events still pending after {timeout} s"
                    + (f" (last error: {self._last_error})" if self._last_error else ""),
                    pending=remaining,
                )
            try:
                sent = await self._send_next()
            except UploadError:
                sent = 0
            if not sent:
                # Another sender holds the lock or we are backing off: wait a little.
                wait = max(0.0, self._not_before - time.monotonic())
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(max(wait, 0.05))

    async def close(self, grace: float = 5.0) -> None:
        """Stop :meth:`run` (a request in flight gets ``grace`` seconds to finish), end the
        :meth:`events` iterators and close the HTTP client if the uploader made it.
        Idempotent. Pending events stay in the outbox."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        task = self._run_task
        if task is not None and task is not asyncio.current_task():
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._set_state(ConnectionState.CLOSED)
        for queue in list(self._subscribers):
            if queue.full():  # the end must get through: it replaces the oldest notice
                queue.get_nowait()
                self.dropped_notifications += 1
            queue.put_nowait(_END)
        self._subscribers.clear()
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Uploader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _sleep_until_woken(self) -> None:
        """Wait for notify()/close(), the poll interval, or the end of a backoff period."""
        backoff = self._not_before - time.monotonic()
        if backoff > 0:
            # Backing off: publishing does not shorten the wait, only close() does.
            await self._wait_closed(backoff)
            return
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
        # comes as the event is already set
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
                await self._wake.wait()

    async def _wait_closed(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._closed:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    # -- one batch -------------------------------------------------------------------------------

    async def _send_next(self) -> int:
        """Send the next batch; how many events got an answer (0: nothing to send, backing off,
        or another sender busy). Raises UploadError after recording a failure."""
        if self._send_lock.locked():
            return 0
        async with self._send_lock:
            if self._not_before > time.monotonic():
                return 0
            while True:
                batch = await asyncio.to_thread(
                    self.outbox.pending, self._limit_events, self._limit_bytes
                )
                if not batch:
                    return 0
                try:
                    receipts = await self._post(batch)
                except BatchTooLarge as exc:
                    if len(batch) > 1:
                        self._shrink(batch)
                        continue
                    receipts = [too_large_receipt(batch[0], exc)]
                except UploadError as exc:
                    await self._failed(exc)
                    raise
                await self._succeeded(receipts)
                return len(receipts)

    async def _post(self, batch: Sequence[PendingEvent]) -> list[Receipt]:
        body = encode_batch(batch, self._encoding)
        try:
            headers = self._headers | await bearer_headers(self._token)
            answer = await self._http.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ConnectionFailed(f"timeout: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"connection failed: {exc!r}") from exc
        return read_answer(batch, answer)

    def _shrink(self, batch: Sequence[PendingEvent]) -> None:
        """413 for several events: halve the limits (they grow back after many successes)."""
        self._limit_events = max(1, len(batch) // 2)
        self._limit_bytes = max(1, sum(e.size for e in batch) // 2)
        self._successes = 0
        log.info("413 for %d events: batches of at most %d now", len(batch), self._limit_events)

    async def _succeeded(self, receipts: list[Receipt]) -> None:
        await asyncio.to_thread(self.outbox.mark_done, receipts)
        self.uploaded += len(receipts)
        self._backoff.reset()
        self._not_before = 0.0
        self._last_error = None
        self._successes += 1
        if self._successes >= GROW_BACK_AFTER and (
            self._limit_events < self._batch_events or self._limit_bytes < self._batch_bytes
        ):
            self._limit_events = min(self._batch_events, self._limit_events * 2)
            self._limit_bytes = min(self._batch_bytes, self._limit_bytes * 2)
            self._successes = 0
        self._set_state(ConnectionState.ONLINE)
        for receipt in receipts:
            _call(self._on_receipt, receipt)
            self._notify(receipt)

    async def _failed(self, exc: UploadError) -> None:
        delay = self._backoff.next_delay()
        if isinstance(exc, ServiceUnavailable) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self._not_before = time.monotonic() + delay
        self._last_error = str(exc)
        self._successes = 0
        log.warning("upload failed (%s); next attempt in %.2f s", exc, delay)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.outbox.record_error, self._last_error)
        if isinstance(exc, ConnectionFailed | ServerError):
            self._set_state(ConnectionState.OFFLINE, str(exc))
        else:
            self._set_state(ConnectionState.ONLINE)


def _call(callback: Callable[[Any], object] | None, value: object) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:
        log.exception("uploader callback %r failed", callback)
