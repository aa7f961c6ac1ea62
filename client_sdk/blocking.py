"""A blocking client for scripts without an event loop.

``BlockingOutboxClient`` owns an :class:`~client_sdk.outbox.Outbox` and runs an
:class:`~client_sdk.uploader.Uploader` in a background thread with its own event loop::

    with BlockingOutboxClient("outbox.db", "http://127.0.0.1:8080") as client:
        client.publish("Order.Placed", 1, "order-1", {...}, source="till-3")
        client.flush(timeout=30)

``publish()`` returns once the event is durable on the device, whether or not the gateway is
reachable; the background thread uploads it as soon as it can.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from client_sdk.errors import ClientClosed
from client_sdk.outbox import Outbox
from client_sdk.records import EventId, NewEvent, OutboxStats
from client_sdk.uploader import Uploader

__all__ = ["BlockingOutboxClient"]

T = TypeVar("T")


class BlockingOutboxClient:
    """Durable publishing plus background upload, for code with no running event loop.

    ``path``: the outbox file; ``base_url``: the gateway. Keyword options (``batch_events``,
    ``batch_bytes``, ``encoding``, ``backoff``, ``headers``, ``poll_interval``, ``timeout``,
    ``on_receipt``, ``on_state``) go to the :class:`~client_sdk.uploader.Uploader`; its callbacks
    run in the background thread. Thread-safe.
    """

    def __init__(
        self,
        path: str | Path,
        base_url: str,
        *,
        encoding: Literal["msgpack", "json"] = "msgpack",
        **uploader_options: Any,
    ) -> None:
        self._outbox = Outbox(path)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"outbox-uploader:{path}", daemon=True
        )
        self._closed = False
        self._thread.start()

        async def start() -> tuple[Uploader, asyncio.Task[None]]:
            uploader = Uploader(self._outbox, base_url, encoding=encoding, **uploader_options)
            return uploader, asyncio.create_task(uploader.run())

        try:
            self._uploader, self._task = self._call(start())
        except BaseException:
            self._stop_loop()
            self._outbox.close()
            raise

    @property
    def outbox(self) -> Outbox:
        """The underlying outbox (for receipts(), rejected(), ...)."""
        return self._outbox

    def publish(
        self,
        event_type: str,
        version: int,
        key: str,
        payload: Mapping[str, Any],
        *,
        source: str,
        correlation_id: str | None = None,
        event_time: datetime | None = None,
    ) -> EventId:
        """Store one event durably (see :meth:`Outbox.publish`), wake the uploader, return the
        event's id."""
        return self.publish_many(
            [NewEvent(event_type, version, key, payload, source, correlation_id, event_time)]
        )[0]

    def publish_many(self, events: list[NewEvent]) -> list[EventId]:
        """Store several events in one durable transaction; their ids."""
        self._check_open()
        ids = self._outbox.publish_many(events)
        self._loop.call_soon_threadsafe(self._uploader.notify)
        return ids

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event published before the call is uploaded, or raise
        :class:`~client_sdk.errors.FlushTimeout` after ``timeout`` seconds."""
        self._check_open()
        self._call(self._uploader.flush(timeout))

    def stats(self) -> OutboxStats:
        """Pending count, oldest pending age, rejected count, last error."""
        self._check_open()
        return self._outbox.stats()

    def close(self, grace: float = 5.0) -> None:
        """Stop the uploader (a request in flight gets ``grace`` seconds), the thread and the
        outbox. Idempotent. What was not uploaded stays in the outbox for next time."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._uploader.close(grace))
            self._call(self._loop.shutdown_default_executor())
        finally:
            self._stop_loop()
            self._outbox.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("client is closed")

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
