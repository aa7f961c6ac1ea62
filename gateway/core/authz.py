"""Authorization: what the holder of a verified token may subscribe to and publish (sans-I/O).

A :class:`Principal` is built from the claims of a token that an adapter has already verified
(signature, ``exp``/``nbf``, ``aud``/``iss``: see :mod:`gateway.adapters.jwt_auth`); this module
never sees a token, only its claims, and never does I/O.

Claims used (DESIGN.md, "Auth")::

    sub       str, non-empty           the user or device id
    tenant    str, optional            must equal the gateway's configured tenant, when it has one
    channels  list[str], optional      channel patterns the holder may subscribe to
    publish   list[str], optional      event-type patterns the holder may publish
    exp       int | float, optional    expiry (seconds since the epoch), kept as ``expires_at``

Channel patterns are ``<family>:<name part>`` where the family follows the channel grammar of
:mod:`gateway.core.channels` and the name part is exactly one of:

- a literal channel name part (``inventory:s-7``): that channel only;
- ``{sub}`` (``orders:{sub}``): the channel whose name is the subject, and only if
  ``<family>:<subject>`` is itself a valid channel name (a subject such as ``a/b`` or one with
  look-alike Unicode letters grants nothing through ``{sub}``);
- ``*`` (``inventory:*``): every valid channel of that family. The wildcard is the whole name
  part, never a prefix (``inventory:s-*`` is refused) and never crosses the family ``:``.

Event-type patterns are ``*`` (any event type), ``<Domain>.*`` (``Order.*``) or an exact event
type (``Order.Placed``). Publishing also requires the event's ``source`` to equal the subject.

Matching is exact ASCII: no case folding, no Unicode normalisation, so a look-alike character never
matches. A channel must be valid per :func:`~gateway.core.channels.valid_channel` to be granted at
all. Claims of the wrong shape (a non-string ``sub``, a malformed pattern, ...) refuse the whole
token with :class:`Unauthorized`: a token that says something we do not understand grants nothing.

Tenants are isolated by refusing the token: a gateway configured with a tenant accepts only
principals whose ``tenant`` claim equals it exactly (:meth:`Principal.from_claims` with
``tenant=...``, or :meth:`Principal.belongs_to`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.core.channels import valid_channel
from gateway.errors import AuthError, Forbidden, Unauthorized

__all__ = ["AuthError", "Forbidden", "Principal", "Unauthorized"]

SUB_PLACEHOLDER: Final = "{sub}"
"""The placeholder of a channel pattern's name part that stands for the token's subject."""

WILDCARD: Final = "*"
"""The wildcard name part of a channel pattern, or event name of a publish pattern."""

MAX_PATTERNS: Final = 256
"""Most patterns accepted in one ``channels`` or ``publish`` claim."""

_FAMILY: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
_DOMAIN: Final = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
_EVENT_TYPE: Final = re.compile(r"[A-Z][A-Za-z0-9]{0,63}\.[A-Z][A-Za-z0-9]{0,63}")


def _valid_channel_pattern(pattern: str) -> bool:
    family, sep, name = pattern.partition(":")
    if not sep or _FAMILY.fullmatch(family) is None:
        return False
    return name in (WILDCARD, SUB_PLACEHOLDER) or _NAME.fullmatch(name) is not None


def _valid_publish_pattern(pattern: str) -> bool:
    if pattern == WILDCARD or _EVENT_TYPE.fullmatch(pattern) is not None:
        return True
    domain, sep, name = pattern.partition(".")
    return bool(sep) and name == WILDCARD and _DOMAIN.fullmatch(domain) is not None


def _patterns(claims: Mapping[str, object], claim: str, *, channel: bool) -> tuple[str, ...]:
    raw = claims.get(claim)
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple) or len(raw) > MAX_PATTERNS:
        raise Unauthorized("bad_claims", f"claim {claim!r} must be a list of strings")
    check = _valid_channel_pattern if channel else _valid_publish_pattern
    for item in raw:
        if not isinstance(item, str) or not check(item):
            raise Unauthorized("bad_claims", f"claim {claim!r} holds a malformed pattern")
    return tuple(dict.fromkeys(raw))


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified holder of a token: who it is and what it may do."""

    subject: str
    tenant: str | None
    channel_patterns: tuple[str, ...]
    publish_patterns: tuple[str, ...]
    expires_at: float | None
    unrestricted: bool = False
    """Only for a gateway started with ``insecure_no_auth`` (development): every valid channel
    and every event from any source are allowed. Never built from a token."""

    @classmethod
    def insecure_anonymous(cls) -> Principal:
        """The principal of every caller of a gateway that runs without authentication."""
        return cls("anonymous", None, (), (), None, unrestricted=True)

    @classmethod
    def from_claims(cls, claims: Mapping[str, object], *, tenant: str | None = None) -> Principal:
        """Build a principal from verified claims.

        With ``tenant`` (the gateway's configured tenant), the ``tenant`` claim must be present
        and equal to it, else :class:`Forbidden` (``wrong_tenant``). Claims of the wrong shape
        raise :class:`Unauthorized` (``bad_claims``).
        """
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("bad_claims", "claim 'sub' must be a non-empty string")
        claimed_tenant = claims.get("tenant")
        if claimed_tenant is not None and (
            not isinstance(claimed_tenant, str) or not claimed_tenant
        ):
            raise Unauthorized("bad_claims", "claim 'tenant' must be a non-empty string")
        exp = claims.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
            raise Unauthorized("bad_claims", "claim 'exp' must be a number")
        principal = cls(
            subject=subject,
            tenant=claimed_tenant,
            channel_patterns=_patterns(claims, "channels", channel=True),
            publish_patterns=_patterns(claims, "publish", channel=False),
            expires_at=float(exp) if exp is not None else None,
        )
        if tenant is not None and not principal.belongs_to(tenant):
            raise Forbidden("wrong_tenant", "the token belongs to another tenant")
        return principal

    def belongs_to(self, tenant: str | None) -> bool:
        """Whether the principal's tenant is exactly ``tenant`` (``None``: no tenant claim)."""
        return self.tenant == tenant

    def may_subscribe(self, channel: str) -> bool:
        """Whether the principal may subscribe to ``channel`` (a valid channel name)."""
        if not valid_channel(channel):
            return False
        if self.unrestricted:
            return True
        family, _, name = channel.partition(":")
        for pattern in self.channel_patterns:
            pattern_family, _, pattern_name = pattern.partition(":")
            if pattern_family != family:
                continue
            if pattern_name == WILDCARD:
                return True
            if pattern_name == SUB_PLACEHOLDER:
                if name == self.subject and valid_channel(f"{family}:{self.subject}"):
                    return True
            elif pattern_name == name:
                return True
        return False

    def may_publish(self, event_type: str, source: str) -> bool:
        """Whether the principal may publish an event of ``event_type`` from ``source``.

        ``source`` must equal the subject; ``event_type`` must be a valid event type matched by
        one of the publish patterns.
        """
        if self.unrestricted:
            return True
        if source != self.subject or _EVENT_TYPE.fullmatch(event_type) is None:
            return False
        domain = event_type.partition(".")[0]
        for pattern in self.publish_patterns:
            if pattern in (WILDCARD, event_type) or pattern == f"{domain}.{WILDCARD}":
                return True
        return False

    def require_subscribe(self, channel: str) -> None:
        """Raise :class:`Forbidden` (``channel_forbidden``) unless :meth:`may_subscribe`."""
        if not self.may_subscribe(channel):
            raise Forbidden("channel_forbidden", "the token does not allow this channel")

    def require_publish(self, event_type: str, source: str) -> None:
        """Raise :class:`Forbidden` (``publish_forbidden``) unless :meth:`may_publish`."""
        if not self.may_publish(event_type, source):
            raise Forbidden("publish_forbidden", "the token does not allow this event")
