"""A batch of the outbox on the wire: the body of ``POST /v1/events``, and the gateway's answer
read as one receipt per event or as the :class:`~client_sdk.errors.UploadError` to retry.

Used by the :class:`~client_sdk.uploader.Uploader`, which does the sending, the retrying and
the bookkeeping.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

import httpx
import msgpack

from client_sdk.errors import (
    BatchRefused,
    BatchTooLarge,
    ConnectionFailed,
    ServerError,
    ServiceUnavailable,
    TokenRefused,
)
from client_sdk.records import EventId, PendingEvent, Receipt, ReceiptStatus

__all__ = ["JSON", "MSGPACK", "encode_batch", "read_answer", "too_large_receipt"]

MSGPACK: Final = "application/msgpack"
JSON: Final = "application/json"
MAX_RETRY_AFTER_S: Final = 300.0


def encode_batch(batch: Sequence[PendingEvent], encoding: Literal["msgpack", "json"]) -> bytes:
    """The request body carrying ``batch``: ``{"events": [...]}`` in ``encoding``."""
    if encoding == "json":
        return b'{"events":[' + b",".join(e.envelope for e in batch) + b"]}"
    packed: bytes = msgpack.packb({"events": [json.loads(e.envelope) for e in batch]})
    return packed


def read_answer(batch: Sequence[PendingEvent], answer: httpx.Response) -> list[Receipt]:
    """One receipt per event of ``batch`` from the gateway's ``answer``; for any answer but a
    readable 200, the :class:`~client_sdk.errors.UploadError` its status calls for."""
    status = answer.status_code
    if status == 200:
        return _receipts(batch, _decode(answer))
    code, message = _error_of(answer)
    text = f"HTTP {status} {code or ''}: {message}".strip()
    if status == 413:
        raise BatchTooLarge(text, status=status, code=code)
    if status == 401:
        raise TokenRefused(text, status=status, code=code)
    if status in (429, 503):
        retry_after = _retry_after(answer.headers.get("retry-after"))
        raise ServiceUnavailable(text, status=status, code=code, retry_after=retry_after)
    if status >= 500:
        raise ServerError(text, status=status, code=code)
    raise BatchRefused(text, status=status, code=code)


def too_large_receipt(event: PendingEvent, exc: BatchTooLarge) -> Receipt:
    """A lone event the gateway refuses with 413: no request can ever carry it; it is moved
    aside like a rejected event instead of blocking the queue."""
    return Receipt(
        event.event_id,
        ReceiptStatus.REJECTED,
        code=exc.code or "body_too_large",
        message=f"refused by the gateway even alone: {exc}",
    )


def _decode(answer: httpx.Response) -> Any:
    """The answer's body by its content type; ConnectionFailed when unreadable (the batch is
    sent again: its accepted events come back duplicate)."""
    try:
        if answer.headers.get("content-type", "").startswith(MSGPACK):
            return msgpack.unpackb(answer.content)
        return json.loads(answer.content)
    except Exception as exc:
        raise ConnectionFailed(f"unreadable answer ({answer.status_code}): {exc!r}") from exc


def _receipts(batch: Sequence[PendingEvent], body: Any) -> list[Receipt]:
    """One receipt per event of the batch from a 200 answer (ConnectionFailed if it does not
    answer for exactly the batch's events)."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != len(batch):
        raise ConnectionFailed(f"answer does not list one result per event: {str(body)[:200]}")
    now = time.time()
    out: list[Receipt] = []
    for position, (event, result) in enumerate(zip(batch, results, strict=True)):
        if not isinstance(result, dict) or result.get("index", position) != position:
            raise ConnectionFailed(f"result {position} is not for event {position}: {result!r}")
        answered_id = result.get("event_id")
        if isinstance(answered_id, str) and answered_id.lower() != event.event_id:
            raise ConnectionFailed(f"result {position} names {answered_id}, not {event.event_id}")
        try:
            status = ReceiptStatus(str(result.get("status")))
        except ValueError:
            raise ConnectionFailed(f"unknown status in {result!r}") from None
        if status is ReceiptStatus.REJECTED:
            error = result.get("error")
            if not isinstance(error, dict):
                error = {}
            out.append(
                Receipt(
                    EventId(event.event_id),
                    status,
                    now,
                    code=str(error.get("code") or "rejected"),
                    field=error.get("field") if isinstance(error.get("field"), str) else None,
                    message=str(error.get("message") or ""),
                )
            )
        else:
            out.append(Receipt(EventId(event.event_id), status, now))
    return out


def _error_of(answer: httpx.Response) -> tuple[str | None, str]:
    """(code, message) of an error answer, as far as it can be read."""
    try:
        body = _decode(answer)
        error = body["error"]
        return str(error.get("code")), str(error.get("message", ""))
    except Exception:
        return None, answer.text[:200] if answer.content else answer.reason_phrase


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), capped; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER_S)
