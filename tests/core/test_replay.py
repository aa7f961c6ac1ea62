import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.ids import KafkaOffset
from gateway.core.replay import (
    TRANSITIONS,
    FromKafka,
    FromLocal,
    KafkaBounds,
    Live,
    LocalBounds,
    ReplayDecision,
    Reset,
    ResetReason,
    SubscriptionEvent,
    SubscriptionPhase,
    SubscriptionState,
    Wait,
    decide_replay,
)
from gateway.errors import IllegalTransition, StreamError

Off = KafkaOffset


def local(start: int, next_: int) -> LocalBounds:
    return LocalBounds(Off(start), Off(next_))


def kafka(earliest: int, end: int) -> KafkaBounds:
    return KafkaBounds(Off(earliest), Off(end))


def decide(
    position: int,
    local_: LocalBounds | None,
    kafka_: KafkaBounds | None,
    epoch_matches: bool = True,
) -> ReplayDecision:
    return decide_replay(Off(position), local=local_, kafka=kafka_, epoch_matches=epoch_matches)


# -- the decision table, row by row ----------------------------------------------------------

ROWS = [
    # row 1: epoch changed wins over everything
    ("1", 50, local(40, 60), kafka(0, 60), False, Reset(ResetReason.EPOCH_CHANGED)),
    ("1-kafka-down", 50, local(40, 60), None, False, Reset(ResetReason.EPOCH_CHANGED)),
    ("1-nothing-known", 0, None, None, False, Reset(ResetReason.EPOCH_CHANGED)),
    # row 2: cursor past everything Kafka and the log hold
    ("2", 61, local(40, 60), kafka(0, 60), True, Reset(ResetReason.CURSOR_AHEAD)),
    ("2-no-local", 61, None, kafka(0, 60), True, Reset(ResetReason.CURSOR_AHEAD)),
    ("2-recreated-topic", 5000, local(0, 3), kafka(0, 3), True, Reset(ResetReason.CURSOR_AHEAD)),
    # ... but the local log proves a stale end offset wrong: not ahead
    ("2-stale-end", 60, local(40, 60), kafka(0, 55), True, Live()),
    ("2-stale-end-held", 57, local(40, 60), kafka(0, 55), True, FromLocal(Off(57))),
    # row 3: held by the local log, with or without Kafka
    ("3", 45, local(40, 60), kafka(0, 60), True, FromLocal(Off(45))),
    ("3-low-edge", 40, local(40, 60), kafka(0, 60), True, FromLocal(Off(40))),
    ("3-last", 59, local(40, 60), kafka(0, 60), True, FromLocal(Off(59))),
    ("3-kafka-down", 45, local(40, 60), None, True, FromLocal(Off(45))),
    ("3-past-kafka-retention", 45, local(40, 60), kafka(50, 60), True, FromLocal(Off(45))),
    # row 4: not held, and before Kafka's earliest
    ("4-below-local", 10, local(40, 60), kafka(20, 60), True, Reset(ResetReason.HISTORY_GONE)),
    ("4-no-local", 10, None, kafka(20, 60), True, Reset(ResetReason.HISTORY_GONE)),
    ("4-consumer-behind", 15, local(10, 10), kafka(20, 60), True, Reset(ResetReason.HISTORY_GONE)),
    # row 5: at or past the log's end: live (the consumer brings the rest)
    ("5", 60, local(40, 60), kafka(0, 60), True, Live()),
    ("5-kafka-down", 60, local(40, 60), None, True, Live()),
    ("5-other-instance-ahead", 70, local(40, 60), kafka(0, 80), True, Live()),
    ("5-other-instance-ahead-kafka-down", 70, local(40, 60), None, True, Live()),
    ("5-empty-log", 60, local(60, 60), kafka(0, 60), True, Live()),
    # row 6: older than the log (or no log), Kafka unreachable: never skip, wait
    ("6", 10, local(40, 60), None, True, Wait()),
    ("6-no-local", 10, None, None, True, Wait()),
    ("6-empty-log", 10, local(60, 60), None, True, Wait()),
    # row 7: older than the log, still in Kafka
    ("7", 10, local(40, 60), kafka(0, 60), True, FromKafka(Off(10), Off(40))),
    ("7-earliest-edge", 0, local(40, 60), kafka(0, 60), True, FromKafka(Off(0), Off(40))),
    ("7-empty-log", 10, local(60, 60), kafka(0, 60), True, FromKafka(Off(10), Off(60))),
    # rows 8 and 9: no local log
    ("8", 10, None, kafka(0, 60), True, FromKafka(Off(10), Off(60))),
    ("9", 60, None, kafka(0, 60), True, Live()),
    ("9-empty-partition", 0, None, kafka(0, 0), True, Live()),
    ("9-all-deleted", 60, None, kafka(60, 60), True, Live()),
]


@pytest.mark.parametrize(
    ("position", "local_", "kafka_", "epoch_matches", "expected"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_decision_table(
    position: int,
    local_: LocalBounds | None,
    kafka_: KafkaBounds | None,
    epoch_matches: bool,
    expected: ReplayDecision,
) -> None:
    assert decide(position, local_, kafka_, epoch_matches) == expected


def test_every_row_is_covered() -> None:
    covered = {row[0].split("-")[0] for row in ROWS}
    assert covered == {str(n) for n in range(1, 10)}


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="negative"):
        decide(-1, None, None)
    with pytest.raises(ValueError, match="start <= next"):
        local(5, 4)
    with pytest.raises(ValueError, match="start <= next"):
        local(-1, 4)
    with pytest.raises(ValueError, match="earliest <= end"):
        kafka(5, 4)


# -- the table never skips and never duplicates --------------------------------------------


@st.composite
def partitions(draw: st.DrawFn) -> tuple[int, int, tuple[int, int] | None, int, bool]:
    """end, earliest, local bounds (or None), cursor position, Kafka reachable."""
    end = draw(st.integers(0, 40))
    earliest = draw(st.integers(0, end))
    local_: tuple[int, int] | None = None
    if draw(st.booleans()):
        next_ = draw(st.integers(0, end))
        local_ = (draw(st.integers(0, next_)), next_)
    position = draw(st.integers(0, end + 3))
    return end, earliest, local_, position, draw(st.booleans())


@given(partitions())
def test_replay_loop_delivers_exactly_what_follows_the_cursor(
    case: tuple[int, int, tuple[int, int] | None, int, bool],
) -> None:
    """Drive the decisions the way a flow does, against a model partition.

    Kafka holds [earliest, end); the local log holds [start, next) and its consumer continues
    live from next to end. Every outcome must be the records [cursor, end) in order, or a reset
    or a wait that is justified.
    """
    end, earliest, bounds, start, reachable = case
    log = None if bounds is None else local(*bounds)
    broker = kafka(earliest, end) if reachable else None
    delivered: list[int] = []
    position = start
    for _ in range(5):
        decision = decide(position, log, broker)
        match decision:
            case FromLocal(from_offset=first):
                assert log is not None
                assert first == position
                delivered += range(first, log.next)
                position = log.next
            case FromKafka(from_offset=first, until_offset=until):
                assert broker is not None
                assert broker.earliest <= first == position < until <= end
                delivered += range(first, until)
                position = until
            case Live():
                live_from = log.next if log is not None else end
                assert live_from <= position or log is None
                delivered += [o for o in range(live_from, end) if o >= position]
                assert delivered == list(range(start, end))
                return
            case Reset(reason=reason):
                held = log is not None and log.start <= position < log.next
                assert delivered == list(range(start, position))  # a correct prefix, then reset
                if reason is ResetReason.CURSOR_AHEAD:
                    assert position > end
                else:
                    assert reason is ResetReason.HISTORY_GONE
                    assert not held
                    assert position < earliest
                return
            case Wait():
                assert broker is None
                assert log is None or position < log.start
                return
    pytest.fail("replay did not converge")


# -- the subscription's state machine ------------------------------------------------------

P = SubscriptionPhase
E = SubscriptionEvent


def test_happy_path() -> None:
    state = SubscriptionState()
    assert state.phase is P.REPLAYING
    assert state.delivers
    assert state.handle(E.WAIT) is P.WAITING
    assert state.handle(E.RESUME) is P.REPLAYING
    assert state.handle(E.REPLAY_DONE) is P.LIVE
    assert state.delivers
    assert state.handle(E.RESET) is P.RESET_SENT
    assert not state.delivers
    assert state.handle(E.UNSUBSCRIBE) is P.CLOSED
    assert not state.delivers
    assert "closed" in repr(state)


@pytest.mark.parametrize(
    ("phase", "event"), list(itertools.product(list(SubscriptionPhase), list(SubscriptionEvent)))
)
def test_every_pair_follows_the_table(phase: SubscriptionPhase, event: SubscriptionEvent) -> None:
    state = SubscriptionState()
    state._phase = phase
    if (phase, event) in TRANSITIONS:
        assert state.handle(event) is TRANSITIONS[phase, event]
    else:
        with pytest.raises(IllegalTransition, match=event.value):
            state.handle(event)
        assert state.phase is phase  # an illegal event changes nothing


@pytest.mark.parametrize(
    ("events", "illegal"),
    [
        ([E.REPLAY_DONE], E.REPLAY_DONE),
        ([E.REPLAY_DONE], E.WAIT),
        ([], E.RESUME),
        ([E.RESET], E.RESET),
        ([E.RESET], E.REPLAY_DONE),
        ([E.UNSUBSCRIBE], E.UNSUBSCRIBE),
        ([E.DISCONNECT], E.RESET),
        ([E.WAIT], E.REPLAY_DONE),
    ],
)
def test_illegal_transitions_raise(
    events: list[SubscriptionEvent], illegal: SubscriptionEvent
) -> None:
    state = SubscriptionState()
    for event in events:
        state.handle(event)
    with pytest.raises(IllegalTransition) as caught:
        state.handle(illegal)
    assert isinstance(caught.value, StreamError)
    assert caught.value.code == "illegal_transition"


def test_closed_is_final_and_reachable_from_every_other_phase() -> None:
    assert not any(phase is P.CLOSED for phase, _ in TRANSITIONS)
    for phase in set(P) - {P.CLOSED}:
        assert TRANSITIONS[phase, E.UNSUBSCRIBE] is P.CLOSED
        assert TRANSITIONS[phase, E.DISCONNECT] is P.CLOSED
    assert {phase for phase, event in TRANSITIONS if event is E.RESET} == {
        P.REPLAYING,
        P.WAITING,
        P.LIVE,
    }
