"""A real, throw-away redis-server on loopback: no persistence, data lives in memory only."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis

from gateway.testing.ports import (
    LOOPBACK,
    ChildProcess,
    ServerProcess,
    free_port,
    port_is_bindable,
)


class RedisServer(ServerProcess):
    """One redis-server on 127.0.0.1, with `workdir` as its directory and redis.log as its log.

    Nothing is saved (`--save ""`, no AOF), so kill() + start() gives an empty server.
    The port is chosen at construction, so a restart keeps the URL.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        self.port = port if port is not None else free_port()
        self._child: ChildProcess | None = None

    @property
    def url(self) -> str:
        """The client URL, "redis://127.0.0.1:<port>/0"."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """redis-server's stdout and stderr."""
        return self.workdir / "redis.log"

    @property
    def is_running(self) -> bool:
        """Whether the redis-server process is alive."""
        return self._child is not None and self._child.poll() is None

    def client(self) -> redis.Redis:
        """A new synchronous client with short timeouts (close it, or use it as a context)."""
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            db=0,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server and wait until it answers PING; TimeoutError/RuntimeError if not."""
        if self.is_running:
            return
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "`redis-server` was not found on PATH "
                "(Debian/Ubuntu: apt-get install redis-server; `make` installs it)"
            )
        if not port_is_bindable(self.port):
            raise RuntimeError(f"port {LOOPBACK}:{self.port} is already in use")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._child = ChildProcess(
            [
                executable,
                "--bind",
                LOOPBACK,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
            ],
            log_path=self.log_path,
            cwd=self.workdir,
        )
        try:
            self._wait_ready(time.monotonic() + timeout, timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        child = self._child
        assert child is not None
        last_error = "no attempt made"
        while True:
            code = child.poll()
            if code is not None:
                raise RuntimeError(
                    f"redis-server exited during start-up (exit code {code}); "
                    f"tail of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"redis-server on {LOOPBACK}:{self.port} did not answer PING within "
                    f"{timeout:g} s ({last_error}); tail of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down (SIGTERM), SIGKILL after `timeout` seconds. No-op if not running."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(timeout)

    def kill(self) -> None:
        """SIGKILL redis-server (its data is gone: nothing is persisted)."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()

    def restart(self, timeout: float = 10.0) -> None:
        """stop() then start() on the same port (an empty server afterwards)."""
        self.stop()
        self.start(timeout)

    def flushall(self) -> None:
        """Delete every key in every database."""
        with self.client() as client:
            client.flushall()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"RedisServer({self.url}, {state}, workdir={self.workdir})"
