"""Payload schemas: the shipped schema files, the registry's loading rules and its rejections."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.rejections import RejectCode, Rejection
from gateway.core.schemas import SchemaRegistry, SchemaRegistryError, default_schema_root

ROOT = default_schema_root()
DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES = sorted(p for p in ROOT.glob("*/v*.json") if not p.name.endswith(".example.json"))
EXAMPLE_FILES = sorted(ROOT.glob("*/v*.example.json"))
EXPECTED_TYPES = {
    "User.Registered",
    "Product.Created",
    "Order.Placed",
    "Order.StatusChanged",
    "Order.Cancelled",
    "Payment.Completed",
    "Payment.Failed",
    "Inventory.Updated",
    "Inventory.Reserved",
    "Email.SendRequested",
}

JsonPath = tuple[str | int, ...]
Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(ROOT)


def type_and_version(file: Path) -> tuple[str, int]:
    return file.parent.name, int(file.name.split(".")[0].removeprefix("v"))


def example(event_type: str, version: int) -> dict[str, Any]:
    loaded = json.loads((ROOT / event_type / f"v{version}.example.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def split(dotted: str) -> JsonPath:
    return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))


def setting(dotted: str, value: object) -> Mutation:
    *parents, last = split(dotted)

    def mutate(payload: dict[str, Any]) -> None:
        node: Any = payload
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def deleting(dotted: str) -> Mutation:
    *parents, last = split(dotted)

    def mutate(payload: dict[str, Any]) -> None:
        node: Any = payload
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


# -- the shipped schema files ------------------------------------------------------------------


def test_the_registry_knows_every_shipped_event_type(registry: SchemaRegistry) -> None:
    assert set(registry.event_types) == EXPECTED_TYPES
    assert registry.versions("Order.Placed") == (1, 2)
    assert all(registry.versions(t) == (1,) for t in EXPECTED_TYPES - {"Order.Placed"})
    assert registry.versions("Order.Teleported") == ()


@pytest.mark.parametrize("file", SCHEMA_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_schema_file_follows_the_conventions(file: Path) -> None:
    event_type, version = type_and_version(file)
    schema = json.loads(file.read_text())
    assert schema["$schema"] == DRAFT
    assert schema["$id"] == f"urn:sync-gateway:schema:{event_type}:v{version}"
    assert schema["description"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert '"format"' not in file.read_text()
    assert file.with_name(f"v{version}.example.json").is_file(), "every schema has an example"


@pytest.mark.parametrize("file", EXAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_is_valid(registry: SchemaRegistry, file: Path) -> None:
    event_type, version = type_and_version(file)
    assert version in registry.versions(event_type), "an example without a schema"
    assert registry.check(event_type, version, example(event_type, version)) is None


def test_every_shipped_schema_has_the_compiled_fast_path(registry: SchemaRegistry) -> None:
    # A schema that uses a keyword the fast path lacks still works, but ~40x slower.
    compiled = registry._compiled
    slow = [(t, v) for t, by_v in compiled.items() for v, c in by_v.items() if not c.has_fast_path]
    assert slow == []


def test_order_placed_v2_is_a_different_contract_from_v1(registry: SchemaRegistry) -> None:
    assert registry.check("Order.Placed", 2, example("Order.Placed", 1)) == Rejection(
        RejectCode.INVALID_PAYLOAD,
        "missing required properties 'channel', 'fulfillment'",
        "payload.channel",
    )
    assert registry.check("Order.Placed", 1, example("Order.Placed", 2)) == Rejection(
        RejectCode.INVALID_PAYLOAD,
        "unexpected properties 'channel', 'fulfillment'",
        "payload.channel",
    )


# -- valid edge cases --------------------------------------------------------------------------

ACCEPTED = [
    pytest.param("Order.Placed", 1, setting("total.amount", "0"), id="zero-amount"),
    pytest.param("Order.Placed", 1, setting("total.amount", "1234.5678"), id="4-fraction-digits"),
    pytest.param("Order.Placed", 1, setting("total.currency", "JPY"), id="other-currency"),
    pytest.param("Order.Placed", 1, setting("items.0.quantity", 10000), id="max-quantity"),
    pytest.param("Order.Placed", 1, setting("note", ""), id="empty-optional-text"),
    pytest.param("Order.Placed", 2, setting("fulfillment", {"method": "pickup"}), id="pickup"),
    pytest.param("Inventory.Updated", 1, setting("quantity", 0), id="quantity-0"),
    pytest.param("Inventory.Updated", 1, setting("delta", -5), id="negative-delta"),
    pytest.param(
        "Order.StatusChanged",
        1,
        setting("estimatedArrival", "2025-06-30T23:59:60.123456+05:30"),
        id="timestamp-offset-fraction",
    ),
    pytest.param("Email.SendRequested", 1, deleting("variables"), id="optional-missing"),
    pytest.param("Product.Created", 1, setting("attributes", {}), id="empty-map"),
]


@pytest.mark.parametrize(("event_type", "version", "mutate"), ACCEPTED)
def test_valid_edge_cases_are_accepted(
    registry: SchemaRegistry, event_type: str, version: int, mutate: Mutation
) -> None:
    payload = example(event_type, version)
    mutate(payload)
    assert registry.check(event_type, version, payload) is None


# -- rejections: the field is the exact path, the message says what is wrong -------------------

OP = "Order.Placed"
REJECTED = [
    # missing required properties, at any depth
    pytest.param(
        OP, 1, deleting("orderId"), "payload.orderId", "missing required property 'orderId'"
    ),
    pytest.param(
        OP, 1, deleting("items.1.sku"), "payload.items.1.sku", "missing required property 'sku'"
    ),
    pytest.param(
        OP,
        1,
        deleting("total.currency"),
        "payload.total.currency",
        "missing required property 'currency'",
    ),
    pytest.param(
        OP,
        2,
        deleting("fulfillment.address"),
        "payload.fulfillment.address",
        "missing required property 'address'",
        id="delivery-needs-address",
    ),
    # wrong types
    pytest.param(OP, 1, setting("userId", 42), "payload.userId", "expected string, got integer 42"),
    pytest.param(
        OP,
        1,
        setting("items.0.quantity", "2"),
        "payload.items.0.quantity",
        "expected integer, got string '2'",
    ),
    pytest.param(
        OP,
        1,
        setting("items.0.quantity", 2.0),
        "payload.items.0.quantity",
        "expected integer, got number 2.0",
        id="integral-float-is-not-an-integer",
    ),
    pytest.param(
        OP,
        1,
        setting("items.0.quantity", True),
        "payload.items.0.quantity",
        "expected integer, got boolean",
    ),
    pytest.param(OP, 1, setting("items", {}), "payload.items", "expected array, got object"),
    pytest.param(
        OP,
        1,
        setting("items.2.unitPrice", "3.19 EUR"),
        "payload.items.2.unitPrice",
        "expected object, got string",
    ),
    pytest.param(
        "Payment.Failed",
        1,
        setting("retryable", "no"),
        "payload.retryable",
        "expected boolean, got string 'no'",
    ),
    # money: decimal strings only, ISO 4217 codes
    pytest.param(
        OP,
        1,
        setting("total.amount", 8.26),
        "payload.total.amount",
        "expected string, got number 8.26",
        id="float-amount",
    ),
    pytest.param(
        OP,
        1,
        setting("items.0.unitPrice.amount", 1),
        "payload.items.0.unitPrice.amount",
        "expected string, got integer 1",
        id="int-amount",
    ),
    *(
        pytest.param(
            OP,
            1,
            setting("total.amount", bad),
            "payload.total.amount",
            "does not match the pattern",
            id=f"amount-{bad!r}",
        )
        for bad in ["8.2.6", "-1.00", "1e3", "08.26", "1.23456", "8,26", " 8.26", "8.26\n", ""]
    ),
    *(
        pytest.param(
            OP,
            1,
            setting("items.2.unitPrice.currency", bad),
            "payload.items.2.unitPrice.currency",
            "does not match the pattern ^[A-Z]{3}$",
            id=f"currency-{bad!r}",
        )
        for bad in ["eur", "EURO", "EU", "EUR\n", "€"]
    ),
    # additional properties, at any depth
    pytest.param(OP, 1, setting("coupon", "SAVE10"), "payload.coupon", "unexpected property"),
    pytest.param(
        OP,
        1,
        setting("items.2.discount", "0.50"),
        "payload.items.2.discount",
        "unexpected property 'discount'",
    ),
    pytest.param(
        OP, 1, setting("total.cents", 826), "payload.total.cents", "unexpected property 'cents'"
    ),
    # ranges and lengths
    pytest.param(
        OP,
        1,
        setting("items.0.quantity", -1),
        "payload.items.0.quantity",
        "must be >= 1 (got -1)",
        id="negative-quantity",
    ),
    pytest.param(
        OP, 1, setting("items.0.quantity", 0), "payload.items.0.quantity", "must be >= 1 (got 0)"
    ),
    pytest.param(
        OP,
        1,
        setting("items.0.quantity", 10001),
        "payload.items.0.quantity",
        "must be <= 10000 (got 10001)",
    ),
    pytest.param(
        "Inventory.Updated",
        1,
        setting("quantity", -1),
        "payload.quantity",
        "must be >= 0 (got -1)",
        id="negative-stock",
    ),
    pytest.param(OP, 1, setting("items", []), "payload.items", "must have at least 1 item"),
    pytest.param(
        OP, 1, setting("orderId", ""), "payload.orderId", "must be at least 1 character long"
    ),
    pytest.param(
        OP,
        1,
        setting("orderId", "o" * 129),
        "payload.orderId",
        "must be at most 128 characters long",
    ),
    pytest.param(OP, 1, setting("items.1.sku", "MILK 1L"), "payload.items.1.sku", "does not match"),
    # enums
    pytest.param(
        "Inventory.Updated", 1, setting("reason", "stolen"), "payload.reason", "must be one of"
    ),
    pytest.param(
        "Order.StatusChanged",
        1,
        setting("to", "teleported"),
        "payload.to",
        "must be one of 'placed', 'confirmed'",
    ),
    pytest.param(OP, 2, setting("channel", "fax"), "payload.channel", "(got 'fax')"),
    # timestamps, e-mail, phone, country
    *(
        pytest.param(
            "Order.StatusChanged",
            1,
            setting("estimatedArrival", bad),
            "payload.estimatedArrival",
            "invalid format, expected RFC 3339 date-time",
            id=f"timestamp-{bad!r}",
        )
        for bad in ["2025-11-21 18:45:00Z", "2025-13-01T00:00:00Z", "2025-11-21T18:45:00"]
    ),
    pytest.param(
        "Email.SendRequested", 1, setting("to", "ada.example.com"), "payload.to", "does not match"
    ),
    pytest.param("User.Registered", 1, setting("phone", "+0123"), "payload.phone", "does not"),
    pytest.param(
        OP,
        2,
        setting("fulfillment.address.country", "gb"),
        "payload.fulfillment.address.country",
        "does not match",
    ),
    # open maps: their keys and values are still checked
    pytest.param(
        "Email.SendRequested",
        1,
        setting("variables.bad key", "x"),
        "payload.variables.bad key",
        "invalid property name",
    ),
    pytest.param(
        "Email.SendRequested",
        1,
        setting("variables.total", 8.26),
        "payload.variables.total",
        "expected string or integer or boolean, got number 8.26",
    ),
    pytest.param(
        "Product.Created",
        1,
        setting("attributes.weight", 1000),
        "payload.attributes.weight",
        "expected string, got integer",
    ),
    pytest.param(
        "Inventory.Reserved",
        1,
        setting("items.1.quantity", 0),
        "payload.items.1.quantity",
        "must be >= 1",
    ),
]


@pytest.mark.parametrize(("event_type", "version", "mutate", "field", "message"), REJECTED)
def test_invalid_payload_is_rejected_with_the_exact_field(
    registry: SchemaRegistry,
    event_type: str,
    version: int,
    mutate: Mutation,
    field: str,
    message: str,
) -> None:
    payload = example(event_type, version)
    mutate(payload)
    rejection = registry.check(event_type, version, payload)
    assert rejection is not None
    assert rejection.code is RejectCode.INVALID_PAYLOAD
    assert rejection.field == field
    assert message in rejection.message
    assert len(rejection.message) <= 160


def test_the_most_relevant_error_wins(registry: SchemaRegistry) -> None:
    payload = example(OP, 1)
    del payload["orderId"]
    payload["items"][0]["quantity"] = -1
    rejection = registry.check(OP, 1, payload)
    assert rejection is not None
    assert rejection.field == "payload.orderId"


def test_a_payload_that_is_not_an_object_is_rejected(registry: SchemaRegistry) -> None:
    not_an_object: Any = [example(OP, 1)]
    assert registry.check(OP, 1, not_an_object) == Rejection(
        RejectCode.INVALID_PAYLOAD, "expected object, got array", "payload"
    )


def test_a_huge_bad_value_gives_a_short_message(registry: SchemaRegistry) -> None:
    payload = example(OP, 1)
    payload["note"] = {"x" * 10_000: list(range(10_000))}
    rejection = registry.check(OP, 1, payload)
    assert rejection is not None
    assert rejection.field == "payload.note"
    assert rejection.message == "expected string, got object"


def test_absurdly_deep_nesting_is_rejected_not_raised(registry: SchemaRegistry) -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    payload = example(OP, 1)
    payload["note"] = deep
    rejection = registry.check(OP, 1, payload)
    assert rejection is not None
    assert rejection.code is RejectCode.INVALID_PAYLOAD


def test_unknown_event_type(registry: SchemaRegistry) -> None:
    assert registry.check("Order.Teleported", 1, {}) == Rejection(
        RejectCode.UNKNOWN_EVENT_TYPE, "unknown event type 'Order.Teleported'", "event_type"
    )


@pytest.mark.parametrize("version", [0, 3, 99])
def test_unknown_event_version_lists_the_known_ones(registry: SchemaRegistry, version: int) -> None:
    assert registry.check(OP, version, example(OP, 1)) == Rejection(
        RejectCode.UNKNOWN_EVENT_VERSION,
        f"unknown version {version} of Order.Placed; known versions: 1, 2",
        "event_version",
    )


# -- loading: a broken schema directory fails at start-up, naming the file ---------------------


def minimal_schema(event_type: str = "Thing.Happened", version: int = 1) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": f"urn:sync-gateway:schema:{event_type}:v{version}",
        "description": "A test event.",
        "type": "object",
        "additionalProperties": False,
        "required": ["thingId"],
        "properties": {"thingId": {"type": "string", "minLength": 1, "maxLength": 128}},
    }


def write(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def with_schema(**changes: object) -> dict[str, Any]:
    schema = minimal_schema()
    for key, value in changes.items():
        if value is None:
            del schema[key]
        else:
            schema[key] = value
    return schema


THING = Path("Thing.Happened")
BROKEN: list[Any] = [
    pytest.param(THING / "v1.json", "{not json", "cannot read a JSON schema", id="not-json"),
    pytest.param(
        THING / "v1.json",
        '{"type": "object", "type": "array"}',
        "duplicate key 'type'",
        id="duplicate-key",
    ),
    pytest.param(THING / "v1.json", "[]", "must be a JSON object", id="not-an-object"),
    pytest.param(
        THING / "v1.json",
        with_schema(properties={"thingId": {"type": "strnig"}}),
        "not a valid draft 2020-12 schema at properties/thingId/type",
        id="invalid-schema",
    ),
    pytest.param(
        THING / "v1.json",
        with_schema(properties={"thingId": {"type": "string", "pattern": "(unclosed"}}),
        "not a valid draft 2020-12 schema",
        id="invalid-regex",
    ),
    pytest.param(
        THING / "v1.json",
        with_schema(**{"$id": "urn:sync-gateway:schema:Thing.Happened:v2"}),
        '"$id" must be "urn:sync-gateway:schema:Thing.Happened:v1"',
        id="wrong-id",
    ),
    pytest.param(
        THING / "v1.json", with_schema(**{"$schema": None}), '"$schema" must be', id="no-$schema"
    ),
    pytest.param(
        THING / "v1.json",
        with_schema(type="array"),
        'must have "type": "object"',
        id="not-an-object-schema",
    ),
    pytest.param(
        THING / "v1.json",
        with_schema(properties={"at": {"type": "string", "format": "date-time"}}),
        '"format": "date-time" would not be enforced',
        id="format",
    ),
    pytest.param(
        THING / "v1.json",
        with_schema(properties={"thingId": {"$ref": "#/$defs/missing"}}),
        "cannot resolve $ref '#/$defs/missing'",
        id="dangling-ref",
    ),
    pytest.param(
        THING / "v1.json",
        with_schema(properties={"thingId": {"$ref": "https://example.com/id.json"}}),
        "cannot resolve $ref",
        id="remote-ref-is-never-fetched",
    ),
    *(
        pytest.param(THING / name, "{}", "expected only schema files", id=f"file-{name}")
        for name in ["v1.yaml", "v01.json", "v0.json", "version1.json", "V1.json", "v1.jsonc"]
    ),
    *(
        pytest.param(
            Path(name) / "v1.json", minimal_schema(), "not an event type", id=f"dir-{name}"
        )
        for name in ["thing_happened", "Thing", "thing.Happened", "Thing.Happened.", "Thing..X"]
    ),
]


@pytest.mark.parametrize(("relative", "content", "problem"), BROKEN)
def test_a_broken_schema_directory_raises_naming_the_file(
    tmp_path: Path, relative: Path, content: object, problem: str
) -> None:
    write(tmp_path / "Other.Event" / "v1.json", minimal_schema("Other.Event"))
    write(tmp_path / relative, content)
    with pytest.raises(SchemaRegistryError) as raised:
        SchemaRegistry.load(tmp_path)
    # A bad file is named itself; a badly named directory is named, not the file in it.
    offending = tmp_path / (relative if relative.parent == THING else relative.parent)
    assert raised.value.path == offending
    assert str(offending) in str(raised.value)
    assert problem in str(raised.value)


def test_a_directory_posing_as_a_schema_file_raises(tmp_path: Path) -> None:
    (tmp_path / "Thing.Happened" / "v1.json").mkdir(parents=True)
    with pytest.raises(SchemaRegistryError, match="expected only schema files") as raised:
        SchemaRegistry.load(tmp_path)
    assert raised.value.path == tmp_path / "Thing.Happened" / "v1.json"


def test_an_event_type_directory_without_schemas_raises(tmp_path: Path) -> None:
    write(tmp_path / "Thing.Happened" / "v1.example.json", {"thingId": "t-1"})
    with pytest.raises(SchemaRegistryError, match="no schema file") as raised:
        SchemaRegistry.load(tmp_path)
    assert raised.value.path == tmp_path / "Thing.Happened"


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_an_unusable_root_raises(tmp_path: Path, make: str) -> None:
    root = tmp_path / "schemas"
    if make == "empty":
        root.mkdir()
    elif make == "file":
        root.write_text("")
    with pytest.raises(SchemaRegistryError) as raised:
        SchemaRegistry.load(root)
    assert raised.value.path == root
    assert str(root) in str(raised.value)


def test_examples_hidden_entries_and_root_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "Thing.Happened" / "v1.json", minimal_schema())
    write(tmp_path / "Thing.Happened" / "v1.example.json", "not even json")
    write(tmp_path / "Thing.Happened" / ".v1.json.swp", "junk")
    write(tmp_path / ".git" / "HEAD", "junk")
    write(tmp_path / "README.md", "# Schemas")
    registry = SchemaRegistry.load(tmp_path)
    assert registry.event_types == ("Thing.Happened",)
    assert registry.check("Thing.Happened", 1, {"thingId": "t-1"}) is None


def test_a_schema_may_refer_to_another_schema_by_id(tmp_path: Path) -> None:
    base = minimal_schema()
    base["$defs"] = {"money": {"type": "string", "pattern": "^[0-9]+[.][0-9]{2}$"}}
    write(tmp_path / "Thing.Happened" / "v1.json", base)
    other = minimal_schema("Thing.Priced")
    other["properties"]["price"] = {
        "$ref": "urn:sync-gateway:schema:Thing.Happened:v1#/$defs/money"
    }
    write(tmp_path / "Thing.Priced" / "v1.json", other)
    registry = SchemaRegistry.load(tmp_path)
    assert registry._compiled["Thing.Priced"][1].has_fast_path
    assert registry.check("Thing.Priced", 1, {"thingId": "t", "price": "1.00"}) is None
    rejection = registry.check("Thing.Priced", 1, {"thingId": "t", "price": "1.0"})
    assert rejection is not None
    assert rejection.field == "payload.price"


def test_a_schema_beyond_the_fast_path_is_still_enforced(tmp_path: Path) -> None:
    schema = minimal_schema()
    schema["properties"]["tags"] = {
        "type": "array",
        "uniqueItems": True,
        "items": {"type": "string"},
    }
    write(tmp_path / "Thing.Happened" / "v1.json", schema)
    registry = SchemaRegistry.load(tmp_path)
    assert not registry._compiled["Thing.Happened"][1].has_fast_path
    assert registry.check("Thing.Happened", 1, {"thingId": "t", "tags": ["a", "b"]}) is None
    rejection = registry.check("Thing.Happened", 1, {"thingId": "t", "tags": ["a", "a"]})
    assert rejection == Rejection(
        RejectCode.INVALID_PAYLOAD, "must not contain duplicate items", "payload.tags"
    )


@pytest.mark.parametrize(
    ("pattern", "value", "valid"),
    [
        ("^[A-Z]{3}$", "EUR", True),
        ("^[A-Z]{3}$", "EUR\n", False),  # ECMA-262 "$": end of input, not before a final newline
        ("^\\$[0-9]+$", "$12", True),  # an escaped "$" is a literal dollar sign
        ("^\\$[0-9]+$", "$12\n", False),
        ("^[€$][0-9]+$", "$5", True),  # so is "$" in a character class
        ("^[€$][0-9]+$", "$5\n", False),
        ("[0-9]", "abc1def", True),  # patterns are not anchored unless they say so
        ("^(a|b$)", "b\n", False),
        ("^(a|b$)", "a\n", True),
    ],
)
def test_patterns_have_ecma_262_end_of_input_semantics(
    tmp_path: Path, pattern: str, value: str, valid: bool
) -> None:
    schema = minimal_schema()
    schema["properties"]["thingId"] = {"type": "string", "pattern": pattern}
    write(tmp_path / "Thing.Happened" / "v1.json", schema)
    registry = SchemaRegistry.load(tmp_path)
    compiled = registry._compiled["Thing.Happened"][1]
    payload = {"thingId": value}
    assert (registry.check("Thing.Happened", 1, payload) is None) is valid
    assert compiled.validator.is_valid(payload) is valid


def test_schema_registry_error_names_path_and_problem() -> None:
    error = SchemaRegistryError(Path("/x/Order.Placed/v1.json"), "bad")
    assert isinstance(error, Exception)
    assert str(error) == "/x/Order.Placed/v1.json: bad"
    assert (error.path, error.problem) == (Path("/x/Order.Placed/v1.json"), "bad")


# -- properties --------------------------------------------------------------------------------

KNOWN = [type_and_version(f) for f in SCHEMA_FILES]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON and msgpack decoders yield
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def leaves(node: object) -> Iterator[object]:
    if isinstance(node, dict):
        for value in node.values():
            yield from leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from leaves(value)
    else:
        yield node


# Values that are valid somewhere: mutations with them exercise the accepting path too.
plausible = st.sampled_from(
    sorted(
        {json.dumps(leaf) for t, v in KNOWN for leaf in leaves(example(t, v))}
        | {json.dumps(x) for x in [-1, 0, 1, 10000, 10001, 2.0, "", "EUR", "eur", "1.00", "x"]}
    )
).map(json.loads)


@given(
    key=st.sampled_from(KNOWN),
    version=st.integers(min_value=0, max_value=3),
    payload=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)
def test_random_payloads_never_raise(
    registry: SchemaRegistry, key: tuple[str, int], version: int, payload: dict[str, Any]
) -> None:
    event_type, _ = key
    rejection = registry.check(event_type, version, payload)
    if version not in registry.versions(event_type):
        assert rejection is not None
        assert rejection.code is RejectCode.UNKNOWN_EVENT_VERSION
        return
    assert rejection is None or (
        rejection.code is RejectCode.INVALID_PAYLOAD
        and rejection.field is not None
        and rejection.field.startswith("payload")
        and rejection.message
    )


def node_paths(node: object, prefix: JsonPath = ()) -> Iterator[JsonPath]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from node_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from node_paths(value, (*prefix, index))


def dotted(path: JsonPath) -> str:
    return ".".join(["payload", *map(str, path)])


BOUNDARY_VALUES: list[object] = [
    *(None, True, False, 0, 1, -1, 10000, 10001, 2**63, 2.0, 1.5, -0.0, float("nan")),
    *("", "x", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "EUR", "EUR\n", "1.00", "pickup"),
    *([], {}, ["x"], {"x": "y"}, {"a": 1, "b": 2, "c": 3}),
]


def variants(original: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every single-edit variant: each node replaced by each boundary value or deleted, and a
    few new keys added to each object."""
    for path in [(), *node_paths(original)]:
        payload = copy.deepcopy(original)
        node: Any = payload
        for part in path:
            node = node[part]
        if isinstance(node, dict):
            for new_key in ["x", "bad key", "", "orderId"]:
                if new_key not in node:
                    grown = copy.deepcopy(payload)
                    target: Any = grown
                    for part in path:
                        target = target[part]
                    target[new_key] = "x"
                    yield f"add {new_key!r} at {path}", grown
        if not path:
            continue
        *parents, last = path
        for value in [*BOUNDARY_VALUES, "delete"]:
            changed = copy.deepcopy(original)
            parent: Any = changed
            for part in parents:
                parent = parent[part]
            if value == "delete":
                del parent[last]
            else:
                parent[last] = value
            yield f"{value!r} at {path}", changed


@pytest.mark.parametrize("key", KNOWN, ids=lambda k: f"{k[0]}-v{k[1]}")
def test_fast_path_agrees_with_jsonschema_on_boundary_values(
    registry: SchemaRegistry, key: tuple[str, int]
) -> None:
    event_type, version = key
    compiled = registry._compiled[event_type][version]
    for edit, payload in variants(example(event_type, version)):
        assert compiled.fast(payload) is compiled.validator.is_valid(payload), edit


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_mutated_examples_agree_with_jsonschema_and_point_near_the_change(
    registry: SchemaRegistry, data: st.DataObject
) -> None:
    event_type, version = data.draw(st.sampled_from(KNOWN), label="schema")
    payload = copy.deepcopy(example(event_type, version))
    path = data.draw(st.sampled_from(list(node_paths(payload))), label="path")
    *parents, last = path
    parent: Any = payload
    for part in parents:
        parent = parent[part]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
    if action == "replace":
        parent[last] = data.draw(plausible | json_values, label="value")
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=10), label="new key")] = data.draw(json_values)
    else:
        parent.insert(last, data.draw(plausible | json_values, label="new item"))

    rejection = registry.check(event_type, version, payload)

    compiled = registry._compiled[event_type][version]
    assert compiled.fast(payload) is compiled.validator.is_valid(payload)
    assert (rejection is None) is compiled.validator.is_valid(payload)
    if rejection is not None:
        assert rejection.code is RejectCode.INVALID_PAYLOAD
        assert rejection.field is not None
        near = dotted(tuple(parents))
        assert rejection.field == near or rejection.field.startswith(near + "."), rejection


KEYWORD_ZOO: dict[str, Any] = {
    "anyOf": {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "minimum": 5}]},
    "oneOf": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]},
    "not": {"not": {"type": "string"}},
    "allOf": {"allOf": [{"minimum": 1}, {"maximum": 3}]},
    "exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "const": {"const": "fixed"},
    "nullable": {"type": ["null", "number"]},
    "ifElse": {"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"type": "integer"}},
    "noItems": {"type": "array", "items": False},
    "someItems": {"type": "array", "items": True, "minItems": 1, "maxItems": 2},
    "closed": {"type": "object", "additionalProperties": False},
    "map": {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 2,
        "additionalProperties": {"type": "integer"},
        "propertyNames": {"maxLength": 3},
    },
    "untyped": {"minLength": 2, "minimum": 2, "minItems": 2, "required": ["a"]},
    "enum": {"enum": ["a", "b"]},
    "ref": {"$ref": "#/$defs/positive"},
    "refWithSibling": {"$ref": "#/$defs/positive", "maximum": 10},
    "never": False,
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> SchemaRegistry:
    schema = minimal_schema()
    schema["required"] = []
    schema["properties"] = KEYWORD_ZOO
    schema["$defs"] = {"positive": {"type": "integer", "minimum": 1}}
    root = tmp_path_factory.mktemp("zoo")
    write(root / "Thing.Happened" / "v1.json", schema)
    return SchemaRegistry.load(root)


def assert_fast_path_agrees(zoo: SchemaRegistry, name: str, value: object) -> None:
    compiled = zoo._compiled["Thing.Happened"][1]
    assert compiled.has_fast_path
    payload: dict[str, Any] = {name: value}
    valid = compiled.validator.is_valid(payload)
    assert compiled.fast(payload) is valid, (name, value)
    rejection = zoo.check("Thing.Happened", 1, payload)
    assert (rejection is None) is valid
    if rejection is not None:
        assert rejection.field is not None
        assert rejection.field.startswith(f"payload.{name}")


def test_fast_path_agrees_with_jsonschema_on_every_keyword_at_the_boundaries(
    zoo: SchemaRegistry,
) -> None:
    for name in KEYWORD_ZOO:
        for value in BOUNDARY_VALUES:
            assert_fast_path_agrees(zoo, name, value)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(KEYWORD_ZOO)), value=plausible | json_values)
def test_fast_path_agrees_with_jsonschema_on_every_keyword(
    zoo: SchemaRegistry, name: str, value: object
) -> None:
    assert_fast_path_agrees(zoo, name, value)
