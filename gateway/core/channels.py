"""Channels: which stream channels a Kafka record belongs to, by configurable rules.

A :class:`ChannelRule` names a topic and a template, e.g. ``inventory.events`` ->
``inventory:{payload.storeId}``. Placeholders are dotted paths into the record's value, the
gateway's JSON envelope: ``{key}``, ``{event_type}``, ``{payload.storeId}``,
``{payload.customer.id}``. A record gets one channel per rule of its topic whose placeholders all
resolve; a record missing a field (or whose value is not JSON) simply does not get that channel.

Channel names follow one strict grammar (:data:`CHANNEL_PATTERN`, whole string)::

    <family>:<name>      family  [a-z][a-z0-9_-]{0,63}
                         name    [A-Za-z0-9][A-Za-z0-9._~-]{0,127}

ASCII only, no ``/``, spaces, ``:`` or ``%`` in the name, so a channel name is safe in a URL, a
log line, a metrics label or a storage key as it is. A channel is never made from unsanitized
input: a placeholder value is used only if it is a string or an integer of the name alphabet and
the resulting name matches the grammar; anything else (``../x``, ``a b``, look-alike Unicode such
as a Cyrillic ``s``, a 200-character value, ``true``, ``1.5``, ``null``, an object) gives no
channel. In a template with several placeholders, each value must also avoid every character of
the template's literal text after the ``:`` (e.g. ``.`` in ``stock:{payload.store}.{payload.sku}``)
so that two different records can never collide on one channel by shifting a separator.

Rules come from configuration as ``topic=template`` items separated by commas, semicolons or
newlines (:func:`parse_channel_rules`), e.g. ::

    inventory.events=inventory:{payload.storeId}, order.events=orders:{payload.userId}

A malformed item raises :class:`~gateway.errors.ConfigError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway.core.codec import refuse_json_constant
from gateway.core.ids import Channel
from gateway.errors import ConfigError

CHANNEL_PATTERN: Final = r"[a-z][a-z0-9_-]{0,63}:[A-Za-z0-9][A-Za-z0-9._~-]{0,127}"
"""The grammar of every channel name (matched against the whole string)."""

MAX_PATH_DEPTH: Final = 8
"""Most segments in one placeholder path."""

_CHANNEL: Final = re.compile(CHANNEL_PATTERN)
_FAMILY: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_NAME_LITERAL: Final = re.compile(r"[A-Za-z0-9._~-]*")
_VALUE: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOPIC: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")
_SEPARATORS: Final = re.compile(r"[,;\n]")
_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-")


def valid_channel(name: object) -> bool:
    """Whether ``name`` is a channel name of the grammar (:data:`CHANNEL_PATTERN`)."""
    return isinstance(name, str) and _CHANNEL.fullmatch(name) is not None


def _placeholder_value(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value) if -(10**127) < value < 10**128 else None
    if isinstance(value, str) and _VALUE.fullmatch(value) is not None:
        return value
    return None


def _resolve(envelope: Mapping[str, object], path: tuple[str, ...]) -> object:
    node: object = envelope
    for segment in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(segment)
    return node


@dataclass(frozen=True, slots=True)
class ChannelRule:
    """Records of ``topic`` belong to the channel ``template`` names, placeholders filled in.

    Construction validates the template and raises :class:`~gateway.errors.ConfigError`.
    """

    topic: str
    template: str
    _parts: tuple[str | tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    _forbidden: frozenset[str] = field(init=False, repr=False, compare=False)
    _shape: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or _TOPIC.fullmatch(self.topic) is None:
            raise ConfigError(f"channel rule: invalid topic name {self.topic!r}")
        family, colon, rest = self.template.partition(":")
        if not colon or _FAMILY.fullmatch(family) is None:
            raise ConfigError(
                f"channel rule {self.template!r}: must start with a family "
                "[a-z][a-z0-9_-]* and ':' (e.g. 'inventory:{payload.storeId}')"
            )
        parts: list[str | tuple[str, ...]] = []
        position = 0
        for match in _PLACEHOLDER.finditer(rest):
            literal = rest[position : match.start()]
            if parts and not literal:
                raise ConfigError(
                    f"channel rule {self.template!r}: placeholders must be separated by text"
                )
            self._add_literal(literal, parts)
            path = tuple(match.group(1).split("."))
            if len(path) > MAX_PATH_DEPTH or not all(_SEGMENT.fullmatch(s) for s in path):
                raise ConfigError(
                    f"channel rule {self.template!r}: invalid placeholder {match.group(0)!r} "
                    "(expected a dotted path such as payload.storeId)"
                )
            parts.append(path)
            position = match.end()
        self._add_literal(rest[position:], parts)
        if not parts:
            raise ConfigError(f"channel rule {self.template!r}: nothing after the ':'")
        if isinstance(parts[0], str) and not parts[0][0].isalnum():
            raise ConfigError(
                f"channel rule {self.template!r}: the name must start with [A-Za-z0-9]"
            )
        literals = [p for p in parts if isinstance(p, str)]
        placeholders = len(parts) - len(literals)
        if sum(map(len, literals)) + placeholders > 128:
            raise ConfigError(f"channel rule {self.template!r}: the name is over 128 characters")
        # Several placeholders: values may not contain the literal text's characters, so that a
        # channel name splits back into its values one way only (no collisions between records).
        forbidden = frozenset("".join(literals)) if placeholders > 1 else frozenset()
        value_class = "[" + "".join(re.escape(c) for c in sorted(_ALPHABET - forbidden)) + "]+"
        shape = [re.escape(p) if isinstance(p, str) else value_class for p in parts]
        object.__setattr__(self, "_parts", (family + ":", *parts))
        object.__setattr__(self, "_forbidden", forbidden)
        object.__setattr__(self, "_shape", re.compile(re.escape(family + ":") + "".join(shape)))

    def _add_literal(self, literal: str, parts: list[str | tuple[str, ...]]) -> None:
        if not literal:
            return
        if "{" in literal or "}" in literal:
            raise ConfigError(f"channel rule {self.template!r}: unbalanced braces")
        if _NAME_LITERAL.fullmatch(literal) is None:
            raise ConfigError(
                f"channel rule {self.template!r}: {literal!r} has characters outside "
                "[A-Za-z0-9._~-]"
            )
        parts.append(literal)

    @classmethod
    def parse(cls, spec: str) -> ChannelRule:
        """A rule from its configuration form ``topic=template``."""
        topic, equals, template = spec.partition("=")
        if not equals:
            raise ConfigError(f"channel rule {spec!r}: expected topic=template")
        return cls(topic.strip(), template.strip())

    @property
    def family(self) -> str:
        """The part of every channel of this rule before the ``:``, e.g. ``inventory``."""
        return self.template.partition(":")[0]

    def channel_for(self, envelope: Mapping[str, object]) -> Channel | None:
        """The channel of a decoded envelope under this rule, or None if it has none."""
        pieces: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = _placeholder_value(_resolve(envelope, part))
            if value is None or not self._forbidden.isdisjoint(value):
                return None
            pieces.append(value)
        name = "".join(pieces)
        return Channel(name) if _CHANNEL.fullmatch(name) is not None else None

    def could_produce(self, channel: str) -> bool:
        """Whether some record could belong to ``channel`` under this rule (by its shape)."""
        return valid_channel(channel) and self._shape.fullmatch(channel) is not None


def parse_channel_rules(spec: str | Iterable[str]) -> tuple[ChannelRule, ...]:
    """Rules from configuration: ``topic=template`` items (a string splits at ``,`` ``;`` newlines).

    An empty spec gives no rules; a malformed or repeated rule raises ConfigError.
    """
    items = _SEPARATORS.split(spec) if isinstance(spec, str) else list(spec)
    rules: list[ChannelRule] = []
    for item in items:
        if not item.strip():
            continue
        rule = ChannelRule.parse(item)
        if rule in rules:
            raise ConfigError(f"channel rule {item.strip()!r} is given twice")
        rules.append(rule)
    return tuple(rules)


DEFAULT_CHANNEL_RULES_SPEC: Final = (
    "inventory.events=inventory:{payload.storeId}, order.events=orders:{payload.userId}"
)
DEFAULT_CHANNEL_RULES: Final[tuple[ChannelRule, ...]] = parse_channel_rules(
    DEFAULT_CHANNEL_RULES_SPEC
)
"""Inventory updates per store, order updates per user (both carry these payload fields)."""


class ChannelMapper:
    """Maps Kafka records to the channels they belong to, by a set of :class:`ChannelRule`."""

    __slots__ = ("_by_topic", "_decoder", "_rules")

    def __init__(self, rules: Iterable[ChannelRule] = DEFAULT_CHANNEL_RULES) -> None:
        """Group the rules by topic (the order of rules is the order of a record's channels)."""
        self._rules = tuple(rules)
        self._decoder = json.JSONDecoder(parse_constant=refuse_json_constant)  # not one per record
        self._by_topic: dict[str, tuple[ChannelRule, ...]] = {}
        for rule in self._rules:
            self._by_topic[rule.topic] = (*self._by_topic.get(rule.topic, ()), rule)

    @classmethod
    def from_config(cls, spec: str | Iterable[str]) -> ChannelMapper:
        """A mapper from configuration text (see :func:`parse_channel_rules`)."""
        return cls(parse_channel_rules(spec))

    @property
    def rules(self) -> tuple[ChannelRule, ...]:
        """The rules, in configuration order."""
        return self._rules

    @property
    def topics(self) -> frozenset[str]:
        """The topics any rule maps from: the ones the downstream consumer must read."""
        return frozenset(self._by_topic)

    def channels_for(self, topic: str, value: bytes) -> list[Channel]:
        """The channels of a record (its value is the JSON envelope); [] if none or not JSON."""
        rules = self._by_topic.get(topic)
        if not rules:
            return []
        if not value.startswith(b"{"):  # no BOM, no other encoding: it is embedded as it is
            return []
        try:
            envelope = self._decoder.decode(value.decode())
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return []
        return self._channels(rules, envelope)

    def channels_for_envelope(self, topic: str, envelope: object) -> list[Channel]:
        """The channels of a record whose value is already decoded."""
        rules = self._by_topic.get(topic)
        return self._channels(rules, envelope) if rules else []

    def topics_for(self, channel: str) -> frozenset[str]:
        """The topics whose records may belong to ``channel`` (empty: no rule can produce it)."""
        return frozenset(rule.topic for rule in self._rules if rule.could_produce(channel))

    @staticmethod
    def _channels(rules: Iterable[ChannelRule], envelope: object) -> list[Channel]:
        if not isinstance(envelope, dict):
            return []
        channels: list[Channel] = []
        for rule in rules:
            channel = rule.channel_for(envelope)
            if channel is not None and channel not in channels:
                channels.append(channel)
        return channels
