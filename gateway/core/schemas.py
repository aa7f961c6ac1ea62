"""Versioned payload schemas: loaded once from disk, then checked against every ingested event.

Layout of the schema root (``schemas/`` in the repository)::

    <root>/<EventType>/v<N>.json          JSON Schema (draft 2020-12) of the payload, version N
    <root>/<EventType>/v<N>.example.json  a valid example payload (documentation and tests only)

``<EventType>`` is dotted PascalCase (``Order.Placed``) and ``N`` a positive integer without
leading zeros. Entries whose names start with ``.`` are ignored everywhere, and so are plain files
directly under the root (e.g. a README); anything else that does not fit the layout is an error.

Loading is strict, so that a broken schema stops the gateway at start-up instead of rejecting (or
worse, accepting) events at run time. :meth:`SchemaRegistry.load` raises
:class:`~gateway.errors.SchemaRegistryError`, whose message starts with the offending path, when
a name is malformed, a file is not JSON (or repeats a key), its ``$schema`` is not draft 2020-12,
it is not a valid draft 2020-12 schema (including a ``pattern`` that is not a regex), its ``$id``
is not ``urn:sync-gateway:schema:<EventType>:v<N>``, its top level is not ``"type": "object"``, a
``$ref`` reachable from it cannot be resolved, or it uses ``format`` (formats are not enforced,
so a ``format`` would be a silent no-op: use a ``pattern``).

Validation is done by ``jsonschema_rs`` (Rust; a few microseconds per payload) with the standard
draft 2020-12 semantics, in particular:

* ``integer`` accepts a float with a zero fraction: ``2.0`` is a valid integer.
* ``pattern`` uses ECMA-262-like regexes: ``$`` matches only at the very end of the string (so
  ``"EUR\\n"`` does not match ``^[A-Z]{3}$``) and ``\\d``, ``\\w`` are ASCII-only.

A ``$ref`` may name another schema of the root by its ``$id``; nothing is ever fetched from the
network, since the only resources the validators can retrieve are the loaded schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
from jsonschema_rs import ReferencingError, ValidationError, ValidationErrorKind

from gateway.core.rejections import RejectCode, Rejection
from gateway.errors import SchemaRegistryError

__all__ = ["SchemaRegistry", "SchemaRegistryError", "default_schema_root"]


def default_schema_root() -> Path:
    """The ``schemas/`` directory of this repository."""
    return Path(__file__).parents[2] / "schemas"


_DRAFT_URI: Final = "https://json-schema.org/draft/2020-12/schema"
_ID_PREFIX: Final = "urn:sync-gateway:schema:"
_EVENT_TYPE_NAME: Final = re.compile(r"[A-Z][A-Za-z0-9]*(?:\.[A-Z][A-Za-z0-9]*)+")
_SCHEMA_FILE: Final = re.compile(r"v([1-9][0-9]*)\.json")
_EXAMPLE_FILE: Final = re.compile(r"v[1-9][0-9]*\.example\.json")
_MAX_MESSAGE: Final = 160


class SchemaRegistry:
    """The payload schemas of every known event type and version, ready to check payloads."""

    __slots__ = ("_validators",)

    def __init__(self, validators: Mapping[str, Mapping[int, jsonschema_rs.Validator]]) -> None:
        """Use :meth:`load`, which builds the argument from a schema directory."""
        self._validators = {
            event_type: dict(sorted(by_version.items()))
            for event_type, by_version in sorted(validators.items())
        }

    @classmethod
    def load(cls, root: Path) -> SchemaRegistry:
        """Load and check every ``<root>/<EventType>/v<N>.json``; see the module docstring."""
        if not root.is_dir():
            raise SchemaRegistryError(f"{root}: schema root is not a directory")
        found: dict[str, dict[int, tuple[Path, dict[str, Any]]]] = {}
        for type_dir in sorted(root.iterdir()):
            if type_dir.name.startswith(".") or not type_dir.is_dir():
                continue
            if _EVENT_TYPE_NAME.fullmatch(type_dir.name) is None:
                raise SchemaRegistryError(
                    f"{type_dir}: directory name is not an event type such as 'Order.Placed'"
                )
            versions = found[type_dir.name] = {}
            for file in sorted(type_dir.iterdir()):
                if file.name.startswith(".") or _EXAMPLE_FILE.fullmatch(file.name):
                    continue
                match = _SCHEMA_FILE.fullmatch(file.name)
                if match is None or not file.is_file():
                    raise SchemaRegistryError(
                        f"{file}: expected only schema files v<N>.json"
                        " (and examples v<N>.example.json)"
                    )
                version = int(match[1])
                versions[version] = (file, _read_schema(file, type_dir.name, version))
            if not versions:
                raise SchemaRegistryError(f"{type_dir}: no schema file v<N>.json in this directory")
        if not found:
            raise SchemaRegistryError(f"{root}: no event type directories with schemas")
        by_id = {
            schema["$id"]: schema for versions in found.values() for _, schema in versions.values()
        }
        return cls(
            {
                event_type: {
                    version: _compile(file, schema, by_id)
                    for version, (file, schema) in versions.items()
                }
                for event_type, versions in found.items()
            }
        )

    @property
    def event_types(self) -> tuple[str, ...]:
        """Every known event type, sorted."""
        return tuple(self._validators)

    def versions(self, event_type: str) -> tuple[int, ...]:
        """The known versions of ``event_type``, ascending; empty if the type is unknown."""
        return tuple(self._validators.get(event_type, ()))

    def check(
        self, event_type: str, version: int, payload: Mapping[str, object]
    ) -> Rejection | None:
        """``None`` if ``payload`` conforms to the schema of ``event_type`` at ``version``.

        Otherwise the most relevant problem as a :class:`Rejection`: of the errors found at the
        shallowest depth, the first. Its ``field`` is the dotted path of the offending value from
        the envelope root, such as ``payload.items.0.quantity`` (for a missing or unexpected
        property, or a bad property name, the path of that property). Never raises.
        """
        by_version = self._validators.get(event_type)
        if by_version is None:
            message = f"unknown event type {event_type!r}"
            return _reject(RejectCode.UNKNOWN_EVENT_TYPE, message, "event_type")
        validator = by_version.get(version)
        if validator is None:
            known = ", ".join(map(str, by_version))
            message = f"unknown version {version!r} of {event_type}; known versions: {known}"
            return _reject(RejectCode.UNKNOWN_EVENT_VERSION, message, "event_version")
        try:
            if validator.is_valid(payload):
                return None
            error = min(validator.iter_errors(payload), key=lambda e: len(e.instance_path))
        except BaseException as exc:
            # Not JSON-like or nested too deeply (ValueError), or a bug in jsonschema_rs: pyo3's
            # PanicException, a BaseException that cannot be imported by name.
            panic = type(exc).__name__ == "PanicException"
            if not (panic or isinstance(exc, (ValueError, RecursionError))):
                raise
            return _reject(RejectCode.INVALID_PAYLOAD, f"cannot be checked: {exc}", "payload")
        return _reject(RejectCode.INVALID_PAYLOAD, error.message, _field(error))


# -- loading ------------------------------------------------------------------------------------


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
    """The schema in ``file``, checked except for what needs the other schemas (``$ref``)."""
    try:
        schema = json.loads(
            file.read_text(encoding="utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SchemaRegistryError(f"{file}: cannot read a JSON schema: {exc}") from exc
    if not isinstance(schema, dict):
        raise SchemaRegistryError(f"{file}: a payload schema must be a JSON object")
    if schema.get("$schema") != _DRAFT_URI:
        raise SchemaRegistryError(f'{file}: "$schema" must be "{_DRAFT_URI}"')
    expected_id = f"{_ID_PREFIX}{event_type}:v{version}"
    if schema.get("$id") != expected_id:
        raise SchemaRegistryError(f'{file}: "$id" must be "{expected_id}"')
    if schema.get("type") != "object":
        raise SchemaRegistryError(f'{file}: a payload schema must have "type": "object"')
    for subschema in _subschemas(schema):
        if isinstance(subschema.get("format"), str):
            raise SchemaRegistryError(
                f'{file}: "format": "{subschema["format"]}" would not be enforced; use a "pattern"'
            )
    return schema


def _subschemas(schema: object) -> Iterator[dict[str, Any]]:
    """Every (sub)schema object in ``schema``, skipping keywords whose values are data."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key, value in schema.items():
        if key in ("const", "enum", "default", "examples"):
            continue
        if key in ("properties", "patternProperties", "$defs", "dependentSchemas"):
            value = list(value.values()) if isinstance(value, dict) else value
        for item in value if isinstance(value, list) else [value]:
            yield from _subschemas(item)


def _compile(
    file: Path, schema: dict[str, Any], by_id: dict[str, dict[str, Any]]
) -> jsonschema_rs.Validator:
    """A validator for ``schema``; its ``$ref``s may reach the other schemas by ``$id``."""
    try:
        # Checks the schema against the draft 2020-12 meta-schema, compiles its patterns and
        # resolves its $refs. The retriever serves only the loaded schemas: no network access.
        return jsonschema_rs.validator_for(schema, retriever=by_id.__getitem__)
    except (ValidationError, ReferencingError) as exc:
        where = getattr(exc, "instance_path", None)
        at = f" (at {'/'.join(map(str, where))})" if where else ""
        raise SchemaRegistryError(f"{file}: invalid schema: {exc.message}{at}") from exc


# -- rejections ---------------------------------------------------------------------------------


def _field(error: ValidationError) -> str:
    path = ["payload", *map(str, error.instance_path)]
    match error.kind:
        case ValidationErrorKind.Required(property=name):
            path.append(name)
        case ValidationErrorKind.AdditionalProperties(unexpected=[name, *_]):
            path.append(name)
        case ValidationErrorKind.PropertyNames(error=name_error):
            path.append(str(name_error.instance))
    return ".".join(path)


def _reject(code: RejectCode, message: str, field: str) -> Rejection:
    """A rejection whose message is cut in the middle to at most ``_MAX_MESSAGE`` characters.

    jsonschema_rs messages start with the offending value and end with the problem, as in
    ``"EUR\\n" does not match "^[A-Z]{3}$"``, so the end is kept whole.
    """
    if len(message) > _MAX_MESSAGE:
        message = message[:40] + " ... " + message[-(_MAX_MESSAGE - 45) :]
    return Rejection(code, message, field)
