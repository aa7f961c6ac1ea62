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

from gateway import errors
from gateway.core.rejections import RejectCode, Rejection
from gateway.core.schemas import SchemaRegistry, SchemaRegistryError, default_schema_root

ROOT = default_schema_root()
DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES = sorted(p for p in ROOT.glob("*/v*.json") if not p.name.endswith(".example.json"))
EXAMPLE_FILES = sorted(ROOT.glob("*/v*.example.json"))
EXPECTED_TYPES = {
    *("User.Registered", "Product.Created", "Order.Placed", "Order.StatusChanged"),
    *("Order.Cancelled", "Payment.Completed", "Payment.Failed", "Inventory.Updated"),
    *("Inventory.Reserved", "Email.SendRequested"),
}
OP = "Order.Placed"

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


DELETE = object()


def setting(dotted: str, value: object) -> Mutation:
    *parents, last = (int(p) if p.isdigit() else p for p in dotted.split("."))

    def mutate(payload: dict[str, Any]) -> None:
        node: Any = payload
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


def deleting(dotted: str) -> Mutation:
    return setting(dotted, DELETE)


# -- the shipped schema files ------------------------------------------------------------------


def test_the_registry_knows_every_shipped_event_type(registry: SchemaRegistry) -> None:
    assert set(registry.event_types) == EXPECTED_TYPES
    assert registry.event_types == tuple(sorted(EXPECTED_TYPES))
    assert registry.versions(OP) == (1, 2)
    assert all(registry.versions(t) == (1,) for t in EXPECTED_TYPES - {OP})
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


def test_order_placed_v2_is_a_different_contract_from_v1(registry: SchemaRegistry) -> None:
    v2_with_v1 = registry.check(OP, 2, example(OP, 1))
    assert v2_with_v1 is not None
    assert (v2_with_v1.field, v2_with_v1.message) == (
        "payload.channel",
        '"channel" is a required property',
    )
    v1_with_v2 = registry.check(OP, 1, example(OP, 2))
    assert v1_with_v2 is not None
    assert v1_with_v2.field == "payload.channel"
    assert "'channel', 'fulfillment' were unexpected" in v1_with_v2.message


# -- valid edge cases --------------------------------------------------------------------------

ACCEPTED = [
    pytest.param(OP, 1, setting("total.amount", "0"), id="zero-amount"),
    pytest.param(OP, 1, setting("total.amount", "1234.5678"), id="4-fraction-digits"),
    pytest.param(OP, 1, setting("total.currency", "JPY"), id="other-currency"),
    pytest.param(OP, 1, setting("items.0.quantity", 10000), id="max-quantity"),
    # JSON Schema's "integer" is a value with no fraction, whatever its spelling.
    pytest.param(OP, 1, setting("items.0.quantity", 2.0), id="integral-float-is-an-integer"),
    pytest.param(OP, 1, setting("note", ""), id="empty-optional-text"),
    pytest.param(OP, 2, setting("fulfillment", {"method": "pickup"}), id="pickup"),
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

NOT_STRING = 'is not of type "string"'
NO_MATCH = "does not match"
REJECTED = [
    # missing required properties, at any depth
    (OP, 1, deleting("orderId"), "payload.orderId", '"orderId" is a required property'),
    (OP, 1, deleting("items.1.sku"), "payload.items.1.sku", '"sku" is a required property'),
    (OP, 1, deleting("total.currency"), "payload.total.currency", "is a required property"),
    (OP, 2, deleting("fulfillment.address"), "payload.fulfillment.address", "required"),
    # wrong types
    (OP, 1, setting("userId", 42), "payload.userId", f"42 {NOT_STRING}"),
    (OP, 1, setting("items.0.quantity", "2"), "payload.items.0.quantity", 'not of type "integer"'),
    (OP, 1, setting("items.0.quantity", 2.5), "payload.items.0.quantity", 'not of type "integer"'),
    (OP, 1, setting("items.0.quantity", True), "payload.items.0.quantity", "true is not of type"),
    (OP, 1, setting("items", {}), "payload.items", 'is not of type "array"'),
    (OP, 1, setting("items.2.unitPrice", "3.19 EUR"), "payload.items.2.unitPrice", "object"),
    ("Payment.Failed", 1, setting("retryable", "no"), "payload.retryable", '"boolean"'),
    # money: decimal strings only, ISO 4217 codes
    (OP, 1, setting("total.amount", 8.26), "payload.total.amount", f"8.26 {NOT_STRING}"),
    (OP, 1, setting("items.0.unitPrice.amount", 1), "payload.items.0.unitPrice.amount", "1 is"),
    *(
        (OP, 1, setting("total.amount", bad), "payload.total.amount", NO_MATCH)
        for bad in ["8.2.6", "-1.00", "1e3", "08.26", "1.23456", "8,26", " 8.26", "8.26\n", ""]
    ),
    *(
        (
            OP,
            1,
            setting("items.2.unitPrice.currency", bad),
            "payload.items.2.unitPrice.currency",
            NO_MATCH,
        )
        for bad in ["eur", "EURO", "EU", "EUR\n", "€"]
    ),
    # additional properties, at any depth
    (OP, 1, setting("coupon", "SAVE10"), "payload.coupon", "Additional properties are not allowed"),
    (OP, 1, setting("items.2.discount", "0.50"), "payload.items.2.discount", "'discount'"),
    (OP, 1, setting("total.cents", 826), "payload.total.cents", "'cents' was unexpected"),
    # ranges and lengths
    (OP, 1, setting("items.0.quantity", -1), "payload.items.0.quantity", "minimum of 1"),
    (OP, 1, setting("items.0.quantity", 0), "payload.items.0.quantity", "minimum of 1"),
    (OP, 1, setting("items.0.quantity", 10001), "payload.items.0.quantity", "maximum of 10000"),
    ("Inventory.Updated", 1, setting("quantity", -1), "payload.quantity", "minimum of 0"),
    (OP, 1, setting("items", []), "payload.items", "has less than 1 item"),
    (OP, 1, setting("orderId", ""), "payload.orderId", "shorter than 1 character"),
    (OP, 1, setting("orderId", "o" * 129), "payload.orderId", "longer than 128 characters"),
    (OP, 1, setting("items.1.sku", "MILK 1L"), "payload.items.1.sku", NO_MATCH),
    # enums
    ("Inventory.Updated", 1, setting("reason", "stolen"), "payload.reason", "is not one of"),
    ("Order.StatusChanged", 1, setting("to", "teleported"), "payload.to", '"teleported" is not'),
    (OP, 2, setting("channel", "fax"), "payload.channel", '"fax" is not one of'),
    # timestamps, e-mail, phone, country
    *(
        (
            "Order.StatusChanged",
            1,
            setting("estimatedArrival", bad),
            "payload.estimatedArrival",
            NO_MATCH,
        )
        for bad in ["2025-11-21 18:45:00Z", "2025-13-01T00:00:00Z", "2025-11-21T18:45:00"]
    ),
    ("Email.SendRequested", 1, setting("to", "ada.example.com"), "payload.to", NO_MATCH),
    ("User.Registered", 1, setting("phone", "+0123"), "payload.phone", NO_MATCH),
    (
        OP,
        2,
        setting("fulfillment.address.country", "gb"),
        "payload.fulfillment.address.country",
        '"gb" does not match "^[A-Z]{2}$"',
    ),
    # open maps: their keys and values are still checked
    (
        "Email.SendRequested",
        1,
        setting("variables.bad key", "x"),
        "payload.variables.bad key",
        '"bad key" does not match',
    ),
    (
        "Email.SendRequested",
        1,
        setting("variables.total", 8.26),
        "payload.variables.total",
        'is not of types "boolean", "integer", "string"',
    ),
    ("Product.Created", 1, setting("attributes.weight", 1000), "payload.attributes.weight", "1000"),
    ("Inventory.Reserved", 1, setting("items.1.quantity", 0), "payload.items.1.quantity", "min"),
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


def test_the_shallowest_error_wins(registry: SchemaRegistry) -> None:
    payload = example(OP, 1)
    payload["items"][0]["quantity"] = -1
    del payload["orderId"]
    rejection = registry.check(OP, 1, payload)
    assert rejection is not None
    assert rejection.field == "payload.orderId"


@pytest.mark.parametrize("not_an_object", [[{}], "payload", 42, None])
def test_a_payload_that_is_not_an_object_is_rejected(
    registry: SchemaRegistry, not_an_object: Any
) -> None:
    rejection = registry.check(OP, 1, not_an_object)
    assert rejection is not None
    assert (rejection.code, rejection.field) == (RejectCode.INVALID_PAYLOAD, "payload")
    assert rejection.message.endswith('is not of type "object"')


def test_a_huge_bad_value_gives_a_short_message(registry: SchemaRegistry) -> None:
    payload = example(OP, 1)
    payload["note"] = {"x" * 10_000: list(range(10_000))}
    rejection = registry.check(OP, 1, payload)
    assert rejection is not None
    assert rejection.field == "payload.note"
    assert len(rejection.message) <= 160
    assert rejection.message.endswith(NOT_STRING), "the problem is kept, the value is cut"


@pytest.mark.parametrize(
    "value", [b"bytes", object(), {1: "non-string key"}], ids=["bytes", "object", "int-key"]
)
def test_a_value_that_is_not_json_is_rejected_not_raised(
    registry: SchemaRegistry, value: object
) -> None:
    payload = example(OP, 1)
    payload["note"] = value
    rejection = registry.check(OP, 1, payload)
    assert rejection is not None
    assert (rejection.code, rejection.field) == (RejectCode.INVALID_PAYLOAD, "payload")


def test_absurdly_deep_nesting_is_rejected_not_raised(registry: SchemaRegistry) -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    payload = example(OP, 1)
    payload["note"] = deep
    rejection = registry.check(OP, 1, payload)
    assert rejection is not None
    assert (rejection.code, rejection.field) == (RejectCode.INVALID_PAYLOAD, "payload")


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


def with_thing_id(subschema: object) -> dict[str, Any]:
    return with_schema(properties={"thingId": subschema})


def load_raises(root: Path, offending: Path, problem: str) -> None:
    with pytest.raises(SchemaRegistryError) as raised:
        SchemaRegistry.load(root)
    assert str(raised.value).startswith(f"{offending}: "), "the message names the path first"
    assert problem in str(raised.value)


THING = Path("Thing.Happened")
V1 = THING / "v1.json"
BROKEN: list[Any] = [
    pytest.param(V1, "{not json", "cannot read a JSON schema", id="not-json"),
    pytest.param(V1, '{"type": "object", "type": "array"}', "duplicate key 'type'", id="dup-key"),
    pytest.param(V1, '{"type": NaN}', "NaN is not JSON", id="nan"),
    pytest.param(V1, "[]", "must be a JSON object", id="not-an-object"),
    pytest.param(
        V1,
        with_thing_id({"type": "strnig"}),
        "invalid schema: \"strnig\" is not valid under any of the schemas listed in the 'anyOf'"
        " keyword (at properties/thingId/type)",
        id="invalid-schema",
    ),
    pytest.param(
        V1,
        with_thing_id({"type": "string", "pattern": "(unclosed"}),
        'invalid schema: "(unclosed" is not a "regex" (at properties/thingId/pattern)',
        id="invalid-regex",
    ),
    pytest.param(
        V1,
        with_schema(**{"$id": "urn:sync-gateway:schema:Thing.Happened:v2"}),
        '"$id" must be "urn:sync-gateway:schema:Thing.Happened:v1"',
        id="wrong-id",
    ),
    pytest.param(V1, with_schema(**{"$schema": None}), '"$schema" must be', id="no-$schema"),
    pytest.param(
        V1,
        with_schema(**{"$schema": "http://json-schema.org/draft-07/schema#"}),
        '"$schema" must be',
        id="draft-7",
    ),
    pytest.param(V1, with_schema(type="array"), 'must have "type": "object"', id="array-schema"),
    pytest.param(
        V1,
        with_thing_id({"type": "string", "format": "date-time"}),
        '"format": "date-time" would not be enforced',
        id="format",
    ),
    pytest.param(
        V1,
        with_thing_id({"$ref": "#/$defs/missing"}),
        "invalid schema: Pointer '/$defs/missing' does not exist",
        id="dangling-ref",
    ),
    pytest.param(
        V1,
        with_thing_id({"$ref": "https://example.com/id.json"}),
        "'https://example.com/id.json' is not present",
        id="remote-ref-is-never-fetched",
    ),
    pytest.param(
        V1,
        with_thing_id({"$ref": "urn:sync-gateway:schema:Thing.Missing:v1"}),
        "invalid schema: Resource 'urn:sync-gateway:schema:Thing.Missing:v1' is not present",
        id="ref-to-unknown-id",
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
    # A bad file is named itself; a badly named directory is named, not the file in it.
    offending = tmp_path / (relative if relative.parent == THING else relative.parent)
    load_raises(tmp_path, offending, problem)


def test_a_directory_posing_as_a_schema_file_raises(tmp_path: Path) -> None:
    (tmp_path / V1).mkdir(parents=True)
    load_raises(tmp_path, tmp_path / V1, "expected only schema files")


def test_an_event_type_directory_without_schemas_raises(tmp_path: Path) -> None:
    write(tmp_path / THING / "v1.example.json", {"thingId": "t-1"})
    load_raises(tmp_path, tmp_path / THING, "no schema file")


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_an_unusable_root_raises(tmp_path: Path, make: str) -> None:
    root = tmp_path / "schemas"
    if make == "empty":
        root.mkdir()
    elif make == "file":
        root.write_text("")
    load_raises(root, root, "")


def test_schema_registry_error_is_the_gateway_error() -> None:
    assert SchemaRegistryError is errors.SchemaRegistryError
    assert issubclass(SchemaRegistryError, errors.GatewayError)


def test_examples_hidden_entries_and_root_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / V1, minimal_schema())
    write(tmp_path / THING / "v1.example.json", "not even json")
    write(tmp_path / THING / ".v1.json.swp", "junk")
    write(tmp_path / ".git" / "HEAD", "junk")
    write(tmp_path / "README.md", "# Schemas")
    registry = SchemaRegistry.load(tmp_path)
    assert registry.event_types == ("Thing.Happened",)
    assert registry.check("Thing.Happened", 1, {"thingId": "t-1"}) is None


def test_a_schema_may_refer_to_another_schema_by_id(tmp_path: Path) -> None:
    base = minimal_schema()
    base["$defs"] = {"money": {"type": "string", "pattern": "^[0-9]+[.][0-9]{2}$"}}
    write(tmp_path / V1, base)
    other = minimal_schema("Thing.Priced")
    other["properties"]["price"] = {
        "$ref": "urn:sync-gateway:schema:Thing.Happened:v1#/$defs/money"
    }
    write(tmp_path / "Thing.Priced" / "v1.json", other)
    registry = SchemaRegistry.load(tmp_path)
    assert registry.check("Thing.Priced", 1, {"thingId": "t", "price": "1.00"}) is None
    rejection = registry.check("Thing.Priced", 1, {"thingId": "t", "price": "1.0"})
    assert rejection is not None
    assert rejection.field == "payload.price"


def test_every_draft_2020_12_keyword_is_enforced(tmp_path: Path) -> None:
    schema = minimal_schema()
    schema["properties"]["tags"] = {"type": "array", "uniqueItems": True}
    write(tmp_path / V1, schema)
    registry = SchemaRegistry.load(tmp_path)
    assert registry.check("Thing.Happened", 1, {"thingId": "t", "tags": ["a", "b"]}) is None
    rejection = registry.check("Thing.Happened", 1, {"thingId": "t", "tags": ["a", "a"]})
    assert rejection == Rejection(
        RejectCode.INVALID_PAYLOAD, '["a","a"] has non-unique elements', "payload.tags"
    )


@pytest.mark.parametrize(
    ("pattern", "value", "valid"),
    [
        ("^[A-Z]{3}$", "EUR", True),
        ("^[A-Z]{3}$", "EUR\n", False),  # "$" is the end of input, not before a final newline
        ("^\\$[0-9]+$", "$12", True),  # an escaped "$" is a literal dollar sign
        ("^\\$[0-9]+$", "$12\n", False),
        ("^[€$][0-9]+$", "$5", True),  # so is "$" in a character class
        ("[0-9]", "abc1def", True),  # patterns are not anchored unless they say so
        ("^(a|b$)", "b\n", False),
        ("^(a|b$)", "a\n", True),
        ("^\\d$", "٣", False),  # "\d" is ASCII digits only
    ],
)
def test_patterns_have_ecma_262_semantics(
    tmp_path: Path, pattern: str, value: str, valid: bool
) -> None:
    write(tmp_path / V1, with_thing_id({"type": "string", "pattern": pattern}))
    registry = SchemaRegistry.load(tmp_path)
    assert (registry.check("Thing.Happened", 1, {"thingId": value}) is None) is valid


# -- properties --------------------------------------------------------------------------------

KNOWN = [type_and_version(f) for f in SCHEMA_FILES]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON and msgpack decoders yield
    | st.floats(allow_nan=False, allow_infinity=False)  # the envelope refuses NaN and infinities
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


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
        and 0 < len(rejection.message) <= 160
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


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_rejection_of_a_mutated_example_points_at_or_below_the_change(
    registry: SchemaRegistry, data: st.DataObject
) -> None:
    event_type, version = data.draw(st.sampled_from(KNOWN), label="schema")
    payload = copy.deepcopy(example(event_type, version))
    *parents, last = data.draw(st.sampled_from(list(node_paths(payload))), label="path")
    parent: Any = payload
    for part in parents:
        parent = parent[part]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
    if action == "replace":
        parent[last] = data.draw(json_values, label="value")
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=10), label="new key")] = data.draw(json_values)
    else:
        parent.insert(last, data.draw(json_values, label="new item"))

    rejection = registry.check(event_type, version, payload)

    if rejection is not None:
        assert rejection.code is RejectCode.INVALID_PAYLOAD
        assert rejection.field is not None
        near = ".".join(["payload", *map(str, parents)])
        assert rejection.field == near or rejection.field.startswith(near + "."), rejection
