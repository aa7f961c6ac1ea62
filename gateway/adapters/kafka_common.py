"""What the aiokafka adapters share: closing clients safely and describing their errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, Final

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S: Final = 10.0


async def close_quietly(closing: Coroutine[Any, Any, object]) -> None:
    """Close an aiokafka client without hanging and without being cancelled by it.

    aiokafka's stop() can wait forever on a dead broker, and a hang in cleanup would outlive the
    caller's timeout. During an outage a consumer's stop() also awaits fetch tasks it has just
    cancelled and so raises their CancelledError, which would end the caller's task as if it had
    been cancelled: only a real cancellation of the caller goes on."""
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.debug("ignored a CancelledError raised by an aiokafka client's stop()")


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, for logs and the errors we raise from it."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
