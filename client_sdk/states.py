"""The link states the SDK reports to the app: the :class:`~client_sdk.uploader.Uploader`'s
:class:`ConnectionState` (each change a :class:`StateChange`) and the
:class:`~client_sdk.subscriber.Subscriber`'s :class:`StreamState` (each change a
:class:`StreamStateChange`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ConnectionState", "StateChange", "StreamState", "StreamStateChange"]


class ConnectionState(StrEnum):
    """How the uploader's link to the gateway is doing."""

    UNKNOWN = "unknown"
    """Nothing sent yet."""
    ONLINE = "online"
    """The last request was answered."""
    OFFLINE = "offline"
    """The last request failed (no connection, timeout, 5xx, 503); retrying with backoff."""
    CLOSED = "closed"
    """``close()`` was called."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """The connection state changed; ``error`` says why when it went offline."""

    state: ConnectionState
    previous: ConnectionState
    error: str | None = None


class StreamState(enum.Enum):
    """What the subscriber's connection is doing."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    LIVE = "live"
    """Every channel has caught up (received ``live``)."""
    DISCONNECTED = "disconnected"
    """The connection dropped; a reconnect follows after ``retry_in`` seconds."""
    CLOSED = "closed"
    """``run()`` ended: closed by the app, or refused by policy (``close_code``)."""


@dataclass(frozen=True, slots=True)
class StreamStateChange:
    """One connection state change, as given to ``on_state``."""

    state: StreamState
    close_code: int | None = None
    retry_in: float | None = None
    error: BaseException | None = None
