"""The SDK's :class:`~client_sdk.subscriber.Subscriber` and
:class:`~client_sdk.cursor_store.CursorStore`: the store's transaction on its own, then the
subscriber against a real gateway process and a real broker. Each handler writes every update
into a table of the same SQLite database (``event_id`` unique: a duplicate fails the handler),
so "exactly once, in order" is checked as "the table holds exactly this list".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from client_sdk.channels import ResetHandler
from client_sdk.cursor_store import CursorStore
from client_sdk.errors import StreamClosedByPolicy
from client_sdk.frames import Encoding
from client_sdk.protocol import Update
from client_sdk.states import StreamState, StreamStateChange
from client_sdk.subscriber import Subscriber
from gateway.core.backoff import Backoff
from gateway.core.cursor import Cursor, CursorCodec
from gateway.core.ids import Epoch
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics
from tests.integration.test_stream import publish

# -- the cursor store -----------------------------------------------------------------------


def open_store(path: Path) -> CursorStore:
    store = CursorStore(path)
    with store.transaction() as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS seen ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,"
            " channel TEXT NOT NULL, quantity INTEGER NOT NULL)"
        )
    return store


def record(update: Update, db: sqlite3.Connection) -> None:
    """The app's handler: one row per update, in the store's transaction."""
    assert update.data is not None
    db.execute(
        "INSERT INTO seen (event_id, channel, quantity) VALUES (?, ?, ?)",
        (update.data["event_id"], update.channel, update.data["payload"]["quantity"]),
    )


def seen(store: CursorStore, channel: str) -> list[int]:
    with store.transaction() as db:
        rows = db.execute(
            "SELECT quantity FROM seen WHERE channel = ? ORDER BY seq", (channel,)
        ).fetchall()
    return [q for (q,) in rows]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CursorStore]:
    with open_store(tmp_path / "app.db") as opened:
        yield opened


def test_store_is_durable_wal_and_starts_empty(store: CursorStore) -> None:
    with store.transaction() as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert store.get("inventory:s1") is None
    assert not store.needs_reset("inventory:s1")


def test_apply_commits_effect_and_cursor_together(store: CursorStore, tmp_path: Path) -> None:
    def effect(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO seen (event_id, channel, quantity) VALUES ('e1', 'c', 1)")

    store.apply("c", "CUR1", effect)
    store.apply("c", "CUR2")
    with open_store(tmp_path / "app.db") as again:  # another connection sees both
        assert again.get("c") == "CUR2"
        assert seen(again, "c") == [1]


def test_a_failing_effect_stores_neither_its_writes_nor_the_cursor(store: CursorStore) -> None:
    store.apply("c", "CUR1")

    def effect(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO seen (event_id, channel, quantity) VALUES ('e2', 'c', 2)")
        raise RuntimeError("app bug")

    with pytest.raises(RuntimeError, match="app bug"):
        store.apply("c", "CUR2", effect)
    assert store.get("c") == "CUR1"
    assert seen(store, "c") == []


def test_an_effect_may_not_commit_the_transaction_itself(store: CursorStore) -> None:
    def effect(db: sqlite3.Connection) -> None:
        db.execute("COMMIT")

    with pytest.raises(RuntimeError, match="ended the store's transaction"):
        store.apply("c", "CUR1", effect)
    assert store.get("c") is None


def test_mark_reset_drops_the_cursor_until_a_new_one_is_stored(store: CursorStore) -> None:
    store.apply("c", "CUR1")
    store.mark_reset("c")
    assert (store.get("c"), store.needs_reset("c")) == (None, True)
    store.apply("c", None)  # rebuilt: from now
    assert (store.get("c"), store.needs_reset("c")) == (None, False)


# -- the subscriber against a scripted server ---------------------------------------------


def update_frame(sub: str, offset: int, cursor: str) -> dict[str, object]:
    data = {"event_id": f"e-{offset}", "payload": {"quantity": offset}}
    return {
        "type": "events",
        "sub": sub,
        "events": [
            {"topic": "t", "partition": 0, "offset": offset, "key": "k", "timestamp": 1}
            | {"data": data, "cursor": cursor}
        ],
    }


async def test_reset_frame_rebuilds_resubscribes_and_a_1008_close_stops_the_loop(
    store: CursorStore,
) -> None:
    """A scripted gateway: replay one update, ``reset``; the subscriber calls ``on_reset``,
    subscribes with the snapshot's cursor, stores ``live``; then a 1008 close ends ``run()``."""
    store.apply("inventory:s1", "OLD")
    received: list[dict[str, object]] = []

    async def scripted(ws: ServerConnection) -> None:
        async def expect_subscribe(cursor: str | None) -> str:
            frame = json.loads(await ws.recv())
            received.append(frame)
            assert (frame["type"], frame["cursor"]) == ("subscribe", cursor)
            await ws.send(
                json.dumps({"type": "subscribed", "sub": frame["sub"], "channel": "inventory:s1"})
            )
            return str(frame["sub"])

        sub = await expect_subscribe("OLD")
        await ws.send(json.dumps(update_frame(sub, 7, "C7")))
        await ws.send(
            json.dumps(
                {"type": "reset", "sub": sub, "channel": "inventory:s1", "reason": "epoch_changed"}
            )
        )
        sub = await expect_subscribe("SNAP")
        await ws.send(json.dumps(update_frame(sub, 8, "C8")))
        await ws.send(json.dumps({"type": "live", "sub": sub, "cursor": "L8"}))
        await asyncio.sleep(0.2)
        await ws.close(1008, "too many refused frames")

    async def on_reset(channel: str) -> str | None:
        assert store.needs_reset(channel)
        assert store.get(channel) is None
        return "SNAP"

    async with serve(
        scripted, "127.0.0.1", 0, subprotocols=[Subprotocol("sync-gateway.v1.json")]
    ) as server:
        port = server.sockets[0].getsockname()[1]
        states: list[StreamStateChange] = []
        subscriber = Subscriber(
            f"ws://127.0.0.1:{port}/v1/stream", store, encoding="json", on_state=states.append
        )
        subscriber.subscribe("inventory:s1", record, on_reset=on_reset)
        async with asyncio.timeout(10):
            with pytest.raises(StreamClosedByPolicy, match="1008"):
                await subscriber.run()
    assert seen(store, "inventory:s1") == [7, 8]
    assert (store.get("inventory:s1"), store.needs_reset("inventory:s1")) == ("L8", False)
    assert [s.state for s in states] == [
        StreamState.CONNECTING,
        StreamState.CONNECTED,
        StreamState.LIVE,
        StreamState.CLOSED,
    ]
    assert states[-1].close_code == 1008


async def test_subscription_ids_are_numbered_per_connection(store: CursorStore) -> None:
    """Each connection names its subscriptions from ``c1`` (ids are unique per connection;
    alike across clients, they let the gateway build each update's frame once)."""
    ids: list[list[str]] = []

    async def scripted(ws: ServerConnection) -> None:
        mine: list[str] = []
        ids.append(mine)
        for _ in range(2):
            frame = json.loads(await ws.recv())
            mine.append(str(frame["sub"]))
            await ws.send(
                json.dumps({"type": "subscribed", "sub": frame["sub"], "channel": frame["channel"]})
            )
        await ws.close(1011 if len(ids) == 1 else 1008, "scripted")

    async with serve(
        scripted, "127.0.0.1", 0, subprotocols=[Subprotocol("sync-gateway.v1.json")]
    ) as server:
        port = server.sockets[0].getsockname()[1]
        subscriber = Subscriber(
            f"ws://127.0.0.1:{port}/v1/stream",
            store,
            encoding="json",
            backoff=Backoff(base=0.01, cap=0.05),
        )
        subscriber.subscribe("inventory:s1", record)
        subscriber.subscribe("inventory:s2", record)
        async with asyncio.timeout(10):
            with pytest.raises(StreamClosedByPolicy, match="1008"):
                await subscriber.run()
    assert ids == [["c1", "c2"], ["c1", "c2"]]


# -- the subscriber against a real gateway --------------------------------------------------


@pytest.fixture(scope="module")
def topics() -> TestTopics:
    return TestTopics()


@pytest.fixture(scope="module")
def gateway(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory, topics: TestTopics
) -> Iterator[GatewayProcess]:
    """One gateway process for this module's tests (one of them kills and restarts it)."""
    settings = topics.settings(kafka_broker.bootstrap)
    with streaming_gateway(tmp_path_factory.mktemp("gw"), settings) as gw:
        yield gw


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.05)


class Running:
    """A subscriber's ``run()`` task and the states it reported."""

    def __init__(self, subscriber: Subscriber, states: list[StreamStateChange]) -> None:
        self.subscriber = subscriber
        self.states = states
        self.task = asyncio.create_task(subscriber.run())

    def healthy(self) -> bool:
        if self.task.done():
            self.task.result()  # raise what ended it
            raise AssertionError("run() ended")
        return True

    def live(self) -> bool:
        return self.healthy() and self.subscriber.state is StreamState.LIVE

    async def stop(self) -> None:
        async with asyncio.timeout(15):
            await self.subscriber.close()
            await self.task
        assert self.subscriber.state is StreamState.CLOSED


@asynccontextmanager
async def running(
    gw: GatewayProcess,
    store: CursorStore,
    channel: str,
    *,
    encoding: Encoding = "msgpack",
    on_reset: ResetHandler | None = None,
    wait_live: bool = True,
) -> AsyncIterator[Running]:
    """A subscriber of ``channel`` (handler :func:`record`) running on ``store``; closed and
    awaited at the end, whatever happened."""
    states: list[StreamStateChange] = []
    subscriber = Subscriber(
        gw.url,
        store,
        encoding=encoding,
        backoff=Backoff(base=0.05, cap=0.5),
        on_state=states.append,
    )
    subscriber.subscribe(channel, record, on_reset=on_reset)
    run = Running(subscriber, states)
    try:
        if wait_live:
            await eventually(run.live, "the subscriber is live", 30)
        yield run
    finally:
        await subscriber.close()
        if not run.task.done():
            run.task.cancel()
        with contextlib.suppress(BaseException):
            await run.task


@pytest.mark.integration
@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_updates_are_applied_exactly_once_in_order(
    gateway: GatewayProcess, store: CursorStore, encoding: Encoding
) -> None:
    shop = f"sdk-a-{encoding}"
    channel = f"inventory:{shop}"
    async with running(gateway, store, channel, encoding=encoding) as run:
        live_cursor = store.get(channel)
        assert live_cursor is not None  # the live cursor is persisted
        await publish(gateway, shop, range(0, 30))
        await eventually(lambda: run.healthy() and len(seen(store, channel)) >= 30, "30 updates")
        await run.stop()
    assert seen(store, channel) == list(range(30))
    assert store.get(channel) not in (None, live_cursor)
    assert [s.state for s in run.states][:3] == [
        StreamState.CONNECTING,
        StreamState.CONNECTED,
        StreamState.LIVE,
    ]


@pytest.mark.integration
async def test_a_new_subscriber_on_the_same_store_gets_exactly_the_rest(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    shop, channel = "sdk-b", "inventory:sdk-b"
    path = tmp_path / "device.db"
    store = open_store(path)
    async with running(gateway, store, channel) as run:
        await publish(gateway, shop, range(0, 200))
        await eventually(lambda: run.healthy() and len(seen(store, channel)) >= 20, "20 updates")
        run.task.cancel()  # mid-stream, as a killed app would stop
        with pytest.raises(asyncio.CancelledError):
            await run.task
    store.close()
    await publish(gateway, shop, range(200, 250))  # while the app is away

    store = open_store(path)  # the app starts again
    try:
        got_before = len(seen(store, channel))
        assert 20 <= got_before <= 200
        async with running(gateway, store, channel, wait_live=False) as run:
            await eventually(lambda: run.healthy() and len(seen(store, channel)) >= 250, "all")
            await publish(gateway, shop, range(250, 260))
            await eventually(lambda: run.healthy() and len(seen(store, channel)) >= 260, "new")
            await run.stop()
        assert seen(store, channel) == list(range(260))
    finally:
        store.close()


@pytest.mark.integration
async def test_an_invalid_cursor_is_handled_as_a_reset(
    gateway: GatewayProcess, store: CursorStore
) -> None:
    shop, channel = "sdk-d", "inventory:sdk-d"
    await publish(gateway, shop, range(0, 5))
    foreign = CursorCodec(b"another-fleets-cursor-key-0123").encode(Cursor(Epoch("e1"), {}))
    store.apply(channel, foreign)  # a token the gateway did not sign: invalid_cursor
    resets: list[str] = []

    async def resnapshot(name: str) -> str | None:
        """Rebuild from the snapshot once it reflects the 5 updates; resume from its cursor."""
        resets.append(name)
        assert store.needs_reset(name)  # durable: a crash here rebuilds again
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for _ in range(300):
                page = (await http.get("/v1/snapshot", params={"channel": name})).json()
                if [i["data"]["payload"]["quantity"] for i in page["items"]] == [4]:
                    cursor: str = page["cursor"]
                    return cursor
                await asyncio.sleep(0.1)
        raise AssertionError("the snapshot never showed the 5 updates")

    async with running(gateway, store, channel, on_reset=resnapshot) as run:
        assert resets == [channel]
        assert not store.needs_reset(channel)
        await publish(gateway, shop, range(5, 10))
        await eventually(lambda: run.healthy() and len(seen(store, channel)) >= 5, "5 updates")
        await run.stop()
    assert seen(store, channel) == list(range(5, 10))  # after the snapshot: nothing skipped
    assert store.get(channel) != foreign


@pytest.mark.integration
async def test_the_subscriber_reconnects_by_itself_after_a_gateway_crash(
    gateway: GatewayProcess, store: CursorStore
) -> None:
    shop, channel = "sdk-c", "inventory:sdk-c"
    async with running(gateway, store, channel) as run:
        subscriber = run.subscriber
        await publish(gateway, shop, range(0, 300))  # acked: durable in the gateway
        await eventually(lambda: run.healthy() and len(seen(store, channel)) >= 1, "1 update")
        gateway.kill()
        await eventually(
            lambda: run.healthy() and subscriber.state is not StreamState.LIVE, "a drop", 10
        )
        await asyncio.to_thread(gateway.start)
        await publish(gateway, shop, range(300, 310))
        await eventually(lambda: run.healthy() and len(seen(store, channel)) >= 310, "all", 90)
        await run.stop()
    assert seen(store, channel) == list(range(310))
    kinds = [s.state for s in run.states]
    assert StreamState.DISCONNECTED in kinds
    assert kinds.count(StreamState.CONNECTED) >= 2
