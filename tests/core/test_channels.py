import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.channels import (
    DEFAULT_CHANNEL_RULES,
    ChannelMapper,
    ChannelRule,
    parse_channel_rules,
    valid_channel,
)
from gateway.errors import ConfigError


def envelope(payload: object, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
        "event_type": "Inventory.Updated",
        "event_version": 1,
        "event_time": "2026-11-21T10:00:00Z",
        "source": "store-7-scanner",
        "key": "s-7",
        "payload": payload,
    }
    return {**base, **fields}


def value(payload: object, **fields: object) -> bytes:
    return json.dumps(envelope(payload, **fields)).encode()


MAPPER = ChannelMapper()


# -- the default rules ----------------------------------------------------------------------


def test_defaults() -> None:
    assert MAPPER.rules == DEFAULT_CHANNEL_RULES
    assert MAPPER.topics == {"inventory.events", "order.events"}
    assert MAPPER.channels_for("inventory.events", value({"storeId": "s-7", "sku": "M"})) == [
        "inventory:s-7"
    ]
    order = {"orderId": "o-9001", "userId": "u-1001", "storeId": "s-7"}
    assert MAPPER.channels_for("order.events", value(order, event_type="Order.Placed")) == [
        "orders:u-1001"
    ]


def test_topic_without_rules_has_no_channels() -> None:
    assert MAPPER.channels_for("payment.events", value({"userId": "u-1"})) == []
    assert MAPPER.channels_for_envelope("payment.events", envelope({"userId": "u-1"})) == []


def test_missing_field_gives_no_channel() -> None:
    assert MAPPER.channels_for("inventory.events", value({"sku": "M"})) == []
    assert MAPPER.channels_for("inventory.events", value(None)) == []
    assert MAPPER.channels_for("inventory.events", value([{"storeId": "s-7"}])) == []
    assert MAPPER.channels_for("inventory.events", value({"storeId": None})) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"a string"',
        b"null",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"payload": {"storeId": "s-7"}} trailing',
    ],
)
def test_invalid_json_gives_no_channels(raw: bytes) -> None:
    assert MAPPER.channels_for("inventory.events", raw) == []


def test_envelope_level_and_nested_placeholders() -> None:
    mapper = ChannelMapper(
        parse_channel_rules(
            "order.events=orders:{payload.userId}; order.events=stores:{payload.store.id};"
            "order.events=types:{event_type}, order.events=aggregates:o-{key}"
        )
    )
    record = value({"userId": "u-1", "store": {"id": 7}}, event_type="Order.Placed", key="o-9")
    assert mapper.channels_for("order.events", record) == [
        "orders:u-1",
        "stores:7",
        "types:Order.Placed",
        "aggregates:o-o-9",
    ]
    no_store = value({"userId": "u-1", "store": "s-7"}, event_type="Order.Placed", key="o:9")
    assert mapper.channels_for("order.events", no_store) == ["orders:u-1", "types:Order.Placed"]


def test_same_channel_from_two_rules_is_listed_once() -> None:
    mapper = ChannelMapper.from_config(
        ["inventory.events=inventory:{payload.storeId}", "inventory.events=inventory:{key}"]
    )
    assert mapper.channels_for("inventory.events", value({"storeId": "s-7"}, key="s-7")) == [
        "inventory:s-7"
    ]


def test_template_without_placeholders_is_a_broadcast_channel() -> None:
    mapper = ChannelMapper.from_config("catalog.events=catalog:all")
    assert mapper.channels_for("catalog.events", value({})) == ["catalog:all"]
    assert mapper.channels_for("catalog.events", b"not json") == []


# -- nasty values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "store_id",
    [
        "../x",
        "..",
        ".",
        "../../etc/passwd",
        "a/b",
        "a b",
        " s-7",
        "s-7 ",
        "s-7\n",
        "s-7\x00",
        "a:b",
        "inventory:s-7",
        "%2e%2e",
        "a?b",
        "a#b",
        "a*",
        "\u0455-7",  # Cyrillic dze, looks like s
        "s\u20117",  # non-breaking hyphen
        "\uff53-7",  # fullwidth s
        "s-\u0667",  # Arabic-Indic seven
        "s\u200b-7",  # zero-width space
        "caf\u00e9",
        "",
        "x" * 129,
        "-7",
        "_s",
        "~s",
        True,
        False,
        None,
        1.5,
        7.0,
        -7,
        10**200,
        [],
        ["s-7"],
        {"id": "s-7"},
    ],
)
def test_nasty_values_are_not_mapped(store_id: object) -> None:
    assert MAPPER.channels_for("inventory.events", value({"storeId": store_id})) == []


@pytest.mark.parametrize(
    ("store_id", "channel"),
    [
        ("s-7", "inventory:s-7"),
        ("S.7_a~b-c", "inventory:S.7_a~b-c"),
        (7, "inventory:7"),
        (0, "inventory:0"),
        ("x" * 128, "inventory:" + "x" * 128),
        ("1b4e28ba-2fa1-41d2-883f-0016d3cca427", "inventory:1b4e28ba-2fa1-41d2-883f-0016d3cca427"),
    ],
)
def test_plain_values_are_mapped(store_id: object, channel: str) -> None:
    assert MAPPER.channels_for("inventory.events", value({"storeId": store_id})) == [channel]


def test_long_value_with_literal_text_still_respects_the_length() -> None:
    mapper = ChannelMapper.from_config("t=stock:store-{payload.storeId}")
    assert mapper.channels_for("t", value({"storeId": "x" * 122})) == ["stock:store-" + "x" * 122]
    assert mapper.channels_for("t", value({"storeId": "x" * 123})) == []


def test_several_placeholders_cannot_collide() -> None:
    mapper = ChannelMapper.from_config("t=stock:{payload.storeId}.{payload.sku}")
    assert mapper.channels_for("t", value({"storeId": "s-7", "sku": "MILK-1L"})) == [
        "stock:s-7.MILK-1L"
    ]
    # ("a", "b.c") and ("a.b", "c") would both read "stock:a.b.c": neither is mapped
    assert mapper.channels_for("t", value({"storeId": "a", "sku": "b.c"})) == []
    assert mapper.channels_for("t", value({"storeId": "a.b", "sku": "c"})) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=140),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values, json_values, st.text(max_size=20))
def test_every_channel_produced_is_valid(store: object, sku: object, key: str) -> None:
    mapper = ChannelMapper.from_config(
        "t=inventory:{payload.storeId}, t=stock:{payload.storeId}.{payload.sku}, t=k:key-{key}"
    )
    for channel in mapper.channels_for("t", value({"storeId": store, "sku": sku}, key=key)):
        assert valid_channel(channel)
        assert mapper.topics_for(channel) == {"t"}


# -- channel names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["inventory:s-7", "orders:u-1001", "a:b", "x_y-z:A.b~c-d_0", "orders:" + "u" * 128],
)
def test_valid_channels(name: str) -> None:
    assert valid_channel(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "inventory",
        "inventory:",
        ":s-7",
        "Inventory:s-7",
        "1nventory:s-7",
        "inventory:s-7:x",
        "inventory:s 7",
        "inventory:../x",
        "inventory:..",
        "inventory:s-7\n",
        "inventory:\u0455-7",
        "inventory:" + "u" * 129,
        "i" * 65 + ":x",
        None,
        7,
        b"inventory:s-7",
    ],
)
def test_invalid_channels(name: object) -> None:
    assert not valid_channel(name)


def test_topics_for_a_channel() -> None:
    mapper = ChannelMapper.from_config(
        "order.events=orders:{payload.userId}, payment.events=orders:{payload.userId},"
        "inventory.events=inventory:{payload.storeId}, catalog.events=catalog:all"
    )
    assert mapper.topics_for("orders:u-1") == {"order.events", "payment.events"}
    assert mapper.topics_for("inventory:s-7") == {"inventory.events"}
    assert mapper.topics_for("catalog:all") == {"catalog.events"}
    assert mapper.topics_for("catalog:some") == frozenset()
    assert mapper.topics_for("users:u-1") == frozenset()
    assert mapper.topics_for("orders:../x") == frozenset()


# -- configuration --------------------------------------------------------------------------


def test_parse_rules() -> None:
    rules = parse_channel_rules(
        " inventory.events = inventory:{payload.storeId} ,\n"
        "order.events=orders:{payload.userId};;\n"
    )
    assert rules == (
        ChannelRule("inventory.events", "inventory:{payload.storeId}"),
        ChannelRule("order.events", "orders:{payload.userId}"),
    )
    assert rules[0].family == "inventory"
    assert parse_channel_rules("") == ()
    assert parse_channel_rules(" , ") == ()
    assert parse_channel_rules([]) == ()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("inventory.events", "expected topic=template"),
        ("inventory.events inventory:{payload.storeId}", "expected topic=template"),
        ("=inventory:{payload.storeId}", "invalid topic"),
        ("bad topic=inventory:{payload.storeId}", "invalid topic"),
        ("a/b=inventory:{payload.storeId}", "invalid topic"),
        ("t=", "family"),
        ("t=inventory", "family"),
        ("t=:{payload.storeId}", "family"),
        ("t=Inventory:{payload.storeId}", "family"),
        ("t=9nventory:{payload.storeId}", "family"),
        ("t=inv entory:{payload.storeId}", "family"),
        ("t=inventory:", "nothing after"),
        ("t=inventory:{payload.storeId", "unbalanced"),
        ("t=inventory:payload.storeId}", "unbalanced"),
        ("t=inventory:{{payload.storeId}}", "unbalanced"),
        ("t=inventory:{}", "invalid placeholder"),
        ("t=inventory:{payload..storeId}", "invalid placeholder"),
        ("t=inventory:{payload.store id}", "invalid placeholder"),
        ("t=inventory:{payload.store/id}", "invalid placeholder"),
        ("t=inventory:{a.b.c.d.e.f.g.h.i}", "invalid placeholder"),
        ("t=inventory:{payload.storeId}{payload.sku}", "separated"),
        ("t=inventory:-{payload.storeId}", "must start with"),
        ("t=inventory:.{payload.storeId}", "must start with"),
        ("t=inventory:a b{payload.storeId}", "outside"),
        ("t=inventory:{payload.storeId}/x", "outside"),
        ("t=inventory:{payload.storeId}:x", "outside"),
        ("t=inventory:\u0455{payload.storeId}", "outside"),
        ("t=inventory:" + "x" * 128 + "{payload.storeId}", "over 128"),
        ("t=inventory:" + "x" * 129, "over 128"),
        ("t=inventory:a, t=inventory:a", "given twice"),
    ],
)
def test_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_channel_rules(spec)


def test_rule_constructor_validates() -> None:
    with pytest.raises(ConfigError):
        ChannelRule("inventory.events", "inventory:{payload.storeId")
    with pytest.raises(ConfigError):
        ChannelMapper([ChannelRule("t", "x:{a}"), ChannelRule("t", "x:{b}{c}")])
