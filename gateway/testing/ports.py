"""Loopback ports, and server child processes that cannot outlive this interpreter.

`free_port` and `wait_for_port` are what the harness needs to place and await servers;
`ChildProcess` runs a server in its own session (so terminal signals and the test runner's
process group do not reach it) and makes sure it dies with us: an ``atexit`` hook kills it on
a normal interpreter exit, and a tiny watchdog process kills it when this interpreter dies in
any other way (SIGKILL, an unhandled SIGTERM, a crash), because then the watchdog's stdin pipe,
whose only writer is this interpreter, reaches end-of-file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free ports on 127.0.0.1 (all held open together while chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_bindable(port: int, host: str = LOOPBACK) -> bool:
    """Tell whether a server could listen on host:port now (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until host:port accepts a TCP connection; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if port_is_open(host, port, timeout=max(0.05, min(0.5, remaining))):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:g} s")
        time.sleep(0.05)


# Runs in a separate interpreter: block on stdin; end-of-file means the parent died without
# releasing us, so kill the server's process group. A byte on stdin means "released, just exit".
_WATCHDOG_SOURCE = """
import os, signal, sys
if not sys.stdin.buffer.read(1):
    try:
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
    except OSError:
        pass
"""

_LIVE_CHILDREN: set[ChildProcess] = set()


class ChildProcess:
    """A server process in a new session, killed at interpreter exit or when this process dies.

    stdin is /dev/null; stdout and stderr are appended to `log_path`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
            )
        self._watchdog: subprocess.Popen[bytes] | None = None
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG_SOURCE, str(self._proc.pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            self._signal_group(signal.SIGKILL)
            self._proc.wait()
            raise
        _LIVE_CHILDREN.add(self)

    @property
    def pid(self) -> int:
        """The server's process id (also its process-group and session id)."""
        return self._proc.pid

    def poll(self) -> int | None:
        """Return the exit code if the server has exited (reaping it), else None."""
        code = self._proc.poll()
        if code is not None:
            self._release()
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the server's process group, if it is still running."""
        self._signal_group(sig)

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP the server and wait until every one of its threads has stopped.

        kill() returns once the stop is queued; the kernel then stops the threads one by one,
        and on a busy machine a network thread can still answer a request meanwhile. So wait
        (Linux: /proc/<pid>/task/*/stat) until no thread is left running.
        """
        self._signal_group(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not self._all_threads_stopped():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"process {self.pid} did not stop within {timeout:g} s")
            time.sleep(0.005)

    def resume(self) -> None:
        """SIGCONT the server."""
        self._signal_group(signal.SIGCONT)

    def _all_threads_stopped(self) -> bool:
        tasks = Path(f"/proc/{self.pid}/task")
        if not tasks.is_dir():  # not Linux: trust the signal
            return True
        for stat in tasks.glob("*/stat"):
            try:
                fields = stat.read_text(encoding="ascii", errors="replace")
            except OSError:  # the thread has just exited
                continue
            # "pid (comm) S ...": the state follows the last ')' (comm may contain anything).
            state = fields.rpartition(")")[2].split()[:1]
            if state and state[0] not in ("T", "t", "Z", "X"):
                return False
        return True

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the server to exit; return its exit code or None."""
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._release()
        return code

    def stop(self, timeout: float) -> int:
        """SIGTERM (and SIGCONT, in case it is stopped); SIGKILL after `timeout` s. Exit code."""
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)
        code = self.wait(timeout)
        if code is None:
            return self.kill()
        return code

    def kill(self) -> int:
        """SIGKILL the server's process group and reap the server; return its exit code."""
        self._signal_group(signal.SIGKILL)
        code = self._proc.wait()
        self._release()
        return code

    def _signal_group(self, sig: signal.Signals) -> None:
        # Not yet reaped (returncode None) means the pid cannot have been reused.
        if self._proc.returncode is None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def _release(self) -> None:
        """Tell the watchdog the server is gone and let it exit; forget this child."""
        _LIVE_CHILDREN.discard(self)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        assert watchdog.stdin is not None
        with contextlib.suppress(OSError):
            watchdog.stdin.write(b"x")
            watchdog.stdin.flush()
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
        try:
            watchdog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


@atexit.register
def _kill_live_children() -> None:
    for child in list(_LIVE_CHILDREN):
        with contextlib.suppress(Exception):
            child.kill()


class ServerProcess:
    """What the harness's servers share: a log file, its tail, and use as a context manager
    (``with KafkaBroker(...) as broker:`` starts it and stops it at the end)."""

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def start(self, timeout: float) -> None:
        raise NotImplementedError

    def stop(self, timeout: float) -> object:
        raise NotImplementedError

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log ("" if there is none)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start(60.0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(30.0)
