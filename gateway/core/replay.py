"""Replay decisions for a stream subscription, one partition at a time, and its state machine.

:func:`decide_replay` says where the updates after a cursor's position come from. Its inputs, for
one partition:

- ``position``: the cursor's next offset, where the client's records resume (Kafka positions:
  offsets of a partition are not contiguous under transactions, so nothing here assumes that a
  record sits at every offset);
- ``local``: what the local downstream log covers, ``[start, next)`` (every committed record of
  that range is held, with its channels; ``start == next`` is an empty but positioned log: the
  consumer continues at ``next``), or ``None`` if it covers nothing of the partition;
- ``kafka``: Kafka's ``[earliest, end)`` for the partition (``end`` is the end offset a
  ``read_committed`` consumer sees), or ``None`` when Kafka is unreachable;
- ``epoch_matches``: whether the cursor's epoch is the current history's.

The first matching row decides (``E = max(kafka.end, local.next)``: records the local log holds
prove Kafka's end is at least there, even when ``kafka`` was read a moment earlier)::

    row  epoch    cursor c against the local log  Kafka                     decision
    ---  -------  ------------------------------  ------------------------  ---------------------
     1   changed  -                               -                         Reset(EPOCH_CHANGED)
     2   same     -                               known, c > E              Reset(CURSOR_AHEAD)
     3   same     start <= c < next               -                         FromLocal(c)
     4   same     not held (c < start, c >= next, known, c < earliest       Reset(HISTORY_GONE)
                  or no local log)
     5   same     c >= next                       unknown, or c >= earliest Live
     6   same     c < start, or no local log      unknown                   Wait
     7   same     c < start                       known, c >= earliest      FromKafka(c, start)
     8   same     no local log                    known, earliest <= c < E  FromKafka(c, E)
     9   same     no local log                    known, c == E             Live

Rows 1, 2 and 4 are the only ways history is declared gone, and each is certain: a different
epoch, a position past everything Kafka and the log hold (the topic was re-created or truncated),
or records neither the log nor Kafka hold any more. Nothing is ever skipped: when the records
after ``c`` are in neither place that can be read now, the answer is :class:`Wait` (row 6).
Row 3 needs no Kafka, so cached updates replay while Kafka is down.

How to use it (the caller's side of the contract):

- Call it again after each step, with the position advanced to where the step ended (after
  ``FromKafka(c, until)``, with ``until``): a Kafka read fills the gap below the local log, the
  next decision replays the log, the one after goes live. Bounds move under a long replay
  (retention prunes the log, Kafka deletes segments); deciding again per step keeps it right.
- ``kafka`` must be read after the cursor was presented, or a cursor another instance issued a
  moment ago may look ahead of a stale end offset (row 2). If a Kafka read fails with an
  out-of-range error, decide again with fresh bounds.
- :class:`Live` and the seam: live delivery must skip records below the position (the client
  has them) and may start only once the replay reached the live feed, with no gap in between.
- A partition the cursor does not name is the caller's choice: position 0 for a partition
  created after the cursor (all of it is new); "from now" uses the current end.
- A subscription as a whole resets if any of its partitions does.

:class:`SubscriptionState` is the life of one subscription, h11 style: one transition table
(:data:`TRANSITIONS`), anything else raises :class:`~gateway.errors.IllegalTransition`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gateway.core.ids import KafkaOffset
from gateway.errors import IllegalTransition

# -- replay decisions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalBounds:
    """The local log holds every committed record of ``[start, next)`` of one partition.

    ``start == next``: it holds none, but its consumer continues at ``next``.
    """

    start: KafkaOffset
    next: KafkaOffset

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.next:
            raise ValueError(
                f"local bounds need 0 <= start <= next, got [{self.start}, {self.next})"
            )


@dataclass(frozen=True, slots=True)
class KafkaBounds:
    """Kafka holds ``[earliest, end)`` of one partition (``earliest == end``: nothing held)."""

    earliest: KafkaOffset
    end: KafkaOffset

    def __post_init__(self) -> None:
        if not 0 <= self.earliest <= self.end:
            raise ValueError(
                f"Kafka bounds need 0 <= earliest <= end, got [{self.earliest}, {self.end})"
            )


class ResetReason(StrEnum):
    """Why a cursor's history is gone: the machine-readable reason of a ``reset`` frame."""

    EPOCH_CHANGED = "epoch_changed"
    """The cursor belongs to another history (topic re-created, cluster changed)."""
    CURSOR_AHEAD = "cursor_ahead"
    """The cursor is past the end of the partition: the topic was re-created or truncated."""
    HISTORY_GONE = "history_gone"
    """Records after the cursor are past retention, in Kafka and in the local log."""


@dataclass(frozen=True, slots=True)
class FromLocal:
    """Replay from the local log, starting at ``from_offset``."""

    from_offset: KafkaOffset


@dataclass(frozen=True, slots=True)
class FromKafka:
    """Read ``[from_offset, until_offset)`` from Kafka, then decide again at ``until_offset``."""

    from_offset: KafkaOffset
    until_offset: KafkaOffset


@dataclass(frozen=True, slots=True)
class Live:
    """Nothing to replay: deliver live records at or after the position."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Records after the position are only in Kafka, which is unreachable: decide again later."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The history the cursor needs is gone; tell the client (it must re-snapshot)."""

    reason: ResetReason


ReplayDecision = FromLocal | FromKafka | Live | Wait | Reset


def decide_replay(
    position: KafkaOffset,
    *,
    local: LocalBounds | None,
    kafka: KafkaBounds | None,
    epoch_matches: bool,
) -> ReplayDecision:
    """Where the records of one partition after ``position`` come from (the module's table)."""
    if position < 0:
        raise ValueError(f"a position is never negative, got {position}")
    if not epoch_matches:
        return Reset(ResetReason.EPOCH_CHANGED)  # row 1
    end = None
    if kafka is not None:
        end = kafka.end if local is None else max(kafka.end, local.next)
        if position > end:
            return Reset(ResetReason.CURSOR_AHEAD)  # row 2
    if local is not None and local.start <= position < local.next:
        return FromLocal(position)  # row 3
    if kafka is not None and position < kafka.earliest:
        return Reset(ResetReason.HISTORY_GONE)  # row 4
    if local is not None and position >= local.next:
        return Live()  # row 5
    if kafka is None or end is None:
        return Wait()  # row 6
    if local is not None:
        return FromKafka(position, local.start)  # row 7
    if position < end:
        return FromKafka(position, end)  # row 8
    return Live()  # row 9


# -- the subscription's state machine -----------------------------------------------------


class SubscriptionPhase(StrEnum):
    """Where a subscription is in its life."""

    REPLAYING = "replaying"
    """Catching up from the local log or Kafka (the initial phase)."""
    WAITING = "waiting"
    """Replay needs Kafka, which is unreachable; nothing is skipped meanwhile."""
    LIVE = "live"
    """Caught up: receiving live updates."""
    RESET_SENT = "reset_sent"
    """A ``reset`` was sent: nothing more is delivered; the client must re-snapshot."""
    CLOSED = "closed"
    """Unsubscribed or the connection is gone (final)."""


class SubscriptionEvent(StrEnum):
    """What happens to a subscription."""

    REPLAY_DONE = "replay_done"
    FELL_BEHIND = "fell_behind"
    """Live, the queue filled (a burst, a slow reader): catch up from the log again."""
    WAIT = "wait"
    RESUME = "resume"
    RESET = "reset"
    UNSUBSCRIBE = "unsubscribe"
    DISCONNECT = "disconnect"


_P = SubscriptionPhase
_E = SubscriptionEvent

TRANSITIONS: Final[Mapping[tuple[SubscriptionPhase, SubscriptionEvent], SubscriptionPhase]] = {
    (_P.REPLAYING, _E.REPLAY_DONE): _P.LIVE,
    (_P.REPLAYING, _E.WAIT): _P.WAITING,
    (_P.REPLAYING, _E.RESET): _P.RESET_SENT,
    (_P.REPLAYING, _E.UNSUBSCRIBE): _P.CLOSED,
    (_P.REPLAYING, _E.DISCONNECT): _P.CLOSED,
    (_P.WAITING, _E.RESUME): _P.REPLAYING,
    (_P.WAITING, _E.RESET): _P.RESET_SENT,
    (_P.WAITING, _E.UNSUBSCRIBE): _P.CLOSED,
    (_P.WAITING, _E.DISCONNECT): _P.CLOSED,
    (_P.LIVE, _E.FELL_BEHIND): _P.REPLAYING,
    (_P.LIVE, _E.RESET): _P.RESET_SENT,
    (_P.LIVE, _E.UNSUBSCRIBE): _P.CLOSED,
    (_P.LIVE, _E.DISCONNECT): _P.CLOSED,
    (_P.RESET_SENT, _E.UNSUBSCRIBE): _P.CLOSED,
    (_P.RESET_SENT, _E.DISCONNECT): _P.CLOSED,
}
"""(phase, event) -> next phase; every pair not listed is illegal. CLOSED is final."""


class SubscriptionState:
    """The phase of one subscription, moved only by :data:`TRANSITIONS`."""

    __slots__ = ("_phase",)

    def __init__(self) -> None:
        """A new subscription starts REPLAYING ("from now" replays nothing and is done at once)."""
        self._phase = SubscriptionPhase.REPLAYING

    @property
    def phase(self) -> SubscriptionPhase:
        """The current phase."""
        return self._phase

    @property
    def delivers(self) -> bool:
        """Whether updates may still be sent to the client (not after a reset or close)."""
        return self._phase in (_P.REPLAYING, _P.WAITING, _P.LIVE)

    def handle(self, event: SubscriptionEvent) -> SubscriptionPhase:
        """Apply an event and return the new phase; raise IllegalTransition if not allowed."""
        try:
            self._phase = TRANSITIONS[self._phase, event]
        except KeyError:
            raise IllegalTransition(
                f"subscription event {str(event)!r} is illegal in phase {str(self._phase)!r}"
            ) from None
        return self._phase

    def __repr__(self) -> str:
        return f"<SubscriptionState {self._phase.value}>"
