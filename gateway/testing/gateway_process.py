"""A gateway run as a real ``sync-gateway serve`` process, for tests that kill and restart it."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from gateway.testing.ports import ChildProcess, ServerProcess, free_port


class GatewayProcess(ServerProcess):
    """One gateway instance on 127.0.0.1; same port and data dir across restarts."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port if port is not None else free_port()
        self.settings = dict(settings or {})
        self._log_path = log_path if log_path is not None else data_dir / "gateway.log"
        self._proc: ChildProcess | None = None

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def environment(self) -> dict[str, str]:
        """The child's environment. Without ``jwt_algorithms`` in the settings the gateway runs
        with ``insecure_no_auth`` (tests of other concerns than authentication)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_GATEWAY_")}
        settings = dict(self.settings)
        if "jwt_algorithms" not in settings:
            settings.setdefault("insecure_no_auth", "true")
        env.update(
            {
                "SYNC_GATEWAY_HOST": "127.0.0.1",
                "SYNC_GATEWAY_PORT": str(self.port),
                "SYNC_GATEWAY_DATA_DIR": str(self.data_dir),
                **{f"SYNC_GATEWAY_{k.upper()}": v for k, v in settings.items()},
            }
        )
        return env

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = ChildProcess(
            [sys.executable, "-m", "gateway.cli", "serve"],
            log_path=self.log_path,
            cwd=self.data_dir,
            env=self.environment(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"gateway exited with {code}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"gateway not healthy after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self._proc is not None:
            self._proc.kill()

    def stop(self, timeout: float = 20.0) -> int | None:
        """Graceful stop (SIGTERM), as an orchestrator would do it."""
        return self.terminate(timeout) if self.is_running else None

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait for the graceful exit (SIGKILL after ``timeout``); the exit code."""
        return self._proc.stop(timeout) if self._proc is not None else None

    def sigterm(self) -> None:
        """Send SIGTERM and return at once (see :meth:`wait`)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code once the process exits, ``None`` if it still runs after ``timeout``."""
        return self._proc.wait(timeout) if self._proc is not None else None

    def restart(self, timeout: float = 30.0) -> None:
        self.kill()
        self.start(timeout)
