"""Whether and how to reconnect after a close code (``docs/protocol.md`` §12)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Reconnect after a backoff delay and resume with the stored cursors.

    ``reset_backoff``: the gateway restarts or goes away on purpose (1001, 1012), or the token
    expired (4003: the token source gives a fresh one); start the backoff again from its first,
    short delay. ``only_when_needed``: reconnect only when there
    is something to subscribe to or publish (4000 idle, 1000 normal).
    """

    code: int | None
    reset_backoff: bool = False
    only_when_needed: bool = False


@dataclass(frozen=True, slots=True)
class DontReconnect:
    """Do not loop: the close says the client is at fault. Report it and fix the client.

    ``retry_after_s``: the shortest delay after which a reconnect may be tried at all (1008).
    """

    code: int | None
    reason: str
    retry_after_s: float | None = None


ReconnectPolicy: TypeAlias = Reconnect | DontReconnect


def reconnect_policy(code: int | None) -> ReconnectPolicy:
    """What to do after the connection closed with ``code`` (``docs/protocol.md`` §12).

    ``None`` stands for no close code at all (a dropped connection, 1006, or a refused or
    failed handshake): reconnect with backoff. Unknown codes also reconnect with backoff.
    """
    match code:
        case 1007:
            return DontReconnect(code, "a text frame was not UTF-8: client bug")
        case 1008:
            return DontReconnect(code, "too many refused frames: client bug", retry_after_s=300.0)
        case 1009:
            return DontReconnect(code, "a client frame was over the size limit: send smaller")
        case 1001 | 1012 | 4003:  # going away, restarting, token expired (a fresh one next)
            return Reconnect(code, reset_backoff=True)
        case 1000 | 4000:
            return Reconnect(code, only_when_needed=True)
        case _:
            return Reconnect(code)


def handshake_policy(status: int, retry_after_s: float | None) -> ReconnectPolicy | float:
    """What to do after the gateway refused the handshake with HTTP ``status``
    (``docs/protocol.md`` §3.1.1): a policy, or the delay before trying again (429)."""
    if status == 403:
        return DontReconnect(None, "the gateway forbids this token or origin (403)")
    if status == 429:
        return retry_after_s if retry_after_s is not None else 1.0
    return Reconnect(None)  # 401: the token source is asked again; 5xx: backoff
