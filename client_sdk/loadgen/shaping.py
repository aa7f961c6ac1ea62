"""How a :class:`~client_sdk.loadgen.proxy.FaultProxy` shapes its link while it is up: the
:class:`Faults` to apply, and the :class:`Shaper` that applies them to every chunk relayed
(its delay, its pacing by a shared :class:`TokenBucket` per direction, its slicing, and the
reset of its :class:`Link` after ``reset_after_bytes``), counting what passed.

See :mod:`client_sdk.loadgen.proxy` for what each fault does to the peers.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["CHUNK", "Direction", "Faults", "Link", "LinkReset", "Shaper", "TokenBucket"]

Direction = Literal["up", "down", "both"]
"""``up``: client -> target; ``down``: target -> client; ``both``: the two counted together."""
CHUNK: Final = 64 * 1024
"""The read size of each direction of a connection: no chunk, and so no write, is larger."""


@dataclass(frozen=True, slots=True)
class Faults:
    """How the link misbehaves while it is up (the default: not at all)."""

    latency_s: float = 0.0
    """Delay of every chunk, each direction."""
    jitter_s: float = 0.0
    """Extra delay, uniform in ``[0, jitter_s]``, drawn per chunk."""
    bandwidth_bps: int | None = None
    """Bytes per second per direction (all connections together); ``None``: unlimited."""
    reset_after_bytes: int | None = None
    """Abort a connection once this many bytes passed in ``reset_direction``."""
    reset_direction: Direction = "both"
    reset_once: bool = False
    """Reset only the first connection reaching ``reset_after_bytes`` (per
    :meth:`~client_sdk.loadgen.proxy.FaultProxy.degrade`)."""
    slice_bytes: int | None = None
    """Write in pieces of at most this many bytes, draining after each."""
    slice_pause_s: float = 0.0
    """Pause after each piece when slicing (0: just yield to the event loop once)."""

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.jitter_s < 0 or self.slice_pause_s < 0:
            raise ValueError("latency_s, jitter_s and slice_pause_s must be >= 0")
        for name in ("bandwidth_bps", "reset_after_bytes", "slice_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.reset_direction not in ("up", "down", "both"):
            raise ValueError(f"reset_direction must be up, down or both: {self.reset_direction!r}")

    @property
    def healthy(self) -> bool:
        """Whether nothing is degraded."""
        return self == Faults()


class TokenBucket:
    """Paces writes to ``rate`` bytes per second; callers are served in turn (FIFO lock)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = max(1, min(CHUNK, rate))
        self._tokens = float(self.burst)
        self._stamp: float | None = None
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        """Wait until ``n`` (at most ``burst``) bytes may pass."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                now = loop.time()
                if self._stamp is not None:
                    self._tokens = min(
                        float(self.burst), self._tokens + (now - self._stamp) * self.rate
                    )
                self._stamp = now
                if self._tokens >= n:
                    self._tokens -= n
                    return
                await asyncio.sleep((n - self._tokens) / self.rate)


class Link:
    """One client connection and, once connected, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.generation = -1
        """The faults generation the byte counts below belong to."""
        self.counted = {"up": 0, "down": 0}

    def abort(self) -> None:
        """Abort both connections: each peer sees a reset."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class LinkReset(Exception):
    """The connection reached ``reset_after_bytes``."""


class Shaper:
    """The faults of one proxy's link, applied to the chunks of all its connections: when a
    chunk is due (:meth:`delay`), how it is written (:meth:`send`), and the counters."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._faults = Faults()
        self._generation = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._reset_spent = False
        self.bytes_up = self.bytes_down = self.resets = self.writes = 0

    @property
    def faults(self) -> Faults:
        """The faults applied now."""
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        self._generation += 1  # byte counts for reset_after_bytes start afresh
        self._reset_spent = False
        rate = faults.bandwidth_bps
        if rate is None:
            self._buckets = {}
        elif not self._buckets or self._buckets["up"].rate != rate:
            self._buckets = {"up": TokenBucket(rate), "down": TokenBucket(rate)}

    def delay(self) -> float:
        """How long after it was read a chunk read now is due: latency plus a jitter draw."""
        faults = self._faults
        delay = faults.latency_s
        if faults.jitter_s:
            delay += self._rng.uniform(0.0, faults.jitter_s)
        return delay

    async def send(
        self, chunk: bytes, writer: asyncio.StreamWriter, link: Link, *, up: bool
    ) -> None:
        """Write one chunk under the current faults; raises :class:`LinkReset` (after writing the
        bytes up to the limit) when the connection must be reset."""
        faults = self._faults
        direction = "up" if up else "down"
        reset_now = False
        limit = faults.reset_after_bytes
        if limit is not None and faults.reset_direction in (direction, "both"):
            if link.generation != self._generation:
                link.generation = self._generation
                link.counted = {"up": 0, "down": 0}
            if not (faults.reset_once and self._reset_spent):
                passed = link.counted["up"] + link.counted["down"]
                if faults.reset_direction != "both":
                    passed = link.counted[direction]
                if passed + len(chunk) >= limit:
                    chunk = chunk[: max(0, limit - passed)]
                    reset_now = True
                    self._reset_spent = True  # before any await: one connection only
        piece = faults.slice_bytes or CHUNK
        bucket = self._buckets.get(direction)
        if bucket is not None:
            piece = min(piece, bucket.burst)
        for start in range(0, len(chunk), piece):
            part = chunk[start : start + piece]
            if bucket is not None:
                await bucket.take(len(part))
            writer.write(part)
            await writer.drain()
            self.writes += 1
            link.counted[direction] += len(part)
            if up:
                self.bytes_up += len(part)
            else:
                self.bytes_down += len(part)
            if faults.slice_bytes is not None:
                await asyncio.sleep(faults.slice_pause_s)
        if reset_now:
            self.resets += 1
            link.abort()
            raise LinkReset(f"reset after {limit} bytes ({faults.reset_direction})")
