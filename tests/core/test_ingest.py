from collections.abc import Mapping

import pytest

from gateway.core.ingest import (
    BatchPlan,
    Claim,
    IngestLimits,
    Status,
    apply_fleet_claims,
    extract_events,
    finish_batch,
    plan_batch,
)
from gateway.core.rejections import RejectCode, Rejection
from gateway.errors import BatchTooLarge, InFlightElsewhere, MalformedBody
from tests.factories import order_placed

LIMITS = IngestLimits(max_batch_events=10, max_event_bytes=2000)


class AcceptAll:
    def check(
        self, event_type: str, version: int, payload: Mapping[str, object]
    ) -> Rejection | None:
        return None


class RefuseQuantity:
    def check(
        self, event_type: str, version: int, payload: Mapping[str, object]
    ) -> Rejection | None:
        if "bad" in payload:
            return Rejection(RejectCode.INVALID_PAYLOAD, "bad", "payload.bad")
        return None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], MalformedBody),
        ({"events": {}}, MalformedBody),
        ({"evts": []}, MalformedBody),
        ({"events": [], "more": 1}, MalformedBody),
        ({"events": [{}] * 11}, BatchTooLarge),
    ],
)
def test_batch_shape_errors(body: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        extract_events(body, LIMITS)


def test_plan_separates_rejects_dups_and_storables() -> None:
    a, b = order_placed(), order_placed(payload={"bad": 1})
    events: list[object] = [a, b, dict(a), "junk", order_placed()]
    plan = plan_batch(events, RefuseQuantity(), LIMITS)
    assert plan.slots == [0, 4]
    statuses = [r.status if r else None for r in plan.results]
    assert statuses == [None, Status.REJECTED, Status.DUPLICATE, Status.REJECTED, None]
    rejected = plan.results[1]
    assert rejected is not None
    assert rejected.error is not None
    assert rejected.error.field == "payload.bad"


def test_rejected_first_copy_does_not_shadow_a_valid_second_copy() -> None:
    good = order_placed()
    bad = dict(good, payload={"bad": 1})
    plan = plan_batch([bad, good], RefuseQuantity(), LIMITS)
    assert plan.slots == [1]


def test_oversize_event_is_rejected_alone() -> None:
    big = order_placed(payload={"blob": "x" * 5000})
    plan = plan_batch([big, order_placed()], AcceptAll(), LIMITS)
    first = plan.results[0]
    assert first is not None
    assert first.error is not None
    assert first.error.code is RejectCode.EVENT_TOO_LARGE
    assert plan.slots == [1]


def test_finish_folds_store_answers_in_batch_order() -> None:
    events: list[object] = [order_placed(), "junk", order_placed()]
    plan = plan_batch(events, AcceptAll(), LIMITS)
    results = finish_batch(plan, [True, False])
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.status for r in results] == [Status.ACCEPTED, Status.REJECTED, Status.DUPLICATE]


def test_finish_requires_one_answer_per_event() -> None:
    plan: BatchPlan = plan_batch([order_placed()], AcceptAll(), LIMITS)
    with pytest.raises(ValueError, match="once per event"):
        finish_batch(plan, [])


def test_fleet_claims_turn_events_held_elsewhere_into_duplicates() -> None:
    events = [order_placed("a"), order_placed("b"), order_placed("c")]
    plan = plan_batch(events, AcceptAll(), LIMITS)
    ids = [e["event_id"] for e in events]
    claims = {ids[0]: Claim.OURS, ids[1]: Claim.COMMITTED_ELSEWHERE, ids[2]: Claim.OURS}
    kept = apply_fleet_claims(plan, claims)
    assert [e.event_id for e in kept.to_store] == [ids[0], ids[2]]
    results = finish_batch(kept, [True, False])
    assert [r.status for r in results] == [Status.ACCEPTED, Status.DUPLICATE, Status.DUPLICATE]
    assert [r.index for r in results] == [0, 1, 2]


def test_fleet_claim_pending_elsewhere_refuses_the_whole_batch() -> None:
    events = [order_placed("a"), order_placed("b")]
    plan = plan_batch(events, AcceptAll(), LIMITS)
    claims = {events[1]["event_id"]: Claim.PENDING_ELSEWHERE}
    with pytest.raises(InFlightElsewhere) as refused:
        apply_fleet_claims(plan, claims)
    assert refused.value.retriable


def test_publish_permission_is_checked_before_the_payload() -> None:
    allowed, forbidden = order_placed("a", source="me"), order_placed("b", source="you")
    forbidden["payload"] = {"bad": 1}  # the checker would refuse it as invalid_payload
    plan = plan_batch([allowed, forbidden], RefuseQuantity(), LIMITS, lambda _t, s: s == "me")
    results = finish_batch(plan, [True])
    assert results[0].status is Status.ACCEPTED
    assert results[1].status is Status.REJECTED
    assert results[1].error is not None
    assert results[1].error.code is RejectCode.PUBLISH_FORBIDDEN
