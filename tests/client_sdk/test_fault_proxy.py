"""The load generator's fault-injecting TCP proxy, in front of a tiny echo server."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from client_sdk.loadgen.proxy import FaultProxy, Faults, ProxyMode

pytestmark = pytest.mark.integration  # real loopback sockets

STEP_S = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def make_proxy(port: int, mode: ProxyMode = "refuse", latency: float = 0.0) -> FaultProxy:
    proxy = FaultProxy("127.0.0.1", port, mode=mode, latency_s=latency)
    await proxy.start()
    return proxy


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), STEP_S)


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), STEP_S)


async def closed_by_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """True when the connection is dead: reads EOF or a reset (within STEP_S)."""
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(10), STEP_S) == b""
    except OSError:
        return True
    finally:
        writer.close()


async def test_bytes_pass_both_ways_and_are_counted(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    try:
        reader, writer = await connect(proxy.port)
        big = bytes(range(256)) * 4096  # 1 MiB: several chunks, back-pressure
        assert await roundtrip(reader, writer, b"hello") == b"hello"
        assert await roundtrip(reader, writer, big) == big
        writer.close()
        await writer.wait_closed()
        stats = proxy.stats()
        assert stats.connections == 1
        assert stats.bytes_up == stats.bytes_down == len(big) + 5
    finally:
        await proxy.stop()
    assert proxy.stats().active == 0


async def test_cut_drops_live_connections_refuses_new_and_restore_accepts(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    try:
        conns = [await connect(proxy.port) for _ in range(5)]
        for reader, writer in conns:
            assert await roundtrip(reader, writer, b"x") == b"x"
        proxy.cut()
        assert not proxy.is_up
        for reader, writer in conns:
            assert await closed_by_proxy(reader, writer)
        reader, writer = await connect(proxy.port)  # accepted by the kernel, then reset
        assert await closed_by_proxy(reader, writer)
        stats = proxy.stats()
        assert (stats.cuts, stats.dropped, stats.refused) == (1, 5, 1)
        proxy.restore()
        reader, writer = await connect(proxy.port)
        assert await roundtrip(reader, writer, b"again") == b"again"
        writer.close()
    finally:
        await proxy.stop()


async def test_blackhole_holds_new_connections_until_restore(echo_port: int) -> None:
    proxy = await make_proxy(echo_port, mode="blackhole")
    try:
        proxy.cut()
        reader, writer = await connect(proxy.port)
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(10), 0.3)  # nothing comes back, no reset
        assert proxy.stats().active == 1
        proxy.restore()
        assert await closed_by_proxy(reader, writer)
        reader, writer = await connect(proxy.port)
        assert await roundtrip(reader, writer, b"up") == b"up"
        writer.close()
    finally:
        await proxy.stop()


async def test_latency_delays_each_direction(echo_port: int) -> None:
    proxy = await make_proxy(echo_port, latency=0.1)
    try:
        reader, writer = await connect(proxy.port)
        started = time.monotonic()
        assert await roundtrip(reader, writer, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.19
        writer.close()
    finally:
        await proxy.stop()


async def test_pattern_alternates_and_ends_up(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    loop = asyncio.get_running_loop()
    try:
        states: list[bool] = []
        pattern = asyncio.create_task(
            proxy.run_pattern(0.1, 0.05, random.Random(7), loop.time() + 1.0)
        )
        while not pattern.done():
            states.append(proxy.is_up)
            await asyncio.sleep(0.01)
        await pattern
        assert proxy.is_up
        assert proxy.stats().cuts >= 3
        assert False in states
        assert True in states
    finally:
        await proxy.stop()


async def test_stop_ends_open_connections(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    reader, writer = await connect(proxy.port)
    assert await roundtrip(reader, writer, b"x") == b"x"
    await asyncio.wait_for(proxy.stop(), STEP_S)
    assert await closed_by_proxy(reader, writer)
    assert proxy.stats().active == 0


# -- degraded links ------------------------------------------------------------------------------


@dataclass
class Sink:
    """A server that reads and counts what each connection sends (and answers nothing)."""

    received: list[int] = field(default_factory=list)
    """Bytes received per connection, in accept order."""
    reads: list[int] = field(default_factory=list)
    """Non-empty reads per connection."""
    ended: list[asyncio.Event] = field(default_factory=list)
    """Set when a connection ends (EOF or reset)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(0)
        self.reads.append(0)
        self.ended.append(asyncio.Event())
        try:
            while data := await reader.read(65536):
                self.received[index] += len(data)
                self.reads[index] += 1
        except OSError:
            pass
        finally:
            self.ended[index].set()
            writer.close()


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, int]]:
    state = Sink()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    try:
        yield state, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def timed_echo(port: int, data: bytes) -> float:
    """Seconds for ``data`` to go through an echo server behind ``port`` and back."""
    reader, writer = await connect(port)
    try:
        started = time.monotonic()
        echoed = await asyncio.gather(
            _write_all(writer, data), asyncio.wait_for(reader.readexactly(len(data)), 30)
        )
        assert echoed[1] == data
        return time.monotonic() - started
    finally:
        writer.close()


async def _write_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def send_until_dead(port: int, data: bytes) -> bool:
    """Write ``data`` in 4 KiB pieces; True when the connection was reset on the way."""
    reader, writer = await connect(port)
    try:
        for start in range(0, len(data), 4096):
            writer.write(data[start : start + 4096])
            await writer.drain()
            await asyncio.sleep(0)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(1), STEP_S) != b""
    except OSError:
        return True
    finally:
        writer.close()


async def test_bandwidth_cap_paces_a_transfer(echo_port: int) -> None:
    size, rate = 512 * 1024, 1024 * 1024  # 0.5 s at the cap (each direction, pipelined)
    proxy = await make_proxy(echo_port)
    try:
        free = await timed_echo(proxy.port, bytes(size))
        proxy.degrade(bandwidth_bps=rate)
        capped = await timed_echo(proxy.port, bytes(size))
        burst = 64 * 1024
        assert capped >= 0.8 * (size - burst) / rate, (free, capped)
        assert capped >= 3 * free, (free, capped)
        proxy.heal()
        healed = await timed_echo(proxy.port, bytes(size))
        assert healed * 3 <= capped, (healed, capped)
    finally:
        await proxy.stop()


async def test_bandwidth_cap_is_shared_by_connections(echo_port: int) -> None:
    size, rate = 256 * 1024, 1024 * 1024
    proxy = await make_proxy(echo_port)
    proxy.degrade(bandwidth_bps=rate)
    try:
        one = await timed_echo(proxy.port, bytes(size))
        started = time.monotonic()
        await asyncio.gather(*(timed_echo(proxy.port, bytes(size)) for _ in range(3)))
        three = time.monotonic() - started
        assert three >= 2 * one, (one, three)  # ~3x: the link, not each connection, is capped
    finally:
        await proxy.stop()


async def test_reset_after_n_bytes_cuts_every_connection_at_n(sink: tuple[Sink, int]) -> None:
    state, port = sink
    proxy = await make_proxy(port)
    proxy.degrade(reset_after_bytes=10_000, reset_direction="up")
    try:
        for _ in range(2):
            assert await send_until_dead(proxy.port, bytes(100_000))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in state.ended)), STEP_S)
        assert state.received == [10_000, 10_000]
        assert proxy.stats().resets == 2
        proxy.heal()
        assert not await send_until_dead(proxy.port, bytes(100_000))
        await asyncio.wait_for(state.ended[2].wait(), STEP_S)
        assert state.received[2] == 100_000
    finally:
        await proxy.stop()


async def test_reset_once_cuts_only_the_first_connection(sink: tuple[Sink, int]) -> None:
    state, port = sink
    proxy = await make_proxy(port)
    proxy.degrade(reset_after_bytes=5_000, reset_direction="both", reset_once=True)
    try:
        assert await send_until_dead(proxy.port, bytes(50_000))
        assert not await send_until_dead(proxy.port, bytes(50_000))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in state.ended)), STEP_S)
        assert state.received == [5_000, 50_000]
        proxy.degrade(reset_after_bytes=5_000)  # setting the faults again re-arms it
        assert await send_until_dead(proxy.port, bytes(50_000))
        assert proxy.stats().resets == 2
    finally:
        await proxy.stop()


async def test_reset_after_n_bytes_downstream_only(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    proxy.degrade(reset_after_bytes=3_000, reset_direction="down")
    try:
        reader, writer = await connect(proxy.port)
        writer.write(bytes(20_000))
        await writer.drain()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(20_000), STEP_S)
        stats = proxy.stats()
        assert stats.bytes_down == 3_000
        assert stats.bytes_up == 20_000  # the upstream direction was not limited
        writer.close()
    finally:
        await proxy.stop()


async def test_reset_after_n_bytes_delivers_exactly_n_down(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    proxy.degrade(reset_after_bytes=3_000, reset_direction="down")
    try:
        reader, writer = await connect(proxy.port)
        writer.write(bytes(range(256)) * 40)
        await writer.drain()
        got = bytearray()
        try:
            while data := await asyncio.wait_for(reader.read(65536), STEP_S):
                got += data
        except ConnectionError:
            pass
        assert bytes(got) == (bytes(range(256)) * 40)[:3_000]
        writer.close()
    finally:
        await proxy.stop()


async def test_slicing_delivers_the_same_bytes_in_many_reads(
    echo_port: int, sink: tuple[Sink, int]
) -> None:
    state, port = sink
    data = bytes(random.Random(3).randbytes(20_000))
    proxy = await make_proxy(port)
    try:
        assert not await send_until_dead(proxy.port, data)  # not sliced: a few reads
        proxy.degrade(slice_bytes=7)
        writes_before = proxy.stats().writes
        assert not await send_until_dead(proxy.port, data)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in state.ended)), STEP_S)
        assert state.received == [20_000, 20_000]
        assert proxy.stats().writes - writes_before >= 20_000 // 7
        assert state.reads[1] >= 200, state.reads
        assert state.reads[1] >= 10 * state.reads[0], state.reads
    finally:
        await proxy.stop()
    echo_proxy = await make_proxy(echo_port)
    echo_proxy.degrade(slice_bytes=5)
    try:
        reader, writer = await connect(echo_proxy.port)
        assert await roundtrip(reader, writer, data[:3000]) == data[:3000]  # same bytes, in order
        writer.close()
    finally:
        await echo_proxy.stop()


async def ping_times(port: int, count: int) -> list[float]:
    reader, writer = await connect(port)
    times = []
    try:
        for i in range(count):
            started = time.monotonic()
            assert await roundtrip(reader, writer, bytes([i])) == bytes([i])
            times.append(time.monotonic() - started)
    finally:
        writer.close()
    return times


async def test_jitter_spreads_latencies(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port, faults=Faults(latency_s=0.01), rng=random.Random(5))
    await proxy.start()
    try:
        steady = await ping_times(proxy.port, 30)
        proxy.degrade(jitter_s=0.05)
        jittery = await ping_times(proxy.port, 30)
        assert min(steady) >= 0.019  # both directions delayed
        assert min(jittery) >= 0.019
        # two uniform draws in [0, 50 ms] per round trip: stdev ~20 ms
        assert statistics.stdev(jittery) >= 0.008, jittery
        assert statistics.stdev(jittery) >= 3 * statistics.stdev(steady), (steady, jittery)
        assert max(jittery) - min(jittery) >= 0.03
    finally:
        await proxy.stop()


async def test_latency_is_a_delay_line_not_a_throughput_cap(echo_port: int) -> None:
    proxy = await make_proxy(echo_port, latency=0.1)
    try:
        # 64 chunks pipelined: ~0.2 s round trip, not 64 x 0.2 s
        elapsed = await timed_echo(proxy.port, bytes(4 * 1024 * 1024))
        assert 0.19 <= elapsed < 3.0, elapsed
    finally:
        await proxy.stop()


async def test_degrade_applies_to_live_connections_and_heal_clears(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    try:
        reader, writer = await connect(proxy.port)
        fast = time.monotonic()
        assert await roundtrip(reader, writer, b"a") == b"a"
        fast = time.monotonic() - fast
        applied = proxy.degrade(latency_s=0.15, slice_bytes=1)
        assert applied == proxy.faults == Faults(latency_s=0.15, slice_bytes=1)
        assert not applied.healthy
        slow = time.monotonic()
        assert await roundtrip(reader, writer, b"bcd") == b"bcd"
        slow = time.monotonic() - slow
        proxy.heal()
        assert proxy.faults.healthy
        healed = time.monotonic()
        assert await roundtrip(reader, writer, b"e") == b"e"
        healed = time.monotonic() - healed
        assert slow >= 0.29, (fast, slow, healed)
        assert slow >= 5 * max(fast, healed), (fast, slow, healed)
        writer.close()
    finally:
        await proxy.stop()


async def test_stop_ends_throttled_transfers(echo_port: int) -> None:
    proxy = await make_proxy(echo_port)
    proxy.degrade(bandwidth_bps=1000, latency_s=0.5, slice_bytes=3)
    conns = [await connect(proxy.port) for _ in range(3)]
    for _, writer in conns:
        writer.write(bytes(200_000))  # would take minutes at the cap
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.wait_for(proxy.stop(), STEP_S)
    assert time.monotonic() - started < 2.0
    assert proxy.stats().active == 0
    for reader, writer in conns:
        assert await closed_by_proxy(reader, writer)


@pytest.mark.parametrize(
    "bad",
    [
        {"latency_s": -1.0},
        {"jitter_s": -0.1},
        {"bandwidth_bps": 0},
        {"reset_after_bytes": 0},
        {"slice_bytes": 0},
        {"reset_direction": "sideways"},
    ],
)
def test_faults_are_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Faults(**bad)  # type: ignore[arg-type]
