"""Wire encodings of bodies and frames: JSON and msgpack, chosen by media type.

Decoding never trusts the input: bad bytes raise :class:`~gateway.errors.MalformedBody`, an
unknown media type raises :class:`~gateway.errors.UnsupportedMediaType`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import NoReturn

import msgpack

from gateway.errors import MalformedBody, UnsupportedMediaType


class MediaType(StrEnum):
    JSON = "application/json"
    MSGPACK = "application/msgpack"


_ALIASES = {
    "application/json": MediaType.JSON,
    "application/msgpack": MediaType.MSGPACK,
    "application/x-msgpack": MediaType.MSGPACK,
    "application/vnd.msgpack": MediaType.MSGPACK,
}


def media_type_of(content_type: str | None) -> MediaType:
    """The media type named by a Content-Type header (parameters such as charset ignored)."""
    if not content_type:
        raise UnsupportedMediaType("Content-Type is required: application/json or msgpack")
    essence = content_type.split(";", 1)[0].strip().lower()
    try:
        return _ALIASES[essence]
    except KeyError:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {essence!r}; use application/json or application/msgpack"
        ) from None


def preferred_media_type(accept: str | None, default: MediaType) -> MediaType:
    """The answer's media type: the first supported one the Accept header names, else default."""
    if accept:
        for part in accept.split(","):
            media = _ALIASES.get(part.split(";", 1)[0].strip().lower())
            if media is not None:
                return media
    return default


def refuse_json_constant(name: str) -> NoReturn:
    """``parse_constant`` for ``json.loads``: NaN and Infinity are not JSON (Python accepts
    them); refusing them keeps every value the gateway passes on, or embeds, standard JSON."""
    raise ValueError(f"{name} is not valid JSON")


def decode(data: bytes, media: MediaType) -> object:
    if media is MediaType.JSON:
        try:
            return json.loads(data, parse_constant=refuse_json_constant)
        except (ValueError, RecursionError) as exc:
            raise MalformedBody(f"body is not valid JSON: {exc}") from None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise MalformedBody(f"body is not valid msgpack: {detail}") from None


def encode(value: object, media: MediaType) -> bytes:
    if media is MediaType.JSON:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed
