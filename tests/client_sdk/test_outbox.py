"""The device outbox on its own: durability, order, answers, size caps, crashes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from client_sdk.errors import InvalidEvent, OutboxClosed
from client_sdk.outbox import Outbox
from client_sdk.records import EventId, NewEvent, Receipt, ReceiptStatus

PAYLOAD: dict[str, Any] = {"orderId": "o-1", "userId": "u-1", "n": 1}


def publish(outbox: Outbox, key: str = "order-1", **payload: Any) -> EventId:
    return outbox.publish("Order.Placed", 1, key, {**PAYLOAD, **payload}, source="device-1")


def ok(event_id: EventId, status: ReceiptStatus = ReceiptStatus.ACCEPTED) -> Receipt:
    return Receipt(event_id, status)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


def test_publish_builds_the_envelope_once_and_it_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    when = datetime(2026, 11, 21, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    with Outbox(path) as first:
        event_id = first.publish(
            "Order.Placed",
            2,
            "order-9",
            {"orderId": "order-9"},
            source="till-3",
            correlation_id="flow-1",
            event_time=when,
        )
        before = first.pending()
    assert str(uuid.UUID(event_id)) == event_id
    with Outbox(path) as again:
        after = again.pending()
    assert after == before
    assert [e.event_id for e in after] == [event_id]
    assert after[0].decoded() == {
        "event_id": event_id,
        "event_type": "Order.Placed",
        "event_version": 2,
        "event_time": "2026-11-21T10:00:00+02:00",
        "source": "till-3",
        "correlation_id": "flow-1",
        "key": "order-9",
        "payload": {"orderId": "order-9"},
    }


def test_defaults_event_time_to_now_and_omits_missing_correlation(outbox: Outbox) -> None:
    publish(outbox)
    envelope = outbox.pending()[0].decoded()
    assert "correlation_id" not in envelope
    sent = datetime.fromisoformat(envelope["event_time"])
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_type": "order placed"}, "event_type"),
        ({"version": 0}, "version"),
        ({"version": True}, "version"),
        ({"key": ""}, "key"),
        ({"source": ""}, "source"),
        ({"payload": {"x": float("nan")}}, "JSON"),
        ({"payload": {"x": object()}}, "JSON"),
        ({"event_time": datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_invalid_arguments_store_nothing(
    outbox: Outbox, change: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {
        "event_type": "Order.Placed",
        "version": 1,
        "key": "k",
        "payload": {},
        "source": "d",
        **change,
    }
    with pytest.raises(InvalidEvent, match=message):
        outbox.publish(**args)
    assert outbox.stats().pending == 0


def test_pending_in_publish_order_with_limit(outbox: Outbox) -> None:
    ids = [publish(outbox, f"k{i % 3}") for i in range(10)]
    assert [e.event_id for e in outbox.pending(limit=100)] == ids
    assert [e.event_id for e in outbox.pending(limit=4)] == ids[:4]
    seqs = [e.seq for e in outbox.pending()]
    assert seqs == sorted(seqs)


def test_publish_many_is_one_ordered_transaction(outbox: Outbox) -> None:
    events = [NewEvent("Order.Placed", 1, f"k{i}", {"i": i}, "d") for i in range(50)]
    ids = outbox.publish_many(events)
    assert len(set(ids)) == 50
    assert [e.event_id for e in outbox.pending(limit=100)] == ids
    bad = [*events[:3], NewEvent("bad", 1, "k", {}, "d")]
    with pytest.raises(InvalidEvent):
        outbox.publish_many(bad)
    assert outbox.stats().pending == 50


def test_size_cap_but_never_an_empty_batch(outbox: Outbox) -> None:
    small = [publish(outbox, note="x" * 100) for _ in range(10)]
    size = outbox.pending()[0].size
    assert [e.event_id for e in outbox.pending(max_bytes=size * 3)] == small[:3]
    assert [e.event_id for e in outbox.pending(max_bytes=size * 3 + size - 1)] == small[:3]
    # an event larger than the cap still goes out alone (the gateway will reject it)
    assert [e.event_id for e in outbox.pending(max_bytes=1)] == small[:1]
    with pytest.raises(ValueError, match="positive"):
        outbox.pending(limit=0)


def test_accepted_and_duplicate_leave_with_receipts(outbox: Outbox) -> None:
    a, b, c = (publish(outbox) for _ in range(3))
    outbox.mark_done([ok(a), ok(b, ReceiptStatus.DUPLICATE)])
    assert [e.event_id for e in outbox.pending()] == [c]
    assert [(r.event_id, r.status) for r in outbox.receipts()] == [
        (a, ReceiptStatus.ACCEPTED),
        (b, ReceiptStatus.DUPLICATE),
    ]
    receipt = outbox.receipt(b)
    assert receipt is not None
    assert receipt.ok
    assert outbox.receipt(c) is None
    outbox.mark_done([ok(a)])  # an answer for an event no longer pending changes nothing
    assert outbox.stats().pending == 1
    assert len(outbox.receipts()) == 2


def test_rejected_moves_aside_with_reason_and_does_not_block(outbox: Outbox) -> None:
    a, bad, c = (publish(outbox) for _ in range(3))
    rejection = Receipt(
        bad,
        ReceiptStatus.REJECTED,
        code="invalid_payload",
        field="payload.userId",
        message="'userId' is a required property",
    )
    outbox.mark_done([rejection])
    assert [e.event_id for e in outbox.pending()] == [a, c]
    [moved] = outbox.rejected()
    assert (moved.event_id, moved.code, moved.field) == (bad, "invalid_payload", "payload.userId")
    assert "userId" in moved.message
    assert json.loads(moved.envelope)["event_id"] == bad
    answer = outbox.receipt(bad)
    assert answer is not None
    assert (answer.status, answer.code, answer.ok) == (
        ReceiptStatus.REJECTED,
        "invalid_payload",
        False,
    )
    stats = outbox.stats()
    assert (stats.pending, stats.rejected) == (2, 1)


def test_stats_age_and_last_error(outbox: Outbox) -> None:
    empty = outbox.stats()
    assert (empty.pending, empty.oldest_pending_age_s, empty.rejected, empty.last_error) == (
        0,
        None,
        0,
        None,
    )
    first = publish(outbox)
    time.sleep(0.05)
    publish(outbox)
    outbox.record_error("connection refused")
    stats = outbox.stats()
    assert stats.pending == 2
    assert stats.oldest_pending_age_s is not None
    assert stats.oldest_pending_age_s >= 0.05
    assert stats.last_error == "connection refused"
    outbox.mark_done([ok(first)])
    assert outbox.stats().last_error is None


def test_flush_bookkeeping(outbox: Outbox) -> None:
    assert outbox.last_seq() == 0
    ids = [publish(outbox) for _ in range(5)]
    high = outbox.last_seq()
    publish(outbox)
    assert outbox.pending_count(high) == 5
    outbox.mark_done([ok(i) for i in ids])
    assert outbox.pending_count(high) == 0
    assert outbox.pending_count() == 1
    assert outbox.last_seq() == high + 1  # seqs are never reused


def test_database_is_wal_and_fully_synchronous(outbox: Outbox, tmp_path: Path) -> None:
    publish(outbox)
    with sqlite3.connect(tmp_path / "outbox.db") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # a second connection sees the committed event at once
        assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


def test_closed_outbox_refuses(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    box.close()
    with pytest.raises(OutboxClosed):
        publish(box)


PUBLISHER = textwrap.dedent(
    """
    import sys
    from client_sdk.outbox import Outbox
    box = Outbox(sys.argv[1])
    i = 0
    while True:
        event_id = box.publish("Order.Placed", 1, f"k{i % 7}", {"i": i}, source="crash")
        sys.stdout.write(event_id + "\\n")
        sys.stdout.flush()
        i += 1
    """
)

ANSWERER = textwrap.dedent(
    """
    import sys
    from client_sdk.outbox import Outbox
    from client_sdk.records import Receipt, ReceiptStatus
    box = Outbox(sys.argv[1])
    while True:
        batch = box.pending(limit=7)
        if not batch:
            break
        statuses = [ReceiptStatus.ACCEPTED, ReceiptStatus.REJECTED]
        box.mark_done([
            Receipt(e.event_id, statuses[e.seq % 5 == 0], code="invalid_payload", message="m")
            for e in batch
        ])
        sys.stdout.write("batch\\n")
        sys.stdout.flush()
    """
)


def _run_until_killed(script: str, path: Path, lines: int) -> list[str]:
    """Run ``script`` in a child, read ``lines`` lines of its output, SIGKILL it mid-way; the
    lines it wrote (each written only after its commit returned)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    out: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < lines and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            out.append(line.strip())
    finally:
        child.kill()
        rest, _ = child.communicate(timeout=30)
    out += rest.split()  # lines written after ours were read, before the kill
    return out


def test_killed_publisher_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    acknowledged = _run_until_killed(PUBLISHER, path, 300)
    assert len(acknowledged) >= 300
    with Outbox(path) as box:
        stored = [e.event_id for e in box.pending(limit=100_000, max_bytes=1 << 30)]
    assert len(stored) == len(set(stored))
    # every acknowledged id is there, in order; at most one more (committed, not yet printed)
    assert stored[: len(acknowledged)] == acknowledged
    assert len(stored) - len(acknowledged) <= 1


def test_killed_while_recording_answers_keeps_every_event_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        ids = box.publish_many(
            [NewEvent("Order.Placed", 1, "k", {"i": i}, "d") for i in range(3000)]
        )
    _run_until_killed(ANSWERER, path, 100)
    with Outbox(path) as box:
        pending = {e.event_id for e in box.pending(limit=100_000, max_bytes=1 << 30)}
        done = {r.event_id for r in box.receipts(limit=100_000)}
        rejected = {r.event_id for r in box.rejected(limit=100_000)}
        assert 0 < box.stats().pending < 3000
    # every event is in exactly one place
    assert pending | done | rejected == set(ids)
    assert len(pending) + len(done) + len(rejected) == len(ids)
