import msgpack
import pytest

from gateway.core.codec import MediaType, decode, encode, media_type_of, preferred_media_type
from gateway.errors import MalformedBody, UnsupportedMediaType


@pytest.mark.parametrize(
    ("header", "media"),
    [
        ("application/json", MediaType.JSON),
        ("application/json; charset=utf-8", MediaType.JSON),
        ("Application/MsgPack", MediaType.MSGPACK),
        ("application/x-msgpack", MediaType.MSGPACK),
    ],
)
def test_media_types(header: str, media: MediaType) -> None:
    assert media_type_of(header) is media


@pytest.mark.parametrize("header", [None, "", "text/plain", "application/xml"])
def test_unsupported_media_types(header: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        media_type_of(header)


def test_accept_picks_first_supported() -> None:
    assert preferred_media_type("text/html, application/msgpack", MediaType.JSON) is (
        MediaType.MSGPACK
    )
    assert preferred_media_type("*/*", MediaType.MSGPACK) is MediaType.MSGPACK
    assert preferred_media_type(None, MediaType.JSON) is MediaType.JSON


@pytest.mark.parametrize("media", list(MediaType))
def test_round_trip(media: MediaType) -> None:
    value = {"events": [{"a": 1, "b": "é", "c": [True, None, 1.5]}]}
    assert decode(encode(value, media), media) == value


@pytest.mark.parametrize(
    "data", [b"", b"{", b"NaN", b'{"a": Infinity}', b"\xff\xfe", b'{"a":1} trailing']
)
def test_bad_json(data: bytes) -> None:
    with pytest.raises(MalformedBody, match="not valid JSON"):
        decode(data, MediaType.JSON)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x92\x01", msgpack.packb({1: 2}), msgpack.packb([1]) + b"x"],
)
def test_bad_msgpack(data: bytes) -> None:
    with pytest.raises(MalformedBody, match="not valid msgpack"):
        decode(data, MediaType.MSGPACK)


@pytest.mark.parametrize("media", list(MediaType))
def test_absurdly_deep_nesting_is_malformed_not_a_crash(media: MediaType) -> None:
    deep: object = 1
    for _ in range(200_000 if media is MediaType.JSON else 2_000):
        deep = [deep]
    data = b"[" * 200_000 + b"]" * 200_000 if media is MediaType.JSON else None
    if data is None:
        data = b"\x91" * 200_000 + b"\x01"
    with pytest.raises(MalformedBody):
        decode(data, media)
