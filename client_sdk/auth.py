"""Bearer tokens for the gateway (``docs/protocol.md`` §3.1.1).

A :data:`TokenSource` is a token string, or a function (plain or async) that returns the current
one. The SDK asks a function again before every HTTP request and every websocket connection, so
an app that refreshes its tokens only has to hand over the function: after a 401 or a stream
closed with 4003 (token expired), the next attempt carries whatever the function returns then.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeAlias

TokenSource: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]]


async def bearer_headers(source: TokenSource | None) -> dict[str, str]:
    """``{"authorization": "Bearer <token>"}`` for the current token (none: ``{}``)."""
    if source is None:
        return {}
    token = source if isinstance(source, str) else source()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str) or not token:
        raise ValueError("the token source gave no token")
    return {"authorization": f"Bearer {token}"}
