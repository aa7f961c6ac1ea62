"""A fault-injecting TCP proxy on loopback, to put a flaky link in front of a server (a gateway
in front of mobile clients, or a Kafka broker in front of the gateway).

:class:`FaultProxy` accepts connections on ``127.0.0.1:<port>`` and relays bytes to a target.
While the link is *up*, every byte passes, shaped by the current :class:`Faults`:

- ``latency_s`` + a uniform ``jitter_s``: each chunk is delivered that long after it was read
  (a delay line: latency does not cut throughput; the byte order is kept, so a chunk is never
  delivered before the one read before it);
- ``bandwidth_bps``: a token bucket per direction, shared by every connection, paces writes to
  that many bytes per second (bursts of at most ``CHUNK`` bytes or one second's worth);
- ``reset_after_bytes``: a connection is aborted (both sides see a reset) once that many bytes
  passed in ``reset_direction`` since it opened or since the faults were last set (whichever is
  later); with ``reset_once`` only the first connection reaching it is aborted;
- ``slice_bytes``: bytes are written in pieces of at most that size, each drained (and followed
  by ``slice_pause_s``, at least a turn of the event loop) before the next: the receiver sees
  many tiny reads.

:meth:`FaultProxy.degrade` (or assigning :attr:`FaultProxy.faults`) changes them at runtime;
:meth:`FaultProxy.heal` clears them. :meth:`FaultProxy.cut` drops every live connection at once
(both sides are aborted: the peers see a reset, as when a phone leaves coverage) and, until
:meth:`FaultProxy.restore`, new connections are either refused (accepted then reset at once,
``mode="refuse"``) or black-holed (held open, nothing relayed, reset at the next restore,
``mode="blackhole"``: the client only learns through its own timeouts).
:meth:`FaultProxy.run_pattern` alternates up and down periods with jitter::

    proxy = FaultProxy("127.0.0.1", 8080)
    await proxy.start()
    task = asyncio.create_task(proxy.run_pattern(5.0, 1.0, random.Random(1), until))
    proxy.degrade(latency_s=0.05, jitter_s=0.05, bandwidth_bps=256_000)
    ...                                      # clients use http://127.0.0.1:{proxy.port}
    proxy.heal()
    await proxy.stop()

Resources are bounded: at most ``max_connections`` relayed connections (more are reset at
once), per direction of a connection one 64 KiB read buffer and a delay line of at most
``QUEUE_CHUNKS`` chunks (with back-pressure on the reader), every task tracked and ended by
:meth:`FaultProxy.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["Direction", "FaultProxy", "Faults", "ProxyMode", "ProxyStats"]

log = logging.getLogger(__name__)

ProxyMode = Literal["refuse", "blackhole"]
Direction = Literal["up", "down", "both"]
"""``up``: client -> target; ``down``: target -> client; ``both``: the two counted together."""
CHUNK: Final = 64 * 1024
QUEUE_CHUNKS: Final = 16
"""Chunks a direction's delay line holds at most (then the proxy stops reading)."""
CONNECT_TIMEOUT_S: Final = 5.0


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
    """Reset only the first connection reaching ``reset_after_bytes`` (per :meth:`degrade`)."""
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


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters of a :class:`FaultProxy` since :meth:`FaultProxy.start`."""

    connections: int
    """Connections accepted and relayed to the target."""
    refused: int
    """Connections reset at once (link down, over the limit, or the target unreachable)."""
    active: int
    """Connections open now (relayed or black-holed)."""
    cuts: int
    """Times the link went down (:meth:`FaultProxy.cut`)."""
    dropped: int
    """Live connections aborted by cuts."""
    bytes_up: int
    """Bytes relayed client -> target."""
    bytes_down: int
    """Bytes relayed target -> client."""
    resets: int = 0
    """Connections aborted by ``reset_after_bytes``."""
    writes: int = 0
    """Writes to either side (more than chunks when slicing or pacing)."""


class _TokenBucket:
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


class _Link:
    """One client connection and, once connected, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.generation = -1
        """The faults generation the byte counts below belong to."""
        self.counted = {"up": 0, "down": 0}

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class _Reset(Exception):
    """The connection reached ``reset_after_bytes``."""


class FaultProxy:
    """A TCP relay from ``127.0.0.1:listen_port`` (0: any free port) to the target, whose link
    can be degraded, cut and restored (see the module docstring). ``latency_s`` is the initial
    :attr:`Faults.latency_s`; ``faults`` the initial faults (both at once is an error)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_port: int = 0,
        *,
        latency_s: float = 0.0,
        mode: ProxyMode = "refuse",
        max_connections: int = 4096,
        faults: Faults | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if latency_s < 0 or max_connections < 1:
            raise ValueError("latency_s must be >= 0 and max_connections >= 1")
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"mode must be 'refuse' or 'blackhole', not {mode!r}")
        if faults is not None and latency_s:
            raise ValueError("give latency_s or faults, not both")
        self.target_host = target_host
        self.target_port = target_port
        self.mode: ProxyMode = mode
        self.max_connections = max_connections
        self._rng = rng if rng is not None else random.Random()
        self._faults = Faults()
        self._generation = 0
        self._buckets: dict[str, _TokenBucket] = {}
        self._reset_spent = False
        self.faults = faults if faults is not None else Faults(latency_s=latency_s)
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._held: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._up = True
        self._connections = self._refused = self._cuts = self._dropped = 0
        self._bytes_up = self._bytes_down = self._resets = self._writes = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on loopback (the link starts up)."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._listen_port, limit=CHUNK
        )

    @property
    def port(self) -> int:
        """The port the proxy listens on (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("proxy not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop listening, abort every connection and wait (bounded) for the relay tasks."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links | self._held):
            link.abort()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- faults ---------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The faults applied now (to live connections too, from their next chunk)."""
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
            self._buckets = {"up": _TokenBucket(rate), "down": _TokenBucket(rate)}

    def degrade(self, faults: Faults | None = None, **changes: object) -> Faults:
        """Set the faults: ``faults`` as given, or the current ones with ``changes`` (field
        names of :class:`Faults`, e.g. ``degrade(latency_s=0.05, slice_bytes=7)``). Returns
        the faults now applied."""
        base = faults if faults is not None else self._faults
        new = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        self.faults = new
        return new

    def heal(self) -> None:
        """Clear every fault set by :meth:`degrade` (not a cut: see :meth:`restore`)."""
        self.faults = Faults()

    @property
    def latency_s(self) -> float:
        """Shorthand for ``faults.latency_s`` (settable)."""
        return self._faults.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self.degrade(latency_s=value)

    @property
    def is_up(self) -> bool:
        """True while bytes are relayed."""
        return self._up

    def cut(self) -> None:
        """Take the link down: abort every live connection now; refuse or black-hole new ones
        until :meth:`restore`. Idempotent while down."""
        if not self._up:
            return
        self._up = False
        self._cuts += 1
        links = list(self._links)
        self._dropped += len(links)
        for link in links:
            link.abort()
        log.debug("link cut: %d connections dropped", len(links))

    def restore(self) -> None:
        """Bring the link up again; black-holed connections are reset (their clients retry)."""
        self._up = True
        held = list(self._held)
        for link in held:
            link.abort()

    async def run_pattern(
        self, up_s: float, down_s: float, rng: random.Random, until: float
    ) -> None:
        """Alternate up (``up_s``) and down (``down_s``) periods, each jittered by +-50 %, until
        the event loop's clock reaches ``until``; the link is up when this returns (also when
        cancelled)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                for seconds, action in ((up_s, self.cut), (down_s, self.restore)):
                    left = until - loop.time()
                    if left <= 0:
                        return
                    await asyncio.sleep(min(left, seconds * rng.uniform(0.5, 1.5)))
                    if loop.time() >= until:
                        return
                    action()
        finally:
            self.restore()

    def stats(self) -> ProxyStats:
        """The counters now."""
        return ProxyStats(
            connections=self._connections,
            refused=self._refused,
            active=len(self._links) + len(self._held),
            cuts=self._cuts,
            dropped=self._dropped,
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
            resets=self._resets,
            writes=self._writes,
        )

    # -- relaying -------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        link = _Link(writer)
        try:
            if len(self._links) + len(self._held) >= self.max_connections:
                self._refused += 1
                return
            if not self._up:
                if self.mode == "refuse":
                    self._refused += 1
                    return
                self._held.add(link)
                try:  # black hole: swallow what comes until the client or restore() ends it
                    while await reader.read(CHUNK):
                        pass
                finally:
                    self._held.discard(link)
                return
            await self._relay(link, reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, _Reset) as exc:
            log.debug("proxied connection ended: %r", exc)
        finally:
            link.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _relay(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            up_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port, limit=CHUNK),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError):
            self._refused += 1
            return
        link.upstream = upstream
        if not self._up:  # cut while connecting
            self._refused += 1
            return
        self._connections += 1
        self._links.add(link)
        try:
            pumps = [
                asyncio.create_task(self._pump(client_reader, upstream, link, up=True)),
                asyncio.create_task(self._pump(up_reader, link.client, link, up=False)),
            ]
            try:
                await asyncio.gather(*pumps)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.wait(pumps)
        finally:
            self._links.discard(link)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, up: bool
    ) -> None:
        """Copy one direction until EOF (then half-close) or an error (then abort both).

        A reader task feeds a bounded delay line of ``(due time, chunk)``; this task writes
        each chunk when it is due, shaped by the faults."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)

        async def read_side() -> None:
            last_due = 0.0
            while chunk := await reader.read(CHUNK):
                faults = self._faults
                delay = faults.latency_s
                if faults.jitter_s:
                    delay += self._rng.uniform(0.0, faults.jitter_s)
                last_due = max(last_due, loop.time() + delay) if delay else last_due
                await line.put((last_due, chunk))
            await line.put(None)

        feeder = asyncio.create_task(read_side())
        getter: asyncio.Future[tuple[float, bytes] | None] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(line.get())
                await asyncio.wait({getter, feeder}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    failure = feeder.exception()
                    if failure is not None:  # the reader failed (reset by the peer, ...)
                        raise failure
                    await getter  # the feeder ended after queueing its EOF mark
                item = getter.result()
                if item is None:
                    break
                due, chunk = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._send(chunk, writer, link, up=up)
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (OSError, RuntimeError, _Reset):
            writer.transport.abort()
            raise
        finally:
            if getter is not None:
                getter.cancel()
            feeder.cancel()
            await asyncio.wait([feeder])
            if not feeder.cancelled():
                feeder.exception()  # retrieved (it was raised above, or there was none)

    async def _send(
        self, chunk: bytes, writer: asyncio.StreamWriter, link: _Link, *, up: bool
    ) -> None:
        """Write one chunk under the current faults; raises :class:`_Reset` (after writing the
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
            self._writes += 1
            link.counted[direction] += len(part)
            if up:
                self._bytes_up += len(part)
            else:
                self._bytes_down += len(part)
            if faults.slice_bytes is not None:
                await asyncio.sleep(faults.slice_pause_s)
        if reset_now:
            self._resets += 1
            link.abort()
            raise _Reset(f"reset after {limit} bytes ({faults.reset_direction})")
