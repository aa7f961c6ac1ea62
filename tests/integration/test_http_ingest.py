"""POST /v1/events against a real gateway process over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgpack
import pytest

from gateway.testing.gateway_process import GatewayProcess
from tests.factories import order_placed
from tests.integration.store_reader import stored_ids

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
MAX_BATCH = 50
MAX_EVENT = 4096


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("gateway")
    settings = {
        "max_body_bytes": str(MAX_BODY),
        "max_batch_events": str(MAX_BATCH),
        "max_event_bytes": str(MAX_EVENT),
        "kafka_bootstrap": "127.0.0.1:9",  # nothing listens: ingest must not care
    }
    with GatewayProcess(data_dir, settings=settings) as proc:
        yield proc


@pytest.fixture
async def client(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        yield http


async def post(client: httpx.AsyncClient, events: list[Any]) -> httpx.Response:
    return await client.post("/v1/events", json={"events": events})


async def test_accepted_events_are_in_the_store_when_answered(
    client: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    events = [order_placed(f"order-{i}") for i in range(20)]
    answer = await post(client, events)
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 20
    assert [r["status"] for r in body["results"]] == ["accepted"] * 20
    assert [r["index"] for r in body["results"]] == list(range(20))
    assert {e["event_id"] for e in events} <= set(stored_ids(gateway.data_dir))


async def test_duplicates_within_and_across_requests(
    client: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    a, b = order_placed(), order_placed()
    first = (await post(client, [a, b, a])).json()
    assert [r["status"] for r in first["results"]] == ["accepted", "accepted", "duplicate"]
    again = (await post(client, [b, a])).json()
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate"]
    upper = dict(a, event_id=a["event_id"].upper())
    assert (await post(client, [upper])).json()["results"][0]["status"] == "duplicate"
    ids = stored_ids(gateway.data_dir)
    assert ids.count(a["event_id"]) == 1
    assert ids.count(b["event_id"]) == 1


async def test_same_event_in_concurrent_requests_is_stored_once(
    client: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    event = order_placed()
    others = [order_placed() for _ in range(30)]
    answers = await asyncio.gather(*(post(client, [other, event]) for other in others))
    statuses = [answer.json()["results"][1]["status"] for answer in answers]
    assert statuses.count("accepted") == 1
    assert statuses.count("duplicate") == len(others) - 1
    assert stored_ids(gateway.data_dir).count(event["event_id"]) == 1


async def test_msgpack_body_gets_msgpack_answer(
    client: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    event = order_placed()
    answer = await client.post(
        "/v1/events",
        content=msgpack.packb({"events": [event]}),
        headers={"content-type": "application/msgpack"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/msgpack"
    body = msgpack.unpackb(answer.content)
    assert body["results"][0]["status"] == "accepted"
    assert event["event_id"] in stored_ids(gateway.data_dir)


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"event_type": "Order.Exploded"}, "unknown_event_type", "event_type"),
        ({"event_version": 99}, "unknown_event_version", "event_version"),
        ({"key": None}, "invalid_envelope", "key"),
        ({"event_time": "not a time"}, "invalid_envelope", "event_time"),
        ({"payload": {"orderId": "o"}}, "invalid_payload", "payload.userId"),
        ({"payload": {"note": "x" * MAX_EVENT}}, None, None),
    ],
)
async def test_bad_event_is_rejected_alone(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    change: dict[str, Any],
    code: str | None,
    field: str | None,
) -> None:
    bad = order_placed()
    for name, value in change.items():
        if value is None:
            bad.pop(name)
        else:
            bad[name] = value
    good = order_placed()
    answer = await post(client, [bad, good])
    assert answer.status_code == 200
    rejected, accepted = answer.json()["results"]
    assert rejected["status"] == "rejected"
    if code is not None:
        assert rejected["error"]["code"] == code
        assert rejected["error"]["field"] == field
    else:
        assert rejected["error"]["code"] in {"event_too_large", "invalid_payload"}
    assert accepted["status"] == "accepted"
    ids = stored_ids(gateway.data_dir)
    assert bad["event_id"] not in ids
    assert good["event_id"] in ids


def test_oversize_event_gets_event_too_large(gateway: GatewayProcess) -> None:
    event = order_placed()
    event["payload"]["items"] = [dict(event["payload"]["items"][0], sku=f"S{i}") for i in range(60)]
    with httpx.Client(base_url=gateway.url) as http:
        result = http.post("/v1/events", json={"events": [event]}).json()["results"][0]
    assert result["error"]["code"] == "event_too_large"
    assert event["event_id"] not in stored_ids(gateway.data_dir)


def _json_body(value: object) -> bytes:
    return json.dumps(value).encode()


JSON = "application/json"
MSGPACK = "application/msgpack"

REFUSED = [
    pytest.param(
        JSON,
        _json_body({"events": [order_placed()]})[:-5],
        400,
        "malformed_body",
        id="malformed-json",
    ),
    pytest.param(
        MSGPACK,
        msgpack.packb({"events": [order_placed()]})[:-3],
        400,
        "malformed_body",
        id="malformed-msgpack",
    ),
    pytest.param(
        "text/plain",
        _json_body({"events": [order_placed()]}),
        415,
        "unsupported_media_type",
        id="wrong-content-type",
    ),
    pytest.param(JSON, _json_body([order_placed()]), 400, "malformed_body", id="not-an-object"),
    pytest.param(
        JSON, _json_body({"event": [order_placed()]}), 400, "malformed_body", id="no-events-field"
    ),
    pytest.param(
        JSON,
        _json_body({"events": [order_placed() for _ in range(MAX_BATCH + 1)]}),
        413,
        "batch_too_large",
        id="batch-over-count",
    ),
]


@pytest.mark.parametrize(("content_type", "body", "status", "code"), REFUSED)
async def test_refused_request_changes_nothing(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    content_type: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    await _refused(
        client, gateway, status, code, content=body, headers={"content-type": content_type}
    )


async def _refused(
    client: httpx.AsyncClient, gateway: GatewayProcess, status: int, code: str, **kwargs: Any
) -> None:
    before = stored_ids(gateway.data_dir)
    answer = await client.post("/v1/events", **kwargs)
    assert answer.status_code == status, answer.text
    if answer.headers["content-type"] == MSGPACK:
        error = msgpack.unpackb(answer.content)["error"]
    else:
        error = answer.json()["error"]
    assert error["code"] == code
    assert stored_ids(gateway.data_dir) == before


async def test_declared_body_over_limit_is_refused_before_reading(
    gateway: GatewayProcess,
) -> None:
    """413 arrives although the client has sent only the headers."""
    before = stored_ids(gateway.data_dir)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {MAX_BODY * 10}\r\n\r\n".encode()
        + b'{"events": ['
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()
    assert b" 413 " in status_line
    assert stored_ids(gateway.data_dir) == before


async def test_streamed_body_over_limit_is_refused(
    client: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"events": ['
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000
        yield b"]}"

    await _refused(
        client,
        gateway,
        413,
        "body_too_large",
        content=chunks(),
        headers={"content-type": "application/json"},
    )


async def test_health_ready_openapi_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["store"]["state"] == "open"
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/events" in spec["paths"]
    assert "Envelope" in spec["components"]["schemas"]
    await post(client, [order_placed()])
    metrics = (await client.get("/metrics")).text
    assert 'sync_gateway_ingest_events_total{outcome="accepted"}' in metrics
