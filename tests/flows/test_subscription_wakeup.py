"""The subscription's wake-up (what ``asyncio.Event`` did for its pump and its replay, without
the flag and the deque): it wakes the wait in progress, only that one; a second concurrent
waiter is refused; a waiter cancelled while another starts never takes the new one's place."""

from __future__ import annotations

import asyncio

import pytest

from gateway.flows.subscription import _Wakeup


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_set_wakes_the_wait_in_progress_only() -> None:
    wakeup = _Wakeup()
    wakeup.set()  # nobody waits: nothing is remembered
    waiting = asyncio.create_task(wakeup.wait())
    await settle()
    assert not waiting.done()
    wakeup.set()
    async with asyncio.timeout(5):
        await waiting
    again = asyncio.create_task(wakeup.wait())  # the wait before does not release this one
    await settle()
    assert not again.done()
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


async def test_a_second_waiter_is_refused() -> None:
    wakeup = _Wakeup()
    first = asyncio.create_task(wakeup.wait())
    await settle()
    with pytest.raises(RuntimeError, match="second task"):
        await wakeup.wait()
    wakeup.set()
    async with asyncio.timeout(5):
        await first


async def test_a_cancelled_waiter_never_hides_the_next_one() -> None:
    wakeup = _Wakeup()
    first = asyncio.create_task(wakeup.wait())
    await settle()
    first.cancel()  # its future is cancelled now, its ``finally`` runs later
    second = wakeup.wait()  # stepped by hand: it waits before that ``finally`` runs
    future = second.send(None)
    await settle()
    assert first.cancelled()
    wakeup.set()
    assert future.done()  # else the second waiter would never wake
    with pytest.raises(StopIteration):
        second.send(None)
