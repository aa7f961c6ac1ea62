"""What the forwarder and the downstream consumer share: a background loop of *sessions* with
Kafka. A session runs until Kafka or the store fails; then the link is marked down, a capped,
jittered backoff passes, and a new session starts (with new clients). A housekeeping task runs
beside it. ``stop()`` cancels both and closes the Kafka side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import StrEnum
from typing import Any

from gateway.core.backoff import Backoff
from gateway.errors import KafkaError, KafkaUnavailable, StoreError

log = logging.getLogger(__name__)


class LinkState(StrEnum):
    STARTING = "starting"
    UP = "up"
    DOWN = "down"
    STOPPED = "stopped"


class SessionLoop:
    """Base of a flow whose work happens in sessions with Kafka."""

    name = "session"
    """Names the tasks and the log lines."""
    down_hint = ""
    """Appended to the warning when the link goes down: what still works meanwhile."""

    def __init__(self, bootstrap: str, backoff: Backoff) -> None:
        self.bootstrap = bootstrap
        self._backoff = backoff
        self.state = LinkState.STARTING
        self.last_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def _session(self) -> None:
        """One session: open the Kafka side and work until something fails."""
        raise NotImplementedError

    async def _housekeeping(self) -> None:
        """Periodic work beside the sessions (metrics, pruning); runs until cancelled."""
        raise NotImplementedError

    async def _close(self) -> None:
        """Close the Kafka side after the tasks have stopped."""
        raise NotImplementedError

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.run(), name=self.name),
            asyncio.create_task(self._housekeeping(), name=f"{self.name}-housekeeping"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._close()
        self.state = LinkState.STOPPED

    async def run(self) -> None:
        """Sessions until cancelled; a failed session is followed by a backoff."""
        while True:
            try:
                await self._session()
            except (KafkaError, StoreError) as exc:
                self._link_down(exc)
            except Exception as exc:  # a bug must not stop the flow for good
                log.exception("%s failed unexpectedly", self.name)
                self._link_down(exc)
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise
                # A library's stray CancelledError (nobody cancelled us): not the end.
                log.exception("%s ended by a stray CancelledError", self.name)
                self._link_down(KafkaUnavailable(f"session cancelled from inside: {exc!r}"))
            await asyncio.sleep(self._backoff.next_delay())

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "bootstrap": self.bootstrap,
            "last_error": self.last_error,
        }

    def _link_up(self, detail: str) -> None:
        """The session is open. (The backoff is reset by the flow on real progress: a link
        that opens and then fails at once must not retry in a tight loop.)"""
        if self.state is not LinkState.UP:
            log.info("%s: Kafka link up at %s; %s", self.name, self.bootstrap, detail)
        self.state = LinkState.UP
        self.last_error = None

    def _link_down(self, exc: Exception) -> None:
        self.last_error = str(exc)
        if self.state is not LinkState.DOWN:
            log.warning(
                "%s: Kafka unreachable at %s (%s)%s", self.name, self.bootstrap, exc, self.down_hint
            )
        else:
            log.info("%s: Kafka link still down: %s", self.name, exc)
        self.state = LinkState.DOWN
