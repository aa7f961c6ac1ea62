"""The load generator's fault-injecting TCP proxy, in front of a tiny echo server."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from client_sdk.loadgen.proxy import FaultProxy, ProxyMode

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
