import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.core.authz import AuthError, Forbidden, Principal, Unauthorized
from gateway.core.channels import valid_channel
from gateway.errors import GatewayError


def principal(
    sub: str = "u-42",
    channels: list[str] | None = None,
    publish: list[str] | None = None,
    **claims: object,
) -> Principal:
    return Principal.from_claims(
        {
            "sub": sub,
            "channels": ["orders:{sub}", "inventory:*"] if channels is None else channels,
            "publish": ["Order.*"] if publish is None else publish,
            **claims,
        }
    )


# --- from_claims -----------------------------------------------------------------------------


def test_from_claims_keeps_the_claims() -> None:
    p = Principal.from_claims(
        {
            "sub": "u-42",
            "tenant": "acme",
            "channels": ["orders:{sub}", "inventory:*", "orders:{sub}"],
            "publish": ["Order.*", "Cart.Updated"],
            "exp": 1_900_000_000,
            "aud": "gw",
        }
    )
    assert p == Principal(
        subject="u-42",
        tenant="acme",
        channel_patterns=("orders:{sub}", "inventory:*"),
        publish_patterns=("Order.*", "Cart.Updated"),
        expires_at=1_900_000_000.0,
    )


def test_from_claims_defaults_to_no_rights() -> None:
    p = Principal.from_claims({"sub": "u-1"})
    assert p.channel_patterns == ()
    assert p.publish_patterns == ()
    assert p.tenant is None
    assert p.expires_at is None
    assert not p.may_subscribe("orders:u-1")
    assert not p.may_publish("Order.Placed", "u-1")


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"sub": ""},
        {"sub": 42},
        {"sub": None},
        {"sub": "u", "tenant": 7},
        {"sub": "u", "tenant": ""},
        {"sub": "u", "exp": "soon"},
        {"sub": "u", "exp": True},
        {"sub": "u", "channels": "orders:{sub}"},
        {"sub": "u", "channels": [1]},
        {"sub": "u", "channels": ["*"]},
        {"sub": "u", "channels": ["orders"]},
        {"sub": "u", "channels": ["orders:"]},
        {"sub": "u", "channels": ["orders:u-*"]},
        {"sub": "u", "channels": ["ord*:x"]},
        {"sub": "u", "channels": ["*:x"]},
        {"sub": "u", "channels": ["Orders:x"]},
        {"sub": "u", "channels": ["orders:{user}"]},
        {"sub": "u", "channels": ["orders:a/b"]},
        {"sub": "u", "channels": ["orders:x\n"]},
        {"sub": "u", "channels": ["orders:\u0455"]},  # Cyrillic dze
        {"sub": "u", "channels": ["orders:" + "x" * 129]},
        {"sub": "u", "channels": ["inventory:s-1"] * 257},
        {"sub": "u", "publish": "Order.*"},
        {"sub": "u", "publish": ["order.*"]},
        {"sub": "u", "publish": ["Order."]},
        {"sub": "u", "publish": ["Order.Pl*"]},
        {"sub": "u", "publish": ["*.Placed"]},
        {"sub": "u", "publish": ["Order.Placed.X"]},
        {"sub": "u", "publish": [None]},
    ],
)
def test_malformed_claims_are_unauthorized(claims: dict[str, object]) -> None:
    with pytest.raises(Unauthorized) as info:
        Principal.from_claims(claims)
    assert info.value.reason == "bad_claims"
    assert info.value.status == 401


def test_error_tree() -> None:
    assert issubclass(Unauthorized, AuthError)
    assert issubclass(Forbidden, AuthError)
    assert issubclass(AuthError, GatewayError)
    assert (Unauthorized.status, Forbidden.status) == (401, 403)
    assert not Unauthorized.retriable


# --- tenants ---------------------------------------------------------------------------------


def test_tenant_must_match_the_configured_one() -> None:
    claims = {"sub": "u-1", "tenant": "acme"}
    assert Principal.from_claims(claims, tenant="acme").belongs_to("acme")
    with pytest.raises(Forbidden) as info:
        Principal.from_claims(claims, tenant="globex")
    assert info.value.reason == "wrong_tenant"
    with pytest.raises(Forbidden):
        Principal.from_claims({"sub": "u-1"}, tenant="acme")  # no tenant claim
    with pytest.raises(Forbidden):
        Principal.from_claims({"sub": "u-1", "tenant": "ACME"}, tenant="acme")
    with pytest.raises(Forbidden):
        Principal.from_claims({"sub": "u-1", "tenant": "\u0430cme"}, tenant="acme")  # Cyrillic a


def test_belongs_to_is_exact() -> None:
    p = Principal.from_claims({"sub": "u-1", "tenant": "acme"})
    assert p.belongs_to("acme")
    assert not p.belongs_to("Acme")
    assert not p.belongs_to(None)
    assert not p.belongs_to("acme ")
    assert Principal.from_claims({"sub": "u-1"}).belongs_to(None)


# --- may_subscribe ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "allowed"),
    [
        ("orders:u-42", True),
        ("inventory:s-7", True),
        ("inventory:anything.at_all~-", True),
        ("orders:u-43", False),
        ("orders:u-4", False),
        ("orders:u-420", False),
        ("orders:U-42", False),
        ("orders:{sub}", False),
        ("orders:*", False),
        ("orders:", False),
        ("orders", False),
        ("payments:u-42", False),
        ("inventoryx:s-7", False),
        ("inventor:s-7", False),
        ("Inventory:s-7", False),
        ("inventory:", False),
        ("inventory:*", False),
        ("inventory:s 7", False),
        ("inventory:s-7:x", False),
        ("inventory:../x", False),
        ("inventory:\u0455-7", False),  # Cyrillic dze
        ("orders:u\u200b-42", False),  # zero-width space
        ("orders:u-42\n", False),
        ("orders:u\uff0d42", False),  # fullwidth hyphen-minus
        ("\u043erders:u-42", False),  # Cyrillic o
        ("", False),
    ],
)
def test_may_subscribe(channel: str, allowed: bool) -> None:
    assert principal().may_subscribe(channel) is allowed


def test_exact_channel_pattern() -> None:
    p = principal(channels=["inventory:s-7"])
    assert p.may_subscribe("inventory:s-7")
    assert not p.may_subscribe("inventory:s-70")
    assert not p.may_subscribe("inventory:S-7")


def test_sub_placeholder_grants_nothing_for_a_subject_invalid_in_a_channel() -> None:
    for sub in ["a/b", "user@example.com", "\u0455", "x" * 129, "a b", "a:b", "*"]:
        p = principal(sub=sub)
        assert not p.may_subscribe(f"orders:{sub}")
        assert p.may_subscribe("inventory:s-7")  # the rest of the token still works


def test_sub_placeholder_does_not_expand_in_another_family() -> None:
    p = principal(channels=["orders:{sub}"])
    assert p.may_subscribe("orders:u-42")
    assert not p.may_subscribe("inventory:u-42")
    assert not p.may_subscribe("users:u-42")


def test_require_subscribe() -> None:
    principal().require_subscribe("orders:u-42")
    with pytest.raises(Forbidden) as info:
        principal().require_subscribe("orders:u-43")
    assert info.value.reason == "channel_forbidden"


# --- may_publish -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "event_type", "source", "allowed"),
    [
        (["Order.*"], "Order.Placed", "u-42", True),
        (["Order.*"], "Order.Cancelled", "u-42", True),
        (["Order.*"], "Order.Placed", "u-43", False),
        (["Order.*"], "Order.Placed", "U-42", False),
        (["Order.*"], "Orders.Placed", "u-42", False),
        (["Order.*"], "Payment.Captured", "u-42", False),
        (["Order.*"], "order.Placed", "u-42", False),
        (["Order.*"], "\u041erder.Placed", "u-42", False),  # Cyrillic O
        (["Order.*"], "Order.*", "u-42", False),
        (["Order.*"], "Order.", "u-42", False),
        (["Order.*"], "Order.Placed\n", "u-42", False),
        (["Order.Placed"], "Order.Placed", "u-42", True),
        (["Order.Placed"], "Order.Cancelled", "u-42", False),
        (["*"], "Payment.Captured", "u-42", True),
        (["*"], "Payment.Captured", "someone-else", False),
        (["*"], "not-an-event-type", "u-42", False),
        ([], "Order.Placed", "u-42", False),
    ],
)
def test_may_publish(patterns: list[str], event_type: str, source: str, allowed: bool) -> None:
    assert principal(publish=patterns).may_publish(event_type, source) is allowed


def test_require_publish() -> None:
    principal().require_publish("Order.Placed", "u-42")
    with pytest.raises(Forbidden) as info:
        principal().require_publish("Order.Placed", "u-1")
    assert info.value.reason == "publish_forbidden"


# --- property: never a foreign channel -------------------------------------------------------

SUBJECT = "u-42"
# Look-alikes of name characters: Cyrillic, small caps, fullwidth digits and punctuation,
# one-dot leader, zero-width and no-break spaces, a combining accent, dotless i, long s, Kelvin.
LOOKALIKES = (
    "\u0455\u043e\u0430\u0435\u0456\u0458\u0440\u0441\u0445\u0443\u1d1c"
    "\uff10\uff14\uff12\uff0d\u2024\u02cd\uff5e\u200b\u00a0\u0301\u0131\u017f\u212a"
)
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"

names = st.one_of(
    st.text(alphabet=NAME_CHARS, min_size=0, max_size=12),
    st.text(alphabet=NAME_CHARS + LOOKALIKES + ":*/{} \n", min_size=0, max_size=12),
    st.text(max_size=12),
    # near misses of the subject: one character changed, added or removed
    st.builds(
        lambda i, c, mode: (
            SUBJECT[:i] + c + SUBJECT[i + 1 :]
            if mode == 0
            else SUBJECT[:i] + c + SUBJECT[i:]
            if mode == 1
            else SUBJECT[:i] + SUBJECT[i + 1 :]
        ),
        st.integers(0, len(SUBJECT)),
        st.sampled_from(NAME_CHARS + LOOKALIKES + "*"),
        st.integers(0, 2),
    ),
    st.sampled_from(["{sub}", "*", SUBJECT, "u-42 ", " u-42", "U-42", "u-42\n", "u-42:x"]),
)
families = st.one_of(
    st.sampled_from(
        ["orders", "inventory", "payments", "Orders", "order", "ordersx", "\u043e" + "rders"]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-" + LOOKALIKES, max_size=10),
)


@settings(max_examples=5000, deadline=None)
@given(
    family=families,
    sep=st.sampled_from([":", ":", ":", "", "::", "\uff1a", ";"]),  # fullwidth colon
    name=names,
)
@example(family="orders", sep=":", name=SUBJECT)
@example(family="orders", sep=":", name="u-43")
@example(family="inventory", sep=":", name="s-7")
def test_never_a_foreign_channel(family: str, sep: str, name: str) -> None:
    p = principal(sub=SUBJECT)
    channel = family + sep + name
    granted = p.may_subscribe(channel)
    expected = valid_channel(channel) and (
        channel == f"orders:{SUBJECT}" or channel.startswith("inventory:")
    )
    assert granted is expected, channel
    if granted:
        assert channel.isascii()


@settings(max_examples=2000, deadline=None)
@given(other=st.text(alphabet=NAME_CHARS, min_size=1, max_size=20))
def test_own_orders_channel_and_only_it(other: str) -> None:
    own = principal(sub=other, channels=["orders:{sub}"])
    assert own.may_subscribe(f"orders:{other}") is valid_channel(f"orders:{other}")
    stranger = principal(sub=SUBJECT, channels=["orders:{sub}"])
    assert stranger.may_subscribe(f"orders:{other}") is (other == SUBJECT)
