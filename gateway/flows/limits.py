"""Per-subject abuse limits: every request or websocket frame spends a token of the subject's
request bucket, every published event one of its event bucket.

The buckets live behind :class:`~gateway.core.rate_limit.RateLimiter`: local to the instance,
or shared by the fleet through Redis (:mod:`gateway.adapters.redis_limits`). A gateway running
without authentication (``insecure_no_auth``) has no subjects to tell apart and limits nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.authz import Principal
from gateway.core.rate_limit import RateLimiter
from gateway.errors import RateLimited


@dataclass(frozen=True, slots=True)
class SubjectLimits:
    """The request and event buckets of every subject; ``None``: that limit is off."""

    requests: RateLimiter | None
    events: RateLimiter | None

    async def check_request(self, principal: Principal) -> None:
        """Spend one request token of ``principal``, or raise :class:`RateLimited`."""
        await self._spend(self.requests, "requests", principal, 1)

    async def check_events(self, principal: Principal, count: int) -> None:
        """Spend ``count`` event tokens of ``principal``, or raise :class:`RateLimited`."""
        if count > 0:
            await self._spend(self.events, "events", principal, count)

    async def _spend(
        self, limiter: RateLimiter | None, what: str, principal: Principal, cost: int
    ) -> None:
        if limiter is None or principal.unrestricted:
            return
        decision = await limiter.acquire(_key(principal), cost)
        if not decision.allowed:
            raise RateLimited(
                f"over the {what} rate limit of this token's subject", decision.retry_after_s
            )

    async def close(self) -> None:
        for limiter in (self.requests, self.events):
            if limiter is not None:
                await limiter.close()


def _key(principal: Principal) -> str:
    # the tenant is part of the key: two tenants' subjects of the same name are two callers
    return f"{principal.tenant or ''}\x1f{principal.subject}"


UNLIMITED = SubjectLimits(None, None)
