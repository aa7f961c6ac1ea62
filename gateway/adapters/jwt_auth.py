"""JWT bearer-token verification with PyJWT, giving a :class:`~gateway.core.authz.Principal`.

The algorithms come from configuration only (:class:`JwtSettings`), never from the token:

- ``HS256``/``HS384``/``HS512`` with a shared ``secret`` (at least 32 bytes);
- ``RS*``/``PS*``/``ES*`` with a PEM ``public_key`` or a JWKS file (``jwks_path``). With a JWKS
  file the token's ``kid`` header picks the key (a token without ``kid``, or with an unknown one,
  is refused) and the token's ``alg`` must be the key's algorithm. With a single key or a
  secret, ``kid`` is not needed and not consulted.

Refused at construction (:class:`~gateway.errors.ConfigError`): no algorithm, an unknown one,
``none``, HMAC mixed with an asymmetric algorithm (algorithm confusion), HMAC without a secret or
with a key, an asymmetric algorithm without exactly one of ``public_key`` / ``jwks_path`` or with
a secret, a public key whose type does not fit the algorithms, an unreadable JWKS file.

:meth:`JwtVerifier.verify` requires ``exp`` and ``sub`` (plus ``aud`` / ``iss`` when configured),
checks ``exp``/``nbf`` with ``leeway_s``, and translates every failure into
:class:`~gateway.core.authz.Unauthorized` with a short ``reason``; the token is never put in an
error message, and PyJWT's own exception is not chained (its text may quote the token's header).
:func:`mint` makes development and test tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.core.authz import Principal, Unauthorized
from gateway.errors import ConfigError

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512"})
SUPPORTED_ALGORITHMS: Final = HMAC_ALGORITHMS | RSA_ALGORITHMS | EC_ALGORITHMS

MIN_SECRET_BYTES: Final = 32
"""Shortest HMAC secret accepted (RFC 7518 section 3.2: a key at least as long as the hash)."""

MAX_TOKEN_CHARS: Final = 8192
"""Longest token looked at; a longer one is refused as malformed before any parsing."""

_REASONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.InvalidKeyError, "bad_key"),
    (jwt.DecodeError, "malformed"),
)


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How tokens are verified (and minted in development).

    ``tenant``: the gateway's tenant; when set, a token's ``tenant`` claim must equal it.
    """

    algorithms: tuple[str, ...]
    secret: str | None = None
    public_key: str | None = None
    jwks_path: Path | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 30
    tenant: str | None = None


def _check_settings(settings: JwtSettings) -> None:
    algorithms = set(settings.algorithms)
    if not algorithms:
        raise ConfigError("JWT: no algorithm configured")
    if any(alg.lower() == "none" for alg in algorithms):
        raise ConfigError("JWT: algorithm 'none' is refused")
    unknown = algorithms - SUPPORTED_ALGORITHMS
    if unknown:
        raise ConfigError(f"JWT: unsupported algorithm(s) {sorted(unknown)}")
    if not 0 <= settings.leeway_s <= 300:
        raise ConfigError("JWT: leeway_s must be between 0 and 300 seconds")
    hmac = algorithms & HMAC_ALGORITHMS
    if hmac and algorithms - HMAC_ALGORITHMS:
        raise ConfigError("JWT: HMAC and asymmetric algorithms must not be mixed")
    if hmac:
        if not settings.secret:
            raise ConfigError("JWT: HS* algorithms need a secret")
        if len(settings.secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"JWT: the secret must be at least {MIN_SECRET_BYTES} bytes")
        if settings.public_key is not None or settings.jwks_path is not None:
            raise ConfigError("JWT: HS* algorithms take a secret, not a public key or JWKS")
        return
    if settings.secret is not None:
        raise ConfigError("JWT: RS*/ES* algorithms take a public key or JWKS, not a secret")
    if (settings.public_key is None) == (settings.jwks_path is None):
        raise ConfigError("JWT: RS*/ES* algorithms need exactly one of public key or JWKS file")


def _load_public_key(pem: str, algorithms: Iterable[str]) -> RSAPublicKey | EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ConfigError("JWT: the public key is not a PEM public key") from exc
    for alg in algorithms:
        if alg in RSA_ALGORITHMS and not isinstance(key, RSAPublicKey):
            raise ConfigError(f"JWT: {alg} needs an RSA public key")
        if alg in EC_ALGORITHMS and not isinstance(key, EllipticCurvePublicKey):
            raise ConfigError(f"JWT: {alg} needs an EC public key")
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise ConfigError("JWT: the public key is neither RSA nor EC")
    return key


def _load_jwks(path: Path, algorithms: Iterable[str]) -> dict[str, jwt.PyJWK]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"JWT: cannot read the JWKS file {path}") from exc
    raw_keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(raw_keys, list) or not raw_keys:
        raise ConfigError(f"JWT: the JWKS file {path} has no keys")
    allowed = set(algorithms)
    keys: dict[str, jwt.PyJWK] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict):
            raise ConfigError(f"JWT: the JWKS file {path} holds a key that is not an object")
        try:
            key = jwt.PyJWK.from_dict(raw)
        except jwt.PyJWTError as exc:
            raise ConfigError(f"JWT: the JWKS file {path} holds an unusable key") from exc
        kid = key.key_id
        if not isinstance(kid, str) or not kid:
            raise ConfigError(f"JWT: every key of the JWKS file {path} needs a 'kid'")
        if kid in keys:
            raise ConfigError(f"JWT: the JWKS file {path} has two keys with kid {kid!r}")
        if key.algorithm_name not in allowed:
            raise ConfigError(
                f"JWT: key {kid!r} of {path} is for {key.algorithm_name}, not configured"
            )
        if key.public_key_use not in (None, "sig"):
            raise ConfigError(f"JWT: key {kid!r} of {path} is not a signing key")
        keys[kid] = key
    return keys


class JwtVerifier:
    """Verifies bearer tokens against one :class:`JwtSettings`; safe to share."""

    def __init__(self, settings: JwtSettings) -> None:
        _check_settings(settings)
        self._settings = settings
        self._algorithms = list(dict.fromkeys(settings.algorithms))
        self._key: str | RSAPublicKey | EllipticCurvePublicKey | None = None
        self._jwks: dict[str, jwt.PyJWK] | None = None
        if settings.secret is not None:
            self._key = settings.secret
        elif settings.public_key is not None:
            self._key = _load_public_key(settings.public_key, self._algorithms)
        elif settings.jwks_path is not None:
            self._jwks = _load_jwks(settings.jwks_path, self._algorithms)
        required = ["exp", "sub"]
        if settings.audience is not None:
            required.append("aud")
        if settings.issuer is not None:
            required.append("iss")
        self._required = required

    @property
    def settings(self) -> JwtSettings:
        return self._settings

    def verify(self, token: str) -> Principal:
        """The principal of a valid ``token``, else :class:`Unauthorized` (never quoting it)."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("missing_token", "no bearer token")
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise Unauthorized("malformed", "the token is malformed")
        try:
            claims = self._decode(token)
        except jwt.PyJWTError as exc:
            reason = next((r for cls, r in _REASONS if isinstance(exc, cls)), "invalid_token")
            raise Unauthorized(reason, f"the token is refused: {reason}") from None
        except (ValueError, TypeError):
            raise Unauthorized("malformed", "the token is malformed") from None
        return Principal.from_claims(claims, tenant=self._settings.tenant)

    def _decode(self, token: str) -> dict[str, Any]:
        key: Any = self._key
        if self._jwks is not None:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if not isinstance(kid, str) or kid not in self._jwks:
                raise Unauthorized("unknown_kid", "the token's kid names no configured key")
            jwk = self._jwks[kid]
            if header.get("alg") != jwk.algorithm_name:
                raise jwt.InvalidAlgorithmError("alg does not match the key")
            key = jwk.key
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=self._algorithms,
            audience=self._settings.audience,
            issuer=self._settings.issuer,
            leeway=self._settings.leeway_s,
            options={"require": self._required, "enforce_minimum_key_length": True},
        )
        return claims


def mint(
    settings: JwtSettings,
    subject: str,
    *,
    channels: Iterable[str],
    publish: Iterable[str],
    ttl_s: float,
    tenant: str | None = None,
    private_key: str | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A token for development and tests, signed with ``settings.algorithms[0]``.

    HMAC algorithms sign with ``settings.secret``; asymmetric ones need ``private_key`` (PEM).
    ``aud``/``iss`` come from the settings, ``tenant`` defaults to ``settings.tenant``; ``kid``
    goes in the header (needed for a JWKS verifier); ``now`` overrides the clock.
    """
    _check_settings(settings)
    algorithm = settings.algorithms[0]
    if algorithm in HMAC_ALGORITHMS:
        assert settings.secret is not None  # checked by _check_settings
        key: str = settings.secret
    elif private_key is None:
        raise ConfigError(f"JWT: minting {algorithm} tokens needs a private key")
    else:
        key = private_key
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": subject,
        "channels": list(channels),
        "publish": list(publish),
        "iat": int(issued),
        "nbf": int(issued),
        "exp": int(issued + ttl_s),
    }
    tenant = settings.tenant if tenant is None else tenant
    if tenant is not None:
        claims["tenant"] = tenant
    if settings.audience is not None:
        claims["aud"] = settings.audience
    if settings.issuer is not None:
        claims["iss"] = settings.issuer
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)
