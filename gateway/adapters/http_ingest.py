"""HTTP adapter of the ingest path: ``POST /v1/events`` (JSON or msgpack batches).

It only moves bytes: media type and size checks, decoding, then the ingest flow decides.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.core.codec import MediaType, decode, encode, media_type_of, preferred_media_type
from gateway.core.ingest import Status
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    MalformedBody,
    RequestError,
    StoreError,
)
from gateway.flows.ingest import IngestFlow


class IngestEndpoint:
    """ASGI endpoint for ``POST /v1/events``."""

    def __init__(self, flow: IngestFlow, *, max_body_bytes: int, retry_after_s: int) -> None:
        self._flow = flow
        self._max_body_bytes = max_body_bytes
        self._retry_after_s = retry_after_s

    async def handle(self, request: Request) -> Response:
        accept = request.headers.get("accept")
        answer_media = preferred_media_type(accept, MediaType.JSON)  # until the body's is known
        try:
            media = media_type_of(request.headers.get("content-type"))
            answer_media = preferred_media_type(accept, media)
            body = decode(await read_body(request, self._max_body_bytes), media)
            results = await self._flow.ingest(body)
        except GatewayError as exc:
            return error_response(exc, answer_media, retry_after_s=self._retry_after_s)
        counts = {status.value: 0 for status in Status}
        for result in results:
            counts[result.status.value] += 1
        answer = {"results": [result.to_dict() for result in results], **counts}
        return Response(encode(answer, answer_media), 200, media_type=answer_media.value)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedBody("Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge(f"body of {declared} bytes; limit {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(exc: GatewayError, media: MediaType, *, retry_after_s: int) -> Response:
    """Translate a gateway error into its HTTP answer. Unknown errors propagate as 500."""
    headers: dict[str, str] = {}
    if isinstance(exc, RequestError):
        status, code = exc.status, exc.code
    elif isinstance(exc, StoreError) and exc.retriable:
        status, code = 503, "store_unavailable"
        headers["Retry-After"] = str(retry_after_s)
    else:
        status, code = 500, "internal_error"
    body = {"error": {"code": code, "message": str(exc), "retriable": exc.retriable}}
    return Response(encode(body, media), status, headers=headers, media_type=media.value)
