"""HTTP adapter of the ingest path: ``POST /v1/events`` (JSON or msgpack batches).

It only moves bytes: media type and size checks, decoding, then the ingest flow decides.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from gateway.adapters.http_auth import principal_of
from gateway.adapters.http_context import traceparent_of
from gateway.adapters.http_errors import error_response
from gateway.core.codec import MediaType, decode, encode, media_type_of, preferred_media_type
from gateway.core.ingest import Status
from gateway.errors import BodyTimeout, BodyTooLarge, GatewayError, MalformedBody
from gateway.flows.ingest import IngestFlow


class IngestEndpoint:
    """ASGI endpoint for ``POST /v1/events``."""

    def __init__(
        self,
        flow: IngestFlow,
        *,
        max_body_bytes: int,
        retry_after_s: int,
        body_timeout_s: float = 30.0,
    ) -> None:
        self._flow = flow
        self._max_body_bytes = max_body_bytes
        self._retry_after_s = retry_after_s
        self._body_timeout_s = body_timeout_s

    async def handle(self, request: Request) -> Response:
        accept = request.headers.get("accept")
        answer_media = preferred_media_type(accept, MediaType.JSON)  # until the body's is known
        try:
            principal = principal_of(request.scope)
            media = media_type_of(request.headers.get("content-type"))
            answer_media = preferred_media_type(accept, media)
            raw = await read_body(request, self._max_body_bytes, self._body_timeout_s)
            body = decode(raw, media)
            results = await self._flow.ingest(body, principal, traceparent_of(request.scope))
        except GatewayError as exc:
            return error_response(exc, answer_media, retry_after_s=self._retry_after_s)
        counts = {status.value: 0 for status in Status}
        for result in results:
            counts[result.status.value] += 1
        answer = {"results": [result.to_dict() for result in results], **counts}
        return Response(encode(answer, answer_media), 200, media_type=answer_media.value)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` and with
    408 when it has not all arrived within ``timeout_s`` (a slow-body attack)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedBody("Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge(f"body of {declared} bytes; limit {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {timeout_s:g}s") from None
    return b"".join(chunks)
