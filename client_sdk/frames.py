"""The frames of the stream protocol (``docs/protocol.md``) from the client's side: their
encoding per subprotocol, the checks on what a client frame may carry (``sub``/``req`` ids,
channel names), and the typed reading of server frame fields, which raises
:class:`ProtocolViolation` for anything malformed.

The :class:`~client_sdk.protocol.StreamSession` builds on these; they keep no state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import msgpack

from client_sdk.errors import LocalProtocolError, ProtocolViolation
from client_sdk.events import AckResult, Update

__all__ = [
    "SUBPROTOCOLS",
    "Encoding",
    "check_channel",
    "check_id",
    "decode_frame",
    "encode_frame",
    "optional_field",
    "parse_ack_result",
    "parse_update",
    "required_field",
]

Encoding: TypeAlias = Literal["json", "msgpack"]

SUBPROTOCOLS: Final[Mapping[str, str]] = {
    "json": "sync-gateway.v1.json",
    "msgpack": "sync-gateway.v1.msgpack",
}
"""The websocket subprotocol to offer (and to expect echoed) per encoding."""

_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_CHANNEL: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}:[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")


def encode_frame(encoding: Encoding, frame: dict[str, Any]) -> str | bytes:
    """One client frame in ``encoding``: ``str`` for JSON, ``bytes`` for msgpack."""
    if encoding == "json":
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def decode_frame(encoding: Encoding, data: str | bytes) -> dict[str, Any]:
    """One server frame (an object with a ``type``) from ``data`` in ``encoding``; raises
    :class:`ProtocolViolation` for anything else."""
    decoded: object
    if encoding == "json":
        if not isinstance(data, str):
            raise ProtocolViolation("binary frame on the JSON subprotocol")
        try:
            decoded = json.loads(data, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise ProtocolViolation(f"frame is not JSON: {exc}") from None
    else:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ProtocolViolation("text frame on the msgpack subprotocol")
        try:
            decoded = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProtocolViolation(f"frame is not msgpack: {type(exc).__name__}") from None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
        raise ProtocolViolation("a frame must be an object with a 'type'")
    return decoded


def check_id(name: str, value: object) -> None:
    """Raise :class:`LocalProtocolError` unless ``value`` is a valid ``sub`` or ``req`` id."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise LocalProtocolError(f"{name!r} must match [A-Za-z0-9._:-]{{1,64}}: {value!r}")


def check_channel(channel: object) -> None:
    """Raise :class:`LocalProtocolError` unless ``channel`` is a valid channel name."""
    if not isinstance(channel, str) or _CHANNEL.fullmatch(channel) is None:
        raise LocalProtocolError(f"invalid channel name {channel!r}")


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def required_field(frame: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    """``frame[name]``, which must be a ``kind`` (not a bool for ``int``); else
    :class:`ProtocolViolation`."""
    value = frame.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolViolation(
            f"{frame.get('type')!r} frame: {name!r} must be {kind.__name__}, got {value!r:.80}"
        )
    return value


def optional_field(frame: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    """``frame[name]`` as :func:`required_field`, or ``None`` when absent or null."""
    return None if frame.get(name) is None else required_field(frame, name, kind)


def parse_update(sub: str, channel: str, item: object) -> Update:
    """One update of an ``events`` frame of subscription ``sub`` on ``channel``."""
    if not isinstance(item, dict):
        raise ProtocolViolation(f"an update must be an object, got {item!r:.80}")
    data = item.get("data")
    if data is not None and not isinstance(data, dict):
        raise ProtocolViolation("an update's 'data' must be an object or null")
    if "data" not in item or "key" not in item:
        raise ProtocolViolation("an update has 'key' and 'data' (maybe null)")
    return Update(
        sub=sub,
        channel=channel,
        topic=required_field(item, "topic", str),
        partition=required_field(item, "partition", int),
        offset=required_field(item, "offset", int),
        key=optional_field(item, "key", str),
        timestamp=required_field(item, "timestamp", int),
        data=data,
        cursor=required_field(item, "cursor", str),
    )


def parse_ack_result(item: object) -> AckResult:
    """One per-event result of an ``ack`` frame."""
    if not isinstance(item, dict):
        raise ProtocolViolation(f"an ack result must be an object, got {item!r:.80}")
    return AckResult(
        index=required_field(item, "index", int),
        status=required_field(item, "status", str),
        event_id=optional_field(item, "event_id", str),
        error=optional_field(item, "error", dict),
    )
