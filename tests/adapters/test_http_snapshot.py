"""``GET /v1/snapshot`` on a tiny Starlette app with a real SQLite downstream log.

The app is called in-process through httpx's ASGI transport, on the test's event loop (the
loop of the log). Starlette's ``TestClient`` is not used: with ``httpx`` rather than
``httpx2`` installed, importing it raises a deprecation warning, an error under this suite's
``filterwarnings = error``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.adapters.http_snapshot import SnapshotEndpoint
from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from gateway.core.cursor import Cursor, CursorCodec
from gateway.core.ids import Epoch, KafkaOffset
from gateway.flows.downstream_ports import LogRecord, PartitionKey
from gateway.testing.edge import INSECURE_EDGE

INV, ORD = "inventory.events", "order.events"
CODEC = CursorCodec(b"snapshot-test-key-0123456789")
EPOCH = Epoch("epoch-1")


class Served:
    """A client of the endpoint and the log behind it."""

    def __init__(self, client: httpx.AsyncClient, log: SqliteDownstreamLog) -> None:
        self.client = client
        self.log = log

    async def append(
        self, records: Sequence[LogRecord], positions: Mapping[PartitionKey, int] | None = None
    ) -> None:
        moved = {key: KafkaOffset(offset) for key, offset in (positions or {}).items()}
        await self.log.append_batch(records, moved)

    async def get(self, **params: str) -> httpx.Response:
        return await self.client.get("/v1/snapshot", params=params)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as log:
        endpoint = SnapshotEndpoint(log, CODEC, lambda: EPOCH, max_limit=50, retry_after_s=7)
        app = Starlette(routes=[Route("/v1/snapshot", endpoint.handle)], middleware=INSECURE_EDGE)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Served(client, log)


def update(
    partition: int, offset: int, key: bytes, channel: str = "inventory:S1", value: bytes = b""
) -> LogRecord:
    envelope = {
        "event_id": f"e-{partition}-{offset}",
        "event_type": "Inventory.Updated",
        "key": key.decode(errors="replace"),
        "payload": {"storeId": channel.partition(":")[2], "qty": offset, "note": "ünï"},
    }
    data = value or json.dumps(envelope, ensure_ascii=False).encode()
    return LogRecord(INV, partition, KafkaOffset(offset), key, data, (), 1000 + offset, (channel,))


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "retriable"}
    assert error["message"]
    return str(error["code"])


async def test_a_snapshot_page_with_its_cursor(served: Served) -> None:
    sku1, sku2 = update(0, 4, b"sku-1"), update(1, 2, b"sku-2")
    await served.append(
        [update(0, 3, b"sku-1"), sku1, sku2, update(0, 5, b"sku-3", "inventory:S2")],
        {(INV, 0): 9, (INV, 1): 3, (ORD, 2): 7},
    )
    response = await served.get(channel="inventory:S1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["channel"] == "inventory:S1"
    assert body["next"] is None
    assert body["items"] == [
        {
            "key": (record.key or b"").decode(),
            "key_encoding": "utf-8",
            "topic": INV,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "data": json.loads(record.value),
        }
        for record in (sku1, sku2)
    ]
    assert sku1.value in response.content  # embedded as stored
    assert CODEC.decode(body["cursor"]) == Cursor(EPOCH, {INV: {0: 9, 1: 3}, ORD: {2: 7}})


async def test_keys_that_are_not_utf8_and_values_that_are_not_plain_json(served: Served) -> None:
    await served.append(
        [
            update(0, 0, b"\xff\x00"),
            update(0, 1, b"nan", value=b'{"qty": NaN, "text": "NaN", "max": -Infinity}'),
            update(0, 2, b"bom", value=b'\xef\xbb\xbf{"a": 1}'),
            update(0, 3, b"junk", value=b"not json"),
            update(0, 4, b"list", value=b" [1, 2]"),
            update(0, 5, b"spaced", value=b' {"b": "\xc3\xa9"}\n'),
        ]
    )
    response = await served.get(channel="inventory:S1")
    items = response.json()["items"]
    assert [(i["key"], i["key_encoding"]) for i in items] == [
        ("bom", "utf-8"),
        ("junk", "utf-8"),
        ("list", "utf-8"),
        ("nan", "utf-8"),
        ("spaced", "utf-8"),
        ("_wA", "base64url"),
    ]
    assert [i["data"] for i in items[:5]] == [
        {"a": 1},
        None,
        [1, 2],
        {"qty": None, "text": "NaN", "max": None},
        {"b": "é"},
    ]
    assert b'"data": {"b": "\xc3\xa9"}\n}' in response.content  # embedded as stored


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "invalid_parameter"),
        ({"channel": ""}, 400, "invalid_parameter"),
        ({"channel": "inventory:../x"}, 400, "invalid_parameter"),
        ({"channel": "inventory"}, 400, "invalid_parameter"),
        ({"channel": "orders:u1"}, 404, "snapshot_unavailable"),
        ({"channel": "inventory:S1", "limit": "0"}, 400, "invalid_parameter"),
        ({"channel": "inventory:S1", "limit": "51"}, 400, "invalid_parameter"),
        ({"channel": "inventory:S1", "limit": "-1"}, 400, "invalid_parameter"),
        ({"channel": "inventory:S1", "limit": "ten"}, 400, "invalid_parameter"),
        ({"channel": "inventory:S1", "limit": "²"}, 400, "invalid_parameter"),
        ({"channel": "inventory:S1", "limit": "9" * 5000}, 400, "invalid_parameter"),
        ({"channel": "inventory:S1", "after": "a+b/"}, 400, "invalid_parameter"),
        ({"channel": "inventory:S1", "after": "abcde"}, 400, "invalid_parameter"),
    ],
)
async def test_refused_requests(
    served: Served, params: dict[str, str], status: int, code: str
) -> None:
    await served.append([update(0, 0, b"sku-1")])
    assert error_of(await served.get(**params), status) == code


async def test_pages_by_key_each_with_a_cursor(served: Served) -> None:
    keys = [b"", b"a", b"b", b"c", b"\xff"]
    await served.append([update(0, o, key) for o, key in enumerate(keys)])
    seen: list[tuple[str, str]] = []
    cursors: list[Cursor] = []
    params = {"channel": "inventory:S1", "limit": "1"}
    for _ in range(len(keys) + 1):
        body = (await served.get(**params)).json()
        assert len(body["items"]) == 1
        seen += [(item["key"], item["key_encoding"]) for item in body["items"]]
        cursors.append(CODEC.decode(body["cursor"]))
        if body["next"] is None:
            break
        params["after"] = body["next"]  # the first one is "": the empty key
        await served.append([update(1, len(cursors) - 1, b"x", "inventory:S2")])  # moves on
    assert seen == [
        ("", "utf-8"),
        ("a", "utf-8"),
        ("b", "utf-8"),
        ("c", "utf-8"),
        ("_w", "base64url"),
    ]
    assert [c.position(INV, 1) for c in cursors] == [None, 1, 2, 3, 4]  # read with each page
    assert all(c.position(INV, 0) == 5 for c in cursors)


async def test_a_log_that_cannot_be_read_gives_503(served: Served) -> None:
    await served.log.close()
    response = await served.get(channel="inventory:S1")
    assert error_of(response, 503) == "store_unavailable"
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["retriable"] is True
