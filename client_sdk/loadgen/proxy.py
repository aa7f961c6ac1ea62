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

from client_sdk.loadgen.shaping import CHUNK, Faults, Link, LinkReset, Shaper

__all__ = ["FaultProxy", "Faults", "ProxyMode", "ProxyStats"]

log = logging.getLogger(__name__)

ProxyMode = Literal["refuse", "blackhole"]
QUEUE_CHUNKS: Final = 16
"""Chunks a direction's delay line holds at most (then the proxy stops reading)."""
CONNECT_TIMEOUT_S: Final = 5.0


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
        self._shaper = Shaper(rng if rng is not None else random.Random())
        self.faults = faults if faults is not None else Faults(latency_s=latency_s)
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[Link] = set()
        self._held: set[Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._up = True
        self._connections = self._refused = self._cuts = self._dropped = 0

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
        return self._shaper.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._shaper.faults = faults

    def degrade(self, faults: Faults | None = None, **changes: object) -> Faults:
        """Set the faults: ``faults`` as given, or the current ones with ``changes`` (field
        names of :class:`Faults`, e.g. ``degrade(latency_s=0.05, slice_bytes=7)``). Returns
        the faults now applied."""
        base = faults if faults is not None else self._shaper.faults
        new = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        self.faults = new
        return new

    def heal(self) -> None:
        """Clear every fault set by :meth:`degrade` (not a cut: see :meth:`restore`)."""
        self.faults = Faults()

    @property
    def latency_s(self) -> float:
        """Shorthand for ``faults.latency_s`` (settable)."""
        return self._shaper.faults.latency_s

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
            bytes_up=self._shaper.bytes_up,
            bytes_down=self._shaper.bytes_down,
            resets=self._shaper.resets,
            writes=self._shaper.writes,
        )

    # -- relaying -------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        link = Link(writer)
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
        except (OSError, TimeoutError, asyncio.IncompleteReadError, LinkReset) as exc:
            log.debug("proxied connection ended: %r", exc)
        finally:
            link.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _relay(self, link: Link, client_reader: asyncio.StreamReader) -> None:
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
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link, *, up: bool
    ) -> None:
        """Copy one direction until EOF (then half-close) or an error (then abort both).

        A reader task feeds a bounded delay line of ``(due time, chunk)``; this task writes
        each chunk when it is due, shaped by the faults."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)

        async def read_side() -> None:
            last_due = 0.0
            while chunk := await reader.read(CHUNK):
                delay = self._shaper.delay()
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
                await self._shaper.send(chunk, writer, link, up=up)
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (OSError, RuntimeError, LinkReset):
            writer.transport.abort()
            raise
        finally:
            if getter is not None:
                getter.cancel()
            feeder.cancel()
            await asyncio.wait([feeder])
            if not feeder.cancelled():
                feeder.exception()  # retrieved (it was raised above, or there was none)
