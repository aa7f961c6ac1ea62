"""Fleet-wide dedup of event ids through Redis: an id accepted by any instance is ``duplicate``
on every other instance for the dedup window (default 7 days).

Each instance's local store stays the source of truth for its own events; Redis only tells an
instance about ids *other* instances hold. One key per event id, ``<prefix>dd:k:<event id>``
(ids over 200 bytes are replaced by their SHA-256), whose value names the holder:

- ``p:<instance>``: pending, the instance is storing the event now; expires after
  ``pending_ttl_s`` (default 30 s) so a claim of an instance that crashed vanishes by itself;
- ``c:<instance>``: committed, the instance's store holds the event; expires after the window.

Caller protocol (the ingest flow, per batch, after validation)
---------------------------------------------------------------
1. ``claims = await dedup.claim(ids)`` (one round trip; Lua: ``SET NX PX`` of ``p:<us>`` for
   each free id, the existing value for each taken one):

   - :attr:`Claim.OURS`: newly claimed by us, or already pending/committed by us: the local
     store decides (``accepted`` or ``duplicate``), exactly as without Redis;
   - :attr:`Claim.COMMITTED_ELSEWHERE`: another instance committed it: answer ``duplicate``;
   - :attr:`Claim.PENDING_ELSEWHERE`: another instance is storing it right now: answer a
     retriable refusal for that event (the client retries shortly), never ``duplicate``.

2. Append the ``OURS`` events to the local store.
3. Store committed: ``await dedup.confirm(ids)`` with every ``OURS`` id the store now holds
   (``accepted`` and local ``duplicate``): ``c:<us>`` with the window TTL, unless another
   instance holds the key (those ids are returned: a cross-instance duplicate happened, count
   it). A key that vanished meanwhile (flush, expired pending claim) is written too.
   Store failed: ``await dedup.release(ids)``, which deletes only our own pending claims.
   If ``claim`` raised :class:`FleetDedupUnavailable`, calling ``confirm`` after the commit
   anyway is harmless and narrows bound (1) below (a timed-out claim may still have run).

Any Redis error or timeout raises :class:`FleetDedupUnavailable` (after at most one socket
timeout, ``socket_timeout_s`` = 0.25 s by default; for ``cooldown_s`` after a failure calls fail
at once without touching Redis). The caller then goes on with local dedup only: availability
first, and never a loss.

Why nothing is ever lost
------------------------
Nothing is acked before the local commit, and Redis says "duplicate"
(``COMMITTED_ELSEWHERE``) only for a ``c:`` value, which an instance writes only in
:meth:`RedisFleetDedup.confirm`, after its own store committed the event. A pending claim of an
instance that crashed or failed before committing answers ``PENDING_ELSEWHERE`` (retry), and
disappears after ``pending_ttl_s`` (or at once with :meth:`RedisFleetDedup.release`), after which
any instance can claim the id. Values this module did not write are treated as ``OURS``
(the local store decides), never as duplicates.

The duplicate bound (across instances; within one instance the local store forbids any)
-------------------------------------------------------------------------------------------
A second copy of an event on another instance is possible only for:

1. an event whose Redis key was lost (Redis flushed, restarted without persistence, failed
   over to a replica that missed the write, or evicted it under ``maxmemory``) or never
   written (Redis unavailable while it was ingested, :class:`FleetDedupUnavailable`), *and*
   that a client then re-sends to a different instance within the window;
2. an event whose instance crashed (or lost Redis) after its local commit and before
   ``confirm``: its pending claim expires after ``pending_ttl_s`` and a retry on another
   instance after that is accepted again;
3. an event whose local commit took longer than ``pending_ttl_s``: the claim expired while the
   store was committing and another instance claimed it meanwhile (``confirm`` returns such ids).

Each is bounded by the client's retry behaviour (a client retries only events it has no ack
for, except after an outage of Redis *and* a switch of instance), and none causes a loss.
Redis must not be a cluster (the batch script touches many keys); a single primary or a
Sentinel-managed one suffices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.adapters.redis_limits import (
    DEFAULT_PREFIX,
    RedisClientContext,
    bounded_key,
    check_prefix,
    redis_client,
)
from gateway.core.ingest import Claim
from gateway.errors import FleetDedupUnavailable

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S: Final = 7 * 24 * 3600
MAX_INSTANCE_ID_CHARS: Final = 64
MAX_IDS_PER_CALL: Final = 2000
"""A batch above this is sent as several script calls (one round trip each), so that one call
never blocks Redis for long."""

# KEYS: dedup keys. ARGV[1]: "p:<us>", ARGV[2]: pending TTL (ms).
# Reply: per key, "" when newly claimed by us, else the existing value.
_CLAIM_LUA: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current then
    out[i] = current
  else
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = ''
  end
end
return out
"""

# KEYS: dedup keys. ARGV[1]: "p:<us>", ARGV[2]: "c:<us>", ARGV[3]: window (ms).
# Reply: per key, 1 when now committed by us, 0 when another instance holds it.
_CONFIRM_LUA: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if (not current) or current == ARGV[1] or current == ARGV[2] then
    redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: dedup keys. ARGV[1]: "p:<us>". Reply: how many pending claims of ours were deleted.
_RELEASE_LUA: Final = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


class RedisFleetDedup(RedisClientContext):
    """Claims, confirms and releases event ids for the fleet (see the module doc)."""

    def __init__(
        self,
        url: str,
        instance_id: str,
        window_s: float = DEFAULT_WINDOW_S,
        pending_ttl_s: float = 30.0,
        *,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout_s: float = 0.25,
        cooldown_s: float = 2.0,
        max_connections: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not instance_id or len(instance_id) > MAX_INSTANCE_ID_CHARS:
            raise ValueError(f"instance_id must have 1 to {MAX_INSTANCE_ID_CHARS} characters")
        if not window_s >= 1 or not pending_ttl_s >= 0.001:
            raise ValueError("window_s must be >= 1 s and pending_ttl_s >= 1 ms")
        self.instance_id = instance_id
        self.prefix = check_prefix(prefix)
        self.window_ms = int(window_s * 1000)
        self.pending_ttl_ms = int(pending_ttl_s * 1000)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._pending = f"p:{instance_id}"
        self._committed = f"c:{instance_id}"
        self._client = redis_client(
            url, socket_timeout_s=socket_timeout_s, max_connections=max_connections
        )
        self._claim = self._client.register_script(_CLAIM_LUA)
        self._confirm = self._client.register_script(_CONFIRM_LUA)
        self._release = self._client.register_script(_RELEASE_LUA)
        self._down_until: float | None = None
        self.redis_failures = 0

    @property
    def degraded(self) -> bool:
        """Whether Redis failed recently (calls fail fast until ``cooldown_s`` has passed)."""
        return self._down_until is not None

    def redis_key(self, event_id: str) -> str:
        """The Redis key of ``event_id``."""
        return bounded_key(self.prefix, "dd", event_id)

    async def claim(self, ids: Sequence[str]) -> dict[str, Claim]:
        """Claim ``ids`` as pending for this instance where free; what the fleet says of each.

        Raises :class:`FleetDedupUnavailable` when Redis cannot answer.
        """
        unique = list(dict.fromkeys(ids))
        result: dict[str, Claim] = {}
        for chunk in _chunks(unique):
            values = await self._run(
                self._claim, chunk, [self._pending, self.pending_ttl_ms], "claim"
            )
            if not isinstance(values, list) or len(values) != len(chunk):
                raise FleetDedupUnavailable(f"unexpected reply to claim: {values!r:.200}")
            for event_id, value in zip(chunk, values, strict=True):
                result[event_id] = self._classify(value)
        return result

    async def confirm(self, ids: Sequence[str]) -> list[str]:
        """Mark ``ids`` committed by this instance for the window; call after the local commit.

        Returns the ids another instance holds (left unchanged: a cross-instance duplicate).
        Raises :class:`FleetDedupUnavailable` when Redis cannot answer.
        """
        unique = list(dict.fromkeys(ids))
        conflicts: list[str] = []
        for chunk in _chunks(unique):
            flags = await self._run(
                self._confirm, chunk, [self._pending, self._committed, self.window_ms], "confirm"
            )
            if not isinstance(flags, list) or len(flags) != len(chunk):
                raise FleetDedupUnavailable(f"unexpected reply to confirm: {flags!r:.200}")
            conflicts.extend(i for i, flag in zip(chunk, flags, strict=True) if flag != 1)
        if conflicts:
            log.warning(
                "%d event id(s) committed here are held by another instance in Redis "
                "(cross-instance duplicates), e.g. %s",
                len(conflicts),
                conflicts[0],
            )
        return conflicts

    async def release(self, ids: Sequence[str]) -> int:
        """Delete this instance's pending claims of ``ids`` (the store failed); how many.

        Claims of other instances and our committed ids are left alone. Raises
        :class:`FleetDedupUnavailable` when Redis cannot answer.
        """
        released = 0
        for chunk in _chunks(list(dict.fromkeys(ids))):
            count = await self._run(self._release, chunk, [self._pending], "release")
            if not isinstance(count, int):
                raise FleetDedupUnavailable(f"unexpected reply to release: {count!r:.200}")
            released += count
        return released

    def _classify(self, value: object) -> Claim:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str) or value in ("", self._pending, self._committed):
            return Claim.OURS
        if value.startswith("c:"):
            return Claim.COMMITTED_ELSEWHERE
        if value.startswith("p:"):
            return Claim.PENDING_ELSEWHERE
        return Claim.OURS  # not written by this module: never a reason to drop an event

    async def _run(
        self, script: AsyncScript, ids: Sequence[str], args: list[str | int], what: str
    ) -> object:
        now = self._clock()
        if self._down_until is not None:
            if now < self._down_until:
                raise FleetDedupUnavailable(f"Redis unavailable (fleet dedup {what} skipped)")
            self._down_until = now + self.cooldown_s  # this call probes; others fail fast
        keys = [self.redis_key(event_id) for event_id in ids]
        try:
            reply: object = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self.redis_failures += 1
            if self._down_until is None:
                log.warning(
                    "Redis unavailable for fleet dedup (%s: %s): local dedup only for now",
                    type(exc).__name__,
                    exc,
                )
            self._down_until = self._clock() + self.cooldown_s
            raise FleetDedupUnavailable(f"fleet dedup {what} failed: {exc}") from exc
        if self._down_until is not None:
            log.warning("Redis is reachable again: fleet dedup resumed")
            self._down_until = None
        return reply

    async def close(self) -> None:
        """Close the Redis connections; the object must not be used afterwards."""
        await self._client.aclose()


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + MAX_IDS_PER_CALL] for i in range(0, len(ids), MAX_IDS_PER_CALL)]
