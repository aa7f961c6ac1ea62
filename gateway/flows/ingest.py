"""Ingest flow: a decoded batch -> validation and in-batch dedup (core) -> durable store -> results.

Nothing is acknowledged before the store has committed every accepted event of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gateway.core.authz import Principal
from gateway.core.ingest import (
    BatchPlan,
    Claim,
    EventResult,
    IngestLimits,
    PayloadChecker,
    Status,
    apply_fleet_claims,
    extract_events,
    finish_batch,
    plan_batch,
)
from gateway.errors import FleetDedupUnavailable, RequestError, StoreError
from gateway.flows.limits import UNLIMITED, SubjectLimits
from gateway.flows.ports import EventStore, FleetDedup
from gateway.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class IngestFlow:
    store: EventStore
    checker: PayloadChecker
    ingest_limits: IngestLimits
    metrics: GatewayMetrics
    limits: SubjectLimits = UNLIMITED
    fleet: FleetDedup | None = None
    """Dedup across the instances of a fleet (Redis); ``None``: this instance alone."""
    crash_hook: Callable[[str], None] = field(default=lambda point: None)
    """Testing: called at the named points ``after_parse`` and ``after_store_commit``."""

    async def ingest(
        self, body: object, principal: Principal, traceparent: str | None = None
    ) -> list[EventResult]:
        """Results for every event of ``body``, once all accepted ones are durable.

        ``traceparent`` (a valid W3C trace context) is stored with each event and forwarded.

        Events ``principal`` may not publish are rejected (``publish_forbidden``); a batch
        over the principal's event rate is refused as a whole (``RateLimited``).

        Raises :class:`~gateway.errors.RequestError` when the batch is refused as a whole and
        :class:`~gateway.errors.StoreError` when the store cannot commit; in both cases
        nothing of the batch is acknowledged.
        """
        started = time.perf_counter()
        try:
            events = extract_events(body, self.ingest_limits)
            await self.limits.check_events(principal, len(events))
            plan = plan_batch(
                events,
                self.checker,
                self.ingest_limits,
                None if principal.unrestricted else principal.may_publish,
            )
        except RequestError as exc:
            self.metrics.requests_refused.labels(exc.code).inc()
            raise
        self.crash_hook("after_parse")
        if traceparent is not None:
            plan.to_store = [replace(e, traceparent=traceparent) for e in plan.to_store]
        plan, claimed = await self._claim(plan)
        try:
            stored = await self.store.append(plan.to_store)
        except StoreError:
            self.metrics.store_refusals.inc()
            await self._release(claimed)
            raise
        self.crash_hook("after_store_commit")
        await self._confirm(claimed)
        results = finish_batch(plan, stored)
        for status in Status:
            count = sum(1 for result in results if result.status is status)
            if count:
                self.metrics.events.labels(status.value).inc(count)
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        return results

    async def _claim(self, plan: BatchPlan) -> tuple[BatchPlan, list[str]]:
        """Ask the fleet about the batch: the plan without what other instances hold, and the
        ids this instance now claims. Redis down: the plan unchanged (local dedup only)."""
        if self.fleet is None or not plan.to_store:
            return plan, []
        ids: list[str] = [event.event_id for event in plan.to_store]
        try:
            claims = await self.fleet.claim(ids)
        except FleetDedupUnavailable:
            self.metrics.fleet_unavailable.inc()
            return plan, ids  # confirm after the commit anyway: a timed-out claim may have run
        try:
            kept = apply_fleet_claims(plan, claims)
        except RequestError as exc:
            self.metrics.requests_refused.labels(exc.code).inc()
            await self._release([i for i in ids if claims.get(i) is Claim.OURS])
            raise
        self.metrics.fleet_duplicates.inc(len(plan.to_store) - len(kept.to_store))
        claimed: list[str] = [event.event_id for event in kept.to_store]
        return kept, claimed

    async def _confirm(self, ids: list[str]) -> None:
        if self.fleet is None or not ids:
            return
        try:
            self.metrics.fleet_conflicts.inc(len(await self.fleet.confirm(ids)))
        except FleetDedupUnavailable:
            self.metrics.fleet_unavailable.inc()

    async def _release(self, ids: list[str]) -> None:
        if self.fleet is None or not ids:
            return
        try:
            await self.fleet.release(ids)
        except FleetDedupUnavailable:
            self.metrics.fleet_unavailable.inc()
