"""The benchmark's processes: the open files limit, what /proc says of a process (RSS, CPU) and
of the machine, and the command pipe between the main process and its children (the client
workers, the baseline server): :func:`serve_commands` in a child, :class:`Child` in the
parent."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft limit of open files (children inherit it); the new soft
    limit. Root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft, hard = needed, needed
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(*pids: int) -> int:
    """Resident set size of processes, summed (Linux /proc); 0 for one that is gone."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time of processes, all their threads, summed (Linux /proc); 0 for one
    that is gone."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def machine_cpu() -> float:
    """CPU seconds spent by every process of the machine (Linux /proc/stat: all but idle and
    iowait), to tell what other work shared the cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class RssWatch:
    """Samples the RSS of processes (summed) every ``interval`` seconds; keeps the peak."""

    def __init__(self, *pids: int, interval: float = 0.2) -> None:
        self.pids, self.interval, self.peak = pids, interval, rss_bytes(*pids)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(*self.pids))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.peak = rss_bytes(*self.pids)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, rss_bytes(*self.pids))
        return self.peak


# -- the command pipe between the main process and its children ---------------------------------


async def receive(conn: Connection, wait_s: float) -> Any:
    """The next object on a pipe, without blocking the event loop (TimeoutError after
    ``wait_s``; EOFError if the other end is gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while not conn.poll():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError("no answer on the pipe")
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, ready)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await ready
        finally:
            loop.remove_reader(conn.fileno())
    # uvloop's add_reader leaves the descriptor non-blocking: a large message (a share of
    # 10k connections) would then fail half-read with EAGAIN; wait for its rest instead
    os.set_blocking(conn.fileno(), True)
    return conn.recv()


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def quiet_child() -> None:
    """In a child process: Ctrl-C is the parent's to handle (it stops the children)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


Handler = Callable[..., Coroutine[Any, Any, Any]]


async def serve_commands(conn: Connection, handlers: dict[str, Handler]) -> None:
    """A child's command loop: ``(name, kwargs)`` in, the handler's answer out, until "quit"
    or the parent is gone."""
    while True:
        try:
            name, kwargs = await receive(conn, 24 * 3600)
        except EOFError:
            return  # the parent is gone
        except (OSError, TimeoutError) as exc:
            print(f"child {os.getpid()}: command pipe failed: {exc!r}", flush=True)
            return
        if name == "quit":
            conn.send("bye")
            return
        try:
            answer = await handlers[name](**kwargs)
        except Exception as exc:  # report it; the parent decides
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(answer)


class Child:
    """The parent's handle on a child process that serves commands."""

    def __init__(self, target: Callable[..., None], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=target, args=(child_end, *args), daemon=True
        )
        self.process.start()
        child_end.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, name: str, **kwargs: object) -> None:
        self.conn.send((name, kwargs))

    async def answer(self, wait_s: float) -> Any:
        try:
            answer = await receive(self.conn, wait_s)
        except (EOFError, OSError) as exc:
            self.process.join(1)
            raise RuntimeError(
                f"child {self.pid} is gone (exit code {self.process.exitcode}): {exc!r}"
            ) from None
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"child {self.pid}: {answer['error']}")
        return answer

    async def call(self, name: str, wait_s: float, **kwargs: object) -> Any:
        self.send(name, **kwargs)
        return await self.answer(wait_s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("quit", {}))
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()
