"""Versioned payload schemas: loaded once from disk, then checked against every ingested event.

Layout of the schema root (``schemas/`` in the repository)::

    <root>/<EventType>/v<N>.json          JSON Schema (draft 2020-12) of the payload, version N
    <root>/<EventType>/v<N>.example.json  a valid example payload (documentation and tests only)

``<EventType>`` is dotted PascalCase (``Order.Placed``) and ``N`` a positive integer without
leading zeros. Entries whose names start with ``.`` are ignored everywhere, and so are plain files
directly under the root (e.g. a README); anything else that does not fit the layout is an error.

Loading is strict, so that a broken schema stops the gateway at start-up instead of rejecting (or
worse, accepting) events at run time. :meth:`SchemaRegistry.load` raises
:class:`SchemaRegistryError` naming the offending file when a name is malformed, a file is not
JSON (or repeats a key), a schema is not valid draft 2020-12, its ``$id`` is not
``urn:sync-gateway:schema:<EventType>:v<N>``, a ``$ref`` cannot be resolved, or a schema uses
``format`` (no format checker is enabled, so a ``format`` would be silently unenforced: use a
``pattern``).

Validation is stricter than jsonschema's defaults in two ways:

* ``integer`` means an integer *value*: ``2.0`` is not an integer (JSON Schema accepts it), so
  a float never reaches a consumer that expects a whole number.
* ``$`` in a ``pattern`` matches only at the very end of the string, as ECMA-262 (which JSON
  Schema prescribes for patterns) says; Python's ``re`` would also match before a trailing
  newline and accept ``"EUR\\n"`` as a currency code.

Checking is fast and needs no I/O. Each (type, version) gets, once at load time, a jsonschema
validator and a predicate compiled from the schema to plain closures (about 40 times faster than
jsonschema, whose ``descend()`` builds a validator object per subschema): a valid payload costs
only the predicate; jsonschema runs only to explain an invalid one. No ``$ref`` is ever fetched
from the network: the reference registry holds the loaded schemas and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from numbers import Number
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema import validators as _jsonschema_validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.protocols import Validator
from referencing.jsonschema import DRAFT202012

from gateway.core.rejections import RejectCode, Rejection

if TYPE_CHECKING:
    from referencing._core import Resolver  # not re-exported by referencing

__all__ = ["SchemaRegistry", "SchemaRegistryError", "default_schema_root"]


class SchemaRegistryError(Exception):
    """A schema file or directory under the schema root is malformed (raised at start-up only).

    ``path`` is the offending file or directory; the message names it and says what is wrong.
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def default_schema_root() -> Path:
    """The ``schemas/`` directory of this repository."""
    return Path(__file__).parents[2] / "schemas"


_DRAFT_URI: Final = "https://json-schema.org/draft/2020-12/schema"
_ID_PREFIX: Final = "urn:sync-gateway:schema:"
_EVENT_TYPE_NAME: Final = re.compile(r"[A-Z][A-Za-z0-9]*(?:\.[A-Z][A-Za-z0-9]*)+")
_SCHEMA_FILE: Final = re.compile(r"v([1-9][0-9]*)\.json")
_EXAMPLE_FILE: Final = re.compile(r"v[1-9][0-9]*\.example\.json")


# -- the validator class: draft 2020-12 with a strict "integer" and ECMA-262 "$" -----------------


def _is_integer(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_object(_checker: object, instance: object) -> bool:
    return isinstance(instance, (dict, Mapping))


_PATTERNS: dict[str, re.Pattern[str]] = {}
"""Schema ``pattern`` -> compiled Python regex with ECMA-262 ``$``. Filled at load time."""


def _ecma_to_python(pattern: str) -> str:
    """Rewrite each ``$`` assertion (unescaped, outside a character class) as ``\\Z``."""
    out: list[str] = []
    in_class = escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            out.append(r"\Z")
            continue
        out.append(char)
    return "".join(out)


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = _PATTERNS[pattern] = re.compile(_ecma_to_python(pattern))
    return compiled


def _pattern_keyword(
    _validator: Validator, pattern: str, instance: object, _schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if isinstance(instance, str) and _compile_pattern(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _properties_keyword(
    validator: Any, properties: Mapping[str, Any], instance: Any, _schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    # As jsonschema's, except that the error of a present property whose schema is ``false``
    # keeps the property's path (jsonschema's descend() drops it).
    if not _is_object(None, instance):
        return
    for name, subschema in properties.items():
        if name not in instance:
            continue
        if subschema is False:
            yield ValidationError(
                f"False schema does not allow {instance[name]!r}",
                validator="false",
                validator_value=False,
                instance=instance[name],
                schema=False,
                path=(name,),
                schema_path=(name,),
            )
        else:
            yield from validator.descend(instance[name], subschema, path=name, schema_path=name)


_ValidatorClass: Final[type[Validator]] = _jsonschema_validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    validators={"pattern": _pattern_keyword, "properties": _properties_keyword},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "object": _is_object}
    ),
)


# -- the fast path: each schema compiled once to plain closures ---------------------------------
#
# jsonschema builds a new validator object for every subschema it descends into, which costs about
# half a millisecond for an Order.Placed with three lines. The hot path therefore asks a predicate
# compiled from the schema whether the payload is valid, and runs jsonschema only to explain a
# payload that is not. For the keywords it supports (``_FAST_KEYWORDS``), the predicate has exactly
# the semantics of ``_ValidatorClass`` (tests/core/test_schemas.py checks that they agree); a
# schema using any other keyword gets no fast path and is validated by jsonschema alone.

_Check = Callable[[Any], bool]

_FAST_KEYWORDS: Final = frozenset(
    {
        # annotations, or handled with another keyword
        *("$schema", "$id", "$defs", "definitions", "$comment", "title", "description"),
        *("default", "examples", "deprecated", "readOnly", "writeOnly", "then", "else"),
        # assertions and applicators
        *("type", "enum", "const", "$ref", "allOf", "anyOf", "oneOf", "not", "if"),
        *("minLength", "maxLength", "pattern"),
        *("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"),
        *("items", "minItems", "maxItems"),
        *("properties", "required", "additionalProperties", "propertyNames"),
        *("minProperties", "maxProperties"),
    }
)
_STRING_KEYWORDS: Final = ("minLength", "maxLength", "pattern")
_NUMBER_KEYWORDS: Final = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_ARRAY_KEYWORDS: Final = ("items", "minItems", "maxItems")
_OBJECT_KEYWORDS: Final = (
    *("properties", "required", "additionalProperties", "propertyNames"),
    *("minProperties", "maxProperties"),
)


class _NoFastPath(Exception):
    """The schema uses something the fast path does not implement."""


def _always(_instance: Any) -> bool:
    return True


def _never(_instance: Any) -> bool:
    return False


def _is_json_number(instance: Any) -> bool:
    return isinstance(instance, Number) and not isinstance(instance, bool)


_TYPE_TESTS: Final[Mapping[str, _Check]] = {
    "null": lambda instance: instance is None,
    "boolean": lambda instance: isinstance(instance, bool),
    "integer": lambda instance: isinstance(instance, int) and not isinstance(instance, bool),
    "number": _is_json_number,
    "string": lambda instance: isinstance(instance, str),
    "array": lambda instance: isinstance(instance, list),
    "object": lambda instance: isinstance(instance, (dict, Mapping)),
}


def _all_of(checks: list[_Check]) -> _Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda instance: first(instance) and second(instance)
    every = tuple(checks)

    def check(instance: Any) -> bool:
        for one in every:  # noqa: SIM110 (all() would allocate a generator per call)
            if not one(instance):
                return False
        return True

    return check


def _type_check(types: Sequence[str]) -> _Check:
    tests = tuple(_TYPE_TESTS[name] for name in types)

    def check(instance: Any) -> bool:
        for test in tests:  # noqa: SIM110 (any() would allocate a generator per call)
            if test(instance):
                return True
        return False

    return check


def _string_check(
    typed: bool, min_length: int | None, max_length: int | None, regex: re.Pattern[str] | None
) -> _Check:
    def check(instance: Any) -> bool:
        if not isinstance(instance, str):
            return not typed
        if min_length is not None and len(instance) < min_length:
            return False
        if max_length is not None and len(instance) > max_length:
            return False
        return regex is None or regex.search(instance) is not None

    return check


def _number_check(kind: str | None, schema: Mapping[str, Any]) -> _Check:
    """``kind``: "integer" or "number" if the schema's type is exactly that, else None."""
    minimum = schema.get("minimum")
    maximum = schema.get("maximum")
    exclusive_minimum = schema.get("exclusiveMinimum")
    exclusive_maximum = schema.get("exclusiveMaximum")

    def check(instance: Any) -> bool:
        cls = type(instance)
        if cls is float:
            if kind == "integer":
                return False
        elif cls is not int:
            if not _is_json_number(instance):
                return kind is None
            if kind == "integer" and not isinstance(instance, int):
                return False
        # The comparisons are written as jsonschema's, so that NaN behaves the same.
        if minimum is not None and instance < minimum:
            return False
        if maximum is not None and instance > maximum:
            return False
        if exclusive_minimum is not None and instance <= exclusive_minimum:
            return False
        return not (exclusive_maximum is not None and instance >= exclusive_maximum)

    return check


def _array_check(
    typed: bool, items: _Check | None, min_items: int | None, max_items: int | None
) -> _Check:
    def check(instance: Any) -> bool:
        if not isinstance(instance, list):
            return not typed
        if min_items is not None and len(instance) < min_items:
            return False
        if max_items is not None and len(instance) > max_items:
            return False
        if items is not None:
            for item in instance:
                if not items(item):
                    return False
        return True

    return check


def _object_check(
    typed: bool,
    required: tuple[str, ...],
    properties: dict[str, _Check],
    additional: _Check | None,
    names: _Check | None,
    min_properties: int | None,
    max_properties: int | None,
) -> _Check:
    per_property = bool(properties) or additional is not None or names is not None

    def check(instance: Any) -> bool:
        if not isinstance(instance, (dict, Mapping)):
            return not typed
        for name in required:
            if name not in instance:
                return False
        if min_properties is not None and len(instance) < min_properties:
            return False
        if max_properties is not None and len(instance) > max_properties:
            return False
        if per_property:
            for key, value in instance.items():
                declared = properties.get(key)
                if declared is None:
                    if additional is not None and not additional(value):
                        return False
                elif not declared(value):
                    return False
                if names is not None and not names(key):
                    return False
        return True

    return check


class _FastCompiler:
    """Compiles one schema (and what its ``$ref``s reach) into a predicate; see above."""

    def __init__(self) -> None:
        self._done: dict[int, _Check] = {}
        self._active: set[int] = set()

    def compile(self, schema: Any, resolver: Resolver[Any], root: bool) -> _Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise _NoFastPath("not a schema")
        unsupported = schema.keys() - _FAST_KEYWORDS
        if unsupported:
            raise _NoFastPath(f"keywords {sorted(unsupported)}")
        if "$id" in schema and not root:
            raise _NoFastPath("nested $id")
        sub = self._sub(resolver)

        declared = schema.get("type")
        types: list[str] | None = [declared] if isinstance(declared, str) else declared
        only = types[0] if types is not None and len(types) == 1 else None
        checks: list[_Check] = []
        if only == "string" or any(k in schema for k in _STRING_KEYWORDS):
            pattern = schema.get("pattern")
            checks.append(
                _string_check(
                    only == "string",
                    schema.get("minLength"),
                    schema.get("maxLength"),
                    None if pattern is None else _compile_pattern(pattern),
                )
            )
        if only in ("integer", "number") or any(k in schema for k in _NUMBER_KEYWORDS):
            checks.append(_number_check(only if only in ("integer", "number") else None, schema))
        if only == "array" or any(k in schema for k in _ARRAY_KEYWORDS):
            items = schema.get("items")
            checks.append(
                _array_check(
                    only == "array",
                    None if items is None else sub(items),
                    schema.get("minItems"),
                    schema.get("maxItems"),
                )
            )
        if only == "object" or any(k in schema for k in _OBJECT_KEYWORDS):
            additional = schema.get("additionalProperties")
            names = schema.get("propertyNames")
            checks.append(
                _object_check(
                    only == "object",
                    tuple(schema.get("required", ())),
                    {name: sub(s) for name, s in schema.get("properties", {}).items()},
                    None if additional is None else sub(additional),
                    None if names is None else sub(names),
                    schema.get("minProperties"),
                    schema.get("maxProperties"),
                )
            )
        fused = only in ("string", "integer", "number", "array", "object")
        if types is not None and not fused:
            checks.insert(0, _type_check(types))
        if "enum" in schema:
            checks.append(self._enum(schema["enum"]))
        if "const" in schema:
            checks.append(self._enum([schema["const"]]))
        if "$ref" in schema:
            checks.append(self._ref(schema["$ref"], resolver))
        if "allOf" in schema:
            checks.append(_all_of([sub(s) for s in schema["allOf"]]))
        if "anyOf" in schema:
            checks.append(self._any_of([sub(s) for s in schema["anyOf"]]))
        if "oneOf" in schema:
            checks.append(self._one_of([sub(s) for s in schema["oneOf"]]))
        if "not" in schema:
            negated = sub(schema["not"])
            checks.append(lambda instance: not negated(instance))
        if "if" in schema:
            checks.append(
                self._if(
                    sub(schema["if"]),
                    sub(schema.get("then", True)),
                    sub(schema.get("else", True)),
                )
            )
        return _all_of(checks)

    def _sub(self, resolver: Resolver[Any]) -> Callable[[Any], _Check]:
        return lambda schema: self.compile(schema, resolver, root=False)

    def _ref(self, ref: str, resolver: Resolver[Any]) -> _Check:
        resolved = resolver.lookup(ref)
        target = resolved.contents
        key = id(target)
        done = self._done.get(key)
        if done is not None:
            return done
        if key in self._active:
            raise _NoFastPath(f"recursive $ref {ref!r}")
        self._active.add(key)
        try:
            check = self.compile(target, resolved.resolver, root="#" not in ref.rstrip("#"))
        finally:
            self._active.discard(key)
        self._done[key] = check
        return check

    @staticmethod
    def _enum(values: list[Any]) -> _Check:
        if not all(isinstance(value, str) for value in values):
            raise _NoFastPath("enum or const of non-strings")
        allowed = frozenset(values)
        return lambda instance: isinstance(instance, str) and instance in allowed

    @staticmethod
    def _any_of(checks: list[_Check]) -> _Check:
        every = tuple(checks)
        return lambda instance: any(one(instance) for one in every)

    @staticmethod
    def _one_of(checks: list[_Check]) -> _Check:
        every = tuple(checks)
        return lambda instance: sum(1 for one in every if one(instance)) == 1

    @staticmethod
    def _if(condition: _Check, then: _Check, otherwise: _Check) -> _Check:
        return lambda instance: then(instance) if condition(instance) else otherwise(instance)


def _fast_path(schema: dict[str, Any], registry: referencing.Registry[Any]) -> _Check | None:
    """The compiled predicate of ``schema``, or None if it uses what the fast path lacks."""
    try:
        return _FastCompiler().compile(schema, registry.resolver(base_uri=schema["$id"]), root=True)
    except (_NoFastPath, referencing.exceptions.Unresolvable):
        return None


# -- the registry ------------------------------------------------------------------------------


class _Compiled:
    """What checking one (type, version) needs: a fast predicate and the explaining validator."""

    __slots__ = ("fast", "has_fast_path", "validator")

    def __init__(self, schema: dict[str, Any], registry: referencing.Registry[Any]) -> None:
        self.validator: Validator = _ValidatorClass(schema, registry=registry)
        fast = _fast_path(schema, registry)
        self.has_fast_path = fast is not None
        self.fast: _Check = self.validator.is_valid if fast is None else fast

    def explain(self, payload: Any) -> Rejection | None:
        """The most relevant problem of ``payload`` as a Rejection (None if there is none)."""
        try:
            errors = self.validator.iter_errors(payload)
            first = next(errors, None)
            if first is None:
                return None
            return _rejection(best_match(chain((first,), errors)))
        except RecursionError:
            return Rejection(RejectCode.INVALID_PAYLOAD, "nested too deeply", "payload")


class SchemaRegistry:
    """The payload schemas of every known event type and version, ready to check payloads."""

    __slots__ = ("_compiled", "_unknown_version_hint")

    def __init__(self, compiled: Mapping[str, Mapping[int, _Compiled]]) -> None:
        """Use :meth:`load`, which builds the argument from a schema directory."""
        self._compiled: dict[str, dict[int, _Compiled]] = {
            event_type: dict(sorted(by_version.items()))
            for event_type, by_version in sorted(compiled.items())
        }
        self._unknown_version_hint: dict[str, str] = {
            event_type: "known versions: " + ", ".join(map(str, by_version))
            for event_type, by_version in self._compiled.items()
        }

    @classmethod
    def load(cls, root: Path) -> SchemaRegistry:
        """Load and check every ``<root>/<EventType>/v<N>.json``; see the module docstring."""
        if not root.is_dir():
            raise SchemaRegistryError(root, "schema root is not a directory")
        loaded: dict[str, dict[int, tuple[Path, dict[str, Any]]]] = {}
        for type_dir in sorted(root.iterdir()):
            if type_dir.name.startswith(".") or not type_dir.is_dir():
                continue
            if _EVENT_TYPE_NAME.fullmatch(type_dir.name) is None:
                raise SchemaRegistryError(
                    type_dir, "directory name is not an event type such as 'Order.Placed'"
                )
            versions = loaded[type_dir.name] = {}
            for file in sorted(type_dir.iterdir()):
                if file.name.startswith(".") or _EXAMPLE_FILE.fullmatch(file.name):
                    continue
                match = _SCHEMA_FILE.fullmatch(file.name)
                if match is None or not file.is_file():
                    raise SchemaRegistryError(
                        file, "expected only schema files named v<N>.json (and v<N>.example.json)"
                    )
                version = int(match[1])
                versions[version] = (file, _read_schema(file, type_dir.name, version))
            if not versions:
                raise SchemaRegistryError(type_dir, "no schema file v<N>.json in this directory")
        if not loaded:
            raise SchemaRegistryError(root, "no event type directories with schemas")

        registry: referencing.Registry[Any] = referencing.Registry().with_resources(
            (schema["$id"], DRAFT202012.create_resource(schema))
            for by_version in loaded.values()
            for _, schema in by_version.values()
        )
        compiled: dict[str, dict[int, _Compiled]] = {}
        for event_type, by_version in loaded.items():
            for version, (file, schema) in by_version.items():
                _check_references(file, schema, registry)
                compiled.setdefault(event_type, {})[version] = _Compiled(schema, registry)
        return cls(compiled)

    @property
    def event_types(self) -> tuple[str, ...]:
        """Every known event type, sorted."""
        return tuple(self._compiled)

    def versions(self, event_type: str) -> tuple[int, ...]:
        """The known versions of ``event_type``, ascending; empty if the type is unknown."""
        return tuple(self._compiled.get(event_type, ()))

    def check(
        self, event_type: str, version: int, payload: Mapping[str, object]
    ) -> Rejection | None:
        """``None`` if ``payload`` conforms to the schema of ``event_type`` at ``version``.

        Otherwise the most relevant problem as a :class:`Rejection`; for an invalid payload its
        ``field`` is the dotted path of the offending value from the envelope root, such as
        ``payload.items.0.quantity``. Never raises for a JSON-like payload.
        """
        by_version = self._compiled.get(event_type)
        if by_version is None:
            return Rejection(
                RejectCode.UNKNOWN_EVENT_TYPE,
                f"unknown event type {_short(event_type)}",
                "event_type",
            )
        compiled = by_version.get(version)
        if compiled is None:
            return Rejection(
                RejectCode.UNKNOWN_EVENT_VERSION,
                f"unknown version {_short(version)} of {event_type}; "
                + self._unknown_version_hint[event_type],
                "event_version",
            )
        if compiled.fast(payload):
            return None
        return compiled.explain(payload)


# -- loading helpers ---------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _read_schema(file: Path, event_type: str, version: int) -> dict[str, Any]:
    try:
        schema = json.loads(
            file.read_text(encoding="utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SchemaRegistryError(file, f"cannot read a JSON schema: {exc}") from exc
    if not isinstance(schema, dict):
        raise SchemaRegistryError(file, "a payload schema must be a JSON object")
    try:
        _ValidatorClass.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(root)"
        raise SchemaRegistryError(
            file, f"not a valid draft 2020-12 schema at {where}: {exc.message}"
        ) from exc
    if schema.get("$schema") != _DRAFT_URI:
        raise SchemaRegistryError(file, f'"$schema" must be "{_DRAFT_URI}"')
    expected_id = f"{_ID_PREFIX}{event_type}:v{version}"
    if schema.get("$id") != expected_id:
        raise SchemaRegistryError(file, f'"$id" must be "{expected_id}"')
    if schema.get("type") != "object":
        raise SchemaRegistryError(file, 'a payload schema must have "type": "object"')
    for subschema in _subschemas(schema):
        if isinstance(subschema.get("format"), str):
            raise SchemaRegistryError(
                file, f'"format": "{subschema["format"]}" would not be enforced; use a "pattern"'
            )
        pattern = subschema.get("pattern")
        if isinstance(pattern, str):
            try:
                _compile_pattern(pattern)
            except re.error as exc:
                raise SchemaRegistryError(file, f"pattern {pattern!r}: {exc}") from exc
    return schema


_SCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples"})


def _subschemas(schema: object) -> Iterator[dict[str, Any]]:
    """Every (sub)schema object in ``schema``, skipping keywords whose values are data."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key, value in schema.items():
        if key in _DATA_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for subschema in value.values():
                yield from _subschemas(subschema)
        elif isinstance(value, dict):
            yield from _subschemas(value)
        elif isinstance(value, list):
            for item in value:
                yield from _subschemas(item)


def _check_references(
    file: Path, schema: dict[str, Any], registry: referencing.Registry[Any]
) -> None:
    resolver = registry.resolver(base_uri=schema["$id"])
    for subschema in _subschemas(schema):
        for keyword in ("$ref", "$dynamicRef"):
            ref = subschema.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable as exc:
                raise SchemaRegistryError(file, f"cannot resolve {keyword} {ref!r}") from exc


# -- turning a ValidationError into a Rejection ---------------------------------------------------

_MAX_LISTED: Final = 5
_MAX_MESSAGE: Final = 160
_MAX_PATTERN_SHOWN: Final = 48


def _rejection(error: ValidationError) -> Rejection:
    field = "payload"
    for part in error.absolute_path:
        field = f"{field}.{part}"
    child, message = _explain(error)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    if child is not None:
        field = f"{field}.{child}"
    return Rejection(RejectCode.INVALID_PAYLOAD, message, field)


def _explain(error: ValidationError) -> tuple[str | None, str]:
    """(name of the offending child of ``error.instance`` if any, short message)."""
    keyword = error.validator
    value: Any = error.validator_value
    instance: Any = error.instance
    if _under_property_names(error):
        _, problem = _explain_value(keyword, value, instance, error)
        return str(instance), f"invalid property name: {problem}"
    if keyword == "required" and isinstance(instance, Mapping):
        missing = [name for name in value if name not in instance]
        if missing:
            noun = _plural(len(missing), "property")
            return str(missing[0]), f"missing required {noun} {_names(missing)}"
    if keyword == "additionalProperties" and isinstance(instance, Mapping):
        extra = _additional_properties(instance, error.schema)
        if extra:
            return extra[0], f"unexpected {_plural(len(extra), 'property')} {_names(extra)}"
    return _explain_value(keyword, value, instance, error)


def _explain_value(
    keyword: object, value: Any, instance: Any, error: ValidationError
) -> tuple[None, str]:
    got = f" (got {_short(instance)})"
    match keyword:
        case "type":
            expected = " or ".join(value) if isinstance(value, list) else str(value)
            return None, f"expected {expected}, got {_json_type(instance)}{_scalar(instance)}"
        case "enum":
            return None, f"must be one of {_names(value)}{got}"
        case "const":
            return None, f"must be {_short(value)}{got}"
        case "minimum":
            return None, f"must be >= {value}{got}"
        case "maximum":
            return None, f"must be <= {value}{got}"
        case "exclusiveMinimum":
            return None, f"must be > {value}{got}"
        case "exclusiveMaximum":
            return None, f"must be < {value}{got}"
        case "multipleOf":
            return None, f"must be a multiple of {value}{got}"
        case "pattern":
            return None, _pattern_message(value, error.schema) + got
        case "minLength":
            return None, f"must be at least {_count(value, 'character')} long{got}"
        case "maxLength":
            return None, f"must be at most {_count(value, 'character')} long"
        case "minItems":
            return None, f"must have at least {_count(value, 'item')}"
        case "maxItems":
            return None, f"must have at most {_count(value, 'item')}"
        case "uniqueItems":
            return None, "must not contain duplicate items"
        case "minProperties":
            return None, f"must have at least {_count(value, 'property')}"
        case "maxProperties":
            return None, f"must have at most {_count(value, 'property')}"
        case None | "false":
            return None, "is not allowed here"
    return None, error.message


def _pattern_message(pattern: str, schema: Any) -> str:
    """Show a short pattern; for a long one, the description of the value if it has one."""
    description = schema.get("description") if isinstance(schema, Mapping) else None
    if len(pattern) <= _MAX_PATTERN_SHOWN or not isinstance(description, str):
        return f"does not match the pattern {pattern}"
    return f"invalid format, expected {description.rstrip('.')}"


def _under_property_names(error: ValidationError) -> bool:
    """Whether ``error`` is about a property *name* (``instance`` is then the name)."""
    previous: object = None
    for part in error.absolute_schema_path:
        if part == "propertyNames" and previous not in _SCHEMA_MAPS:
            return True
        previous = None if previous in _SCHEMA_MAPS else part
    return False


def _additional_properties(instance: Mapping[Any, Any], schema: Any) -> list[str]:
    if not isinstance(schema, Mapping):
        return []
    declared = schema.get("properties", {})
    patterns = [_compile_pattern(p) for p in schema.get("patternProperties", {})]
    return [
        str(name)
        for name in instance
        if name not in declared
        and not (isinstance(name, str) and any(p.search(name) for p in patterns))
    ]


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return noun
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def _count(count: int, noun: str) -> str:
    return f"{count} {_plural(count, noun)}"


def _names(names: list[Any]) -> str:
    shown = ", ".join(_short(name) for name in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _json_type(instance: object) -> str:
    match instance:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case Mapping():
            return "object"
    return type(instance).__name__


def _scalar(instance: object) -> str:
    """`` <value>`` for a short scalar, else nothing."""
    if isinstance(instance, (str, int, float)) or instance is None:
        return f" {_short(instance)}"
    return ""


def _short(instance: object) -> str:
    """A short rendering of a value for a message: JSON spelling, long strings cut."""
    match instance:
        case None:
            return "null"
        case bool():
            return "true" if instance else "false"
        case int():
            return str(instance) if instance.bit_length() <= 64 else "a very large integer"
        case float():
            return repr(instance)
        case str():
            return repr(instance) if len(instance) <= 40 else repr(instance[:37]) + "..."
    kind = _json_type(instance)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
