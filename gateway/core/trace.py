"""Request context: W3C trace context and correlation ids (sans-I/O).

A request may carry ``traceparent`` (W3C Trace Context, level 1) and ``X-Correlation-Id``.
The gateway keeps a valid ``traceparent`` with each event it stores and forwards it as a Kafka
header, so a trace continues from the device's request into every consumer; and it logs every
line of a request with one correlation id: the client's, else the trace id, else a new one.
Malformed values are ignored (never an error: they are diagnostics, not data).
"""

from __future__ import annotations

import re
import uuid
from typing import Final

_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_CORRELATION_ID: Final = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def parse_traceparent(value: str | None) -> str | None:
    """``value`` if it is a valid version-00 ``traceparent`` (lowercase hex, ids not all zero),
    else ``None``."""
    if value is None:
        return None
    value = value.strip()
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        return None
    return value


def correlation_id(header: str | None, traceparent: str | None) -> str:
    """The correlation id of a request: a well-formed ``X-Correlation-Id``, else the trace id of
    a valid ``traceparent``, else a new random id."""
    if header is not None and _CORRELATION_ID.fullmatch(header.strip()):
        return header.strip()
    if traceparent is not None:
        return traceparent[3:35]
    return uuid.uuid4().hex
