"""HTTP adapter of the snapshot: ``GET /v1/snapshot``, the current state of one channel.

A client with no cursor, or one told ``reset``, reads the compacted view of a channel (the
latest update per key, kept by the downstream log for the snapshot families, e.g.
``inventory``) page by page, then streams from the cursor of the **first** page::

    GET /v1/snapshot?channel=inventory:S1&limit=100            first page
    GET /v1/snapshot?channel=inventory:S1&limit=100&after=NEXT  following pages

``channel`` is required; ``limit`` is 1 to ``max_limit`` (default ``max_limit``); ``after`` is
the ``next`` of the previous page. The answer (200, ``application/json``)::

    {"channel": "inventory:S1",
     "items": [{"key": "sku-1", "key_encoding": "utf-8", "topic": "inventory.events",
                "partition": 0, "offset": 41, "timestamp": 1700000000000,
                "data": {"event_id": "...", "event_type": "...", "key": "sku-1", ...}}, ...],
     "cursor": "TOKEN",
     "next": "BASE64URL" | null}

Items are ordered by key (bytewise); ``next`` is null on the last page. ``key`` is the Kafka
record key as text when it is UTF-8 (``"key_encoding": "utf-8"``, the usual case: keys are the
envelopes' aggregate ids), else its base64url without padding (``"key_encoding":
"base64url"``). ``data`` is the record's value, the event envelope, embedded as stored.

``cursor`` names the log's positions read together with the page's items: every update of the
channel before it is reflected in the snapshot. Pages are read at different moments, so the
client must stream from the *first* page's cursor: updates that arrived while it paged are
then delivered again, which is harmless since applying the newer update again gives the same
state per key (a later page's cursor could skip updates of keys already paged past).

Errors have the ingest endpoint's shape, ``{"error": {"code", "message", "retriable"}}``:
400 ``invalid_parameter`` (missing or invalid ``channel``, bad ``limit`` or ``after``), 404
``snapshot_unavailable`` (the channel's family keeps no snapshot), 503 ``store_unavailable``
with ``Retry-After`` when the log cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from gateway.adapters.http_auth import principal_of
from gateway.adapters.http_errors import error_response
from gateway.core.channels import valid_channel
from gateway.core.codec import MediaType, encode
from gateway.core.cursor import Cursor, CursorCodec
from gateway.core.ids import Epoch
from gateway.errors import GatewayError, InvalidParameter, SnapshotUnavailable, StoreUnavailable
from gateway.flows.downstream_ports import DownstreamLog, LogRecord, SnapshotPage

log = logging.getLogger(__name__)

_LIMIT: Final = re.compile(r"[0-9]{1,9}")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


class SnapshotEndpoint:
    """ASGI endpoint for ``GET /v1/snapshot``."""

    def __init__(
        self,
        log: DownstreamLog,
        codec: CursorCodec,
        epoch: Callable[[], Epoch | None],
        *,
        max_limit: int = 1000,
        retry_after_s: int = 1,
    ) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        self._log = log
        self._codec = codec
        self._epoch = epoch
        self._max_limit = max_limit
        self._retry_after_s = retry_after_s

    async def handle(self, request: Request) -> Response:
        try:
            principal = principal_of(request.scope)
            channel, after, limit = self._parameters(request)
            principal.require_subscribe(channel)
            epoch = self._epoch()
            if epoch is None:  # a new instance that has not reached Kafka yet
                raise StoreUnavailable("the stream's history is not known yet")
            page = await self._log.snapshot(channel, after_key=after, limit=limit)
            token = self._codec.encode(Cursor(epoch).advance_many(page.positions))
        except GatewayError as exc:
            return error_response(exc, MediaType.JSON, retry_after_s=self._retry_after_s)
        return Response(_answer(channel, page, token), 200, media_type=MediaType.JSON.value)

    def _parameters(self, request: Request) -> tuple[str, bytes | None, int]:
        query = request.query_params
        channel = query.get("channel")
        if channel is None:
            raise InvalidParameter("the 'channel' parameter is required")
        if not valid_channel(channel):
            raise InvalidParameter(f"invalid channel {channel!r:.140}")
        if channel.partition(":")[0] not in self._log.snapshot_families:
            raise SnapshotUnavailable(f"no snapshot is kept of channel {channel}")
        raw_limit = query.get("limit")
        limit = self._max_limit
        if raw_limit is not None:
            if _LIMIT.fullmatch(raw_limit) is None or not 1 <= int(raw_limit) <= self._max_limit:
                raise InvalidParameter(f"'limit' must be an integer from 1 to {self._max_limit}")
            limit = int(raw_limit)
        raw_after = query.get("after")
        return channel, None if raw_after is None else _after_key(raw_after), limit


def _after_key(text: str) -> bytes:
    """The key a page's ``next`` names (base64url without padding; ``""`` is the empty key)."""
    if _BASE64URL.fullmatch(text) is None:
        raise InvalidParameter("'after' must be the 'next' of a page (base64url, no padding)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidParameter("'after' is not valid base64url") from None


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _answer(channel: str, page: SnapshotPage, token: str) -> bytes:
    """The answer as JSON, each record's value embedded as it is."""
    head = encode({"channel": channel}, MediaType.JSON)[:-1]
    items = b",".join(map(_item, page.items))
    next_ = None if page.next_key is None else _base64url(page.next_key)
    tail = encode({"cursor": token, "next": next_}, MediaType.JSON)[1:]
    return head + b',"items":[' + items + b"]," + tail


def _item(record: LogRecord) -> bytes:
    key, key_encoding = _key_text(record.key)
    fields = {
        "key": key,
        "key_encoding": key_encoding,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
    }
    return encode(fields, MediaType.JSON)[:-1] + b',"data":' + _envelope_json(record) + b"}"


def _key_text(key: bytes | None) -> tuple[str | None, str | None]:
    """(text, encoding) of a record key: UTF-8 text if it is UTF-8, else base64url."""
    if key is None:  # never in a snapshot: records without a key are not kept
        return None, None
    try:
        return key.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return _base64url(key), "base64url"


def _envelope_json(record: LogRecord) -> bytes:
    """The record's value as JSON text to embed in the answer.

    A record has a channel only if its value parsed as a JSON object (channel mapping), so a
    value that looks like a UTF-8 JSON object is embedded as stored, without parsing again.
    Anything else (a byte-order mark, UTF-16/32, encoded surrogates, Python's non-standard
    constants ``NaN``/``Infinity``, which its parser accepts; a value that is not an object)
    is parsed and written again, the constants as ``null``, or sent as ``null`` if it is not
    JSON at all.
    """
    value = record.value
    text = value.strip(b" \t\r\n")
    if text[:1] == b"{" and text[-1:] == b"}" and b"NaN" not in value and b"Infinity" not in value:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return value
    try:
        parsed = json.loads(value, parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        log.warning(
            "snapshot record %s/%d@%d is not JSON; sent with data null",
            record.topic,
            record.partition,
            record.offset,
        )
        return b"null"
    return encode(parsed, MediaType.JSON)
