"""Ingest flow: a decoded batch -> validation and in-batch dedup (core) -> durable store -> results.

Nothing is acknowledged before the store has committed every accepted event of the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.core.authz import Principal
from gateway.core.ingest import (
    EventResult,
    IngestLimits,
    PayloadChecker,
    Status,
    extract_events,
    finish_batch,
    plan_batch,
)
from gateway.errors import RequestError, StoreError
from gateway.flows.limits import UNLIMITED, SubjectLimits
from gateway.flows.ports import EventStore
from gateway.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class IngestFlow:
    store: EventStore
    checker: PayloadChecker
    ingest_limits: IngestLimits
    metrics: GatewayMetrics
    limits: SubjectLimits = UNLIMITED

    async def ingest(self, body: object, principal: Principal) -> list[EventResult]:
        """Results for every event of ``body``, once all accepted ones are durable.

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
        try:
            stored = await self.store.append(plan.to_store)
        except StoreError:
            self.metrics.store_refusals.inc()
            raise
        results = finish_batch(plan, stored)
        for status in Status:
            count = sum(1 for result in results if result.status is status)
            if count:
                self.metrics.events.labels(status.value).inc(count)
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        return results
