"""How every HTTP endpoint answers a refusal: one translation from the error tree to a status,
headers and a ``{"error": {...}}`` body in the caller's media type."""

from __future__ import annotations

import math

from starlette.responses import Response

from gateway.core.codec import MediaType, encode
from gateway.errors import (
    AuthError,
    GatewayError,
    InFlightElsewhere,
    RateLimited,
    RequestError,
    StoreError,
)

REALM = "sync-gateway"


def error_response(exc: GatewayError, media: MediaType, *, retry_after_s: int) -> Response:
    """Translate a gateway error into its HTTP answer. Unknown errors answer 500.

    ``retry_after_s`` is the ``Retry-After`` of a retriable store refusal (503).
    """
    headers: dict[str, str] = {}
    error: dict[str, object] = {}
    if isinstance(exc, AuthError):
        status, code = exc.status, exc.code
        error["reason"] = exc.reason
        if exc.status == 401:
            # RFC 6750 section 3: no error attribute when the request carried no token
            attrs = "" if exc.reason == "missing_token" else ', error="invalid_token"'
            headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"{attrs}'
    elif isinstance(exc, RequestError):
        status, code = exc.status, exc.code
        if isinstance(exc, RateLimited | InFlightElsewhere):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    elif isinstance(exc, StoreError) and exc.retriable:
        status, code = 503, "store_unavailable"
        headers["Retry-After"] = str(retry_after_s)
    else:
        status, code = 500, "internal_error"
    body = {"error": {"code": code, "message": str(exc), "retriable": exc.retriable, **error}}
    return Response(encode(body, media), status, headers=headers, media_type=media.value)
