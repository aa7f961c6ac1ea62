"""The edge's guards as the configuration asks for them: how callers are authenticated (JWT
verification, or the explicit insecure mode with its banner) and their per-subject rate limits
(buckets shared by the fleet through Redis, or local ones).

:mod:`gateway.app` builds the gateway's guards with these; ``sync-gateway token`` uses
:func:`jwt_settings` to sign with the same settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from gateway.adapters.http_auth import Authenticate, insecure_authenticate
from gateway.adapters.jwt_auth import JwtSettings, JwtVerifier
from gateway.adapters.redis_limits import RedisRateLimiter
from gateway.config import GatewayConfig
from gateway.core.rate_limit import LocalRateLimiter, RateLimit, RateLimiter
from gateway.errors import ConfigError
from gateway.flows.limits import SubjectLimits

log = logging.getLogger("gateway.app")
"""The wiring's logger, under which the insecure banner has always been logged."""

INSECURE_BANNER: Final = """
************************************************************************************
*  INSECURE: sync-gateway runs WITHOUT AUTHENTICATION (insecure_no_auth).           *
*  Anyone who reaches this port may read every channel and publish any event.       *
*  For development only. Configure SYNC_GATEWAY_JWT_ALGORITHMS and a key instead.   *
************************************************************************************"""


def jwt_settings(config: GatewayConfig) -> JwtSettings:
    """The token verification settings of ``config`` (which must configure algorithms)."""
    public_key = config.jwt_public_key
    if public_key is not None and not public_key.lstrip().startswith("-----BEGIN"):
        try:
            public_key = Path(public_key).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"JWT: cannot read the public key file {public_key}") from exc
    return JwtSettings(
        algorithms=tuple(config.jwt_algorithms),
        secret=config.jwt_secret.get_secret_value() if config.jwt_secret is not None else None,
        public_key=public_key,
        jwks_path=config.jwks,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        leeway_s=config.jwt_leeway_s,
        tenant=config.tenant,
    )


def authenticator(config: GatewayConfig) -> Authenticate:
    """How callers are authenticated; refuses a configuration without authentication unless
    ``insecure_no_auth`` asks for it explicitly."""
    if config.auth_configured:
        if config.insecure_no_auth:
            raise ConfigError("insecure_no_auth contradicts the JWT settings: choose one")
        verifier = JwtVerifier(jwt_settings(config))
        return lambda token: verifier.verify(token or "")
    if not config.insecure_no_auth:
        raise ConfigError(
            "no authentication configured: set SYNC_GATEWAY_JWT_ALGORITHMS with "
            "SYNC_GATEWAY_JWT_SECRET, SYNC_GATEWAY_JWT_PUBLIC_KEY or SYNC_GATEWAY_JWKS; "
            "or pass --insecure-no-auth (development only)"
        )
    log.warning(INSECURE_BANNER)
    return insecure_authenticate


def _limiter(per_s: float, burst: int, kind: str, redis_url: str | None) -> RateLimiter | None:
    if per_s <= 0:
        return None
    limit = RateLimit(rate=per_s, burst=burst)
    if redis_url is None:
        return LocalRateLimiter(limit)
    return RedisRateLimiter(redis_url, limit, prefix=f"sync-gateway:{kind}:")


def subject_limits(config: GatewayConfig) -> SubjectLimits:
    """Per-subject buckets: shared by the fleet through Redis when ``redis_url`` is set
    (each instance falls back to its own buckets while Redis is down), else local."""
    url = config.redis_url
    return SubjectLimits(
        requests=_limiter(
            config.rate_limit_requests_per_s, config.rate_limit_requests_burst, "req", url
        ),
        events=_limiter(config.rate_limit_events_per_s, config.rate_limit_events_burst, "ev", url),
    )
