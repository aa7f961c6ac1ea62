"""Shared pieces of the reliability scenarios (issue 8): a client that re-sends each batch until
the gateway acknowledges it, keeping the log of acknowledgements the checker compares with
Kafka (:class:`gateway.testing.checker.Ack`), and the tallies the scenarios print."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import msgpack

from gateway.testing.checker import Ack
from tests.factories import order_placed

MSGPACK: Final = "application/msgpack"
RETRYABLE: Final = frozenset({500, 502, 503, 504})
"""Statuses a batch is re-sent after (the gateway stored none of its events, or we cannot know)."""
MAX_ATTEMPTS: Final = 100_000
"""Bound on the attempts for one batch (the deadline normally ends a hopeless loop first)."""


class NotAcknowledged(AssertionError):
    """A batch was still not acknowledged at the deadline."""


@dataclass
class Tally:
    """What the clients of one scenario sent and what the gateway answered (shared)."""

    posts: int = 0
    transport_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: Counter[str] = field(default_factory=Counter)
    """Retry-After values seen on non-200 answers ("" when the header was missing)."""
    batches_acked: int = 0
    acked_events: int = 0
    accepted: int = 0
    duplicate: int = 0
    refused_then_duplicate: int = 0
    """Events answered ``duplicate`` although every earlier attempt of their batch got a clean
    refusal (503): a refused request must have stored nothing, so this must stay 0."""
    ack_latency_s: list[float] = field(default_factory=list)
    """Per acknowledged batch: first attempt to acknowledgement (retries included)."""

    @property
    def retries(self) -> int:
        return self.posts - self.batches_acked

    def summary(self) -> str:
        lat = sorted(self.ack_latency_s)
        p50 = lat[len(lat) // 2] if lat else 0.0
        p99 = lat[min(len(lat) - 1, len(lat) * 99 // 100)] if lat else 0.0
        return (
            f"{self.acked_events} events acked in {self.batches_acked} batches"
            f" ({self.accepted} accepted, {self.duplicate} duplicate answers);"
            f" {self.posts} posts, {self.retries} retries"
            f" ({self.transport_errors} transport errors, statuses {dict(self.statuses)});"
            f" batch ack latency incl. retries p50 {p50:.2f}s p99 {p99:.2f}s"
        )


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[dict[str, Any]]
    body: bytes

    @classmethod
    def of(cls, events: list[dict[str, Any]]) -> Batch:
        body: bytes = msgpack.packb({"events": events})
        return cls(events, body)

    @property
    def event_ids(self) -> list[str]:
        return [e["event_id"] for e in self.events]


def order_batches(
    tag: str,
    client: int,
    events: int,
    batch: int,
    keys: int,
    make: Callable[[str], dict[str, Any]] = order_placed,
) -> list[Batch]:
    """``events`` Order.Placed events of one client in batches; the client's keys are its own
    (``keys`` of them, round robin), so per-key order is the client's sending order."""
    out = []
    for start in range(0, events, batch):
        end = min(events, start + batch)
        out.append(Batch.of([make(f"{tag}-c{client}-k{i % keys}") for i in range(start, end)]))
    return out


class RetryingClient:
    """Uploads batches one at a time, each re-sent (same event ids) until a 200 answers it;
    records every acknowledged event as an :class:`Ack` in acknowledgement order."""

    def __init__(
        self,
        name: str,
        tally: Tally,
        *,
        pause_s: float = 0.05,
        max_pause_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.tally = tally
        self.acked: list[Ack] = []
        self.sent: set[str] = set()
        self._order = itertools.count()
        self._pause_s = pause_s
        self._max_pause_s = max_pause_s
        self._rng = rng if rng is not None else random.Random()
        self._last_retry_after: float | None = None
        self._refused_only = False

    async def attempt(self, http: httpx.AsyncClient, batch: Batch) -> int | None:
        """Send ``batch`` once; the answer's status (acknowledgements recorded on 200), None on
        a transport error. Refusals other than 5xx fail the test."""
        self.sent.update(batch.event_ids)
        self.tally.posts += 1
        try:
            answer = await http.post(
                "/v1/events",
                content=batch.body,
                headers={"content-type": MSGPACK, "accept": "application/json"},
            )
        except httpx.TransportError:
            self.tally.transport_errors += 1
            self._last_retry_after = None
            return None
        self.tally.statuses[answer.status_code] += 1
        self._last_retry_after = None
        if answer.status_code == 200:
            self._acknowledged(batch, answer.json()["results"], self._refused_only)
            return 200
        if answer.status_code not in RETRYABLE:
            raise AssertionError(f"{answer.status_code}: {answer.text[:500]}")
        retry_after = answer.headers.get("retry-after", "")
        self.tally.retry_after[retry_after] += 1
        if retry_after.isdigit():
            self._last_retry_after = float(retry_after)
        return answer.status_code

    async def upload(self, http: httpx.AsyncClient, batch: Batch, deadline: float) -> int:
        """Send ``batch`` until acknowledged (or raise :class:`NotAcknowledged` at the monotonic
        ``deadline``), honouring Retry-After up to ``max_pause_s``; the number of attempts."""
        started = time.monotonic()
        self._refused_only = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if time.monotonic() > deadline:
                break
            status = await self.attempt(http, batch)
            if status == 200:
                self.tally.ack_latency_s.append(time.monotonic() - started)
                return attempt
            # every attempt so far got a clean 503 (which stores nothing)
            self._refused_only = status == 503 and (attempt == 1 or self._refused_only)
            pause = self._pause_s * self._rng.uniform(0.5, 1.5)
            if self._last_retry_after is not None:
                pause = max(pause, self._last_retry_after)
            await asyncio.sleep(min(self._max_pause_s, pause))
        raise NotAcknowledged(
            f"{self.name}: a batch of {len(batch.events)} was not acknowledged in time "
            f"({self.tally.summary()})"
        )

    def _acknowledged(
        self, batch: Batch, results: list[dict[str, Any]], refused_before: bool
    ) -> None:
        assert [r["event_id"] for r in results] == batch.event_ids
        for event, result in zip(batch.events, results, strict=True):
            status = result["status"]
            assert status in ("accepted", "duplicate"), result
            if status == "accepted":
                self.tally.accepted += 1
            else:
                self.tally.duplicate += 1
                self.tally.refused_then_duplicate += refused_before
            self.acked.append(Ack(event["event_id"], event["key"], self.name, next(self._order)))
        self.tally.batches_acked += 1
        self.tally.acked_events += len(batch.events)


async def readyz(http: httpx.AsyncClient) -> dict[str, Any] | None:
    """The gateway's /readyz details; None while it does not answer."""
    try:
        answer = await http.get("/readyz")
        details: dict[str, Any] = answer.json()
    except (httpx.TransportError, ValueError):
        return None
    return details


async def wait_drained(http: httpx.AsyncClient, timeout_s: float) -> float:
    """Poll /readyz until the backlog is empty (bounded); the seconds it took."""
    started = time.monotonic()
    last: dict[str, Any] | None = None
    while time.monotonic() - started < timeout_s:
        last = await readyz(http)
        if last is not None and last.get("backlog", {}).get("events") == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"backlog not forwarded within {timeout_s:g}s; last /readyz: {last}")
