"""The reliability checker's verdict: a :class:`Report` counts each kind of problem (lost,
duplicated, phantom, out of order; for streams skipped, repeated, out of order, unexpected)
with the offenders (an :class:`OrderViolation`, a :class:`StreamProblem`), and prints itself
with a few examples of each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.testing.checker_logs import Position, position_text

EXAMPLES: Final = 5
"""How many examples of each kind of problem :meth:`Report.__str__` shows."""


@dataclass(frozen=True, slots=True)
class OrderViolation:
    """Two events of one key, acked ``earlier`` then ``later`` by ``client``, that Kafka holds
    the other way round (or on different partitions)."""

    client: str
    key: str
    earlier: str
    later: str
    earlier_at: Position
    later_at: Position

    def __str__(self) -> str:
        return (
            f"{self.client} key {self.key!r}: {self.earlier} acked before {self.later}, "
            f"but Kafka has {position_text(self.earlier_at)} vs {position_text(self.later_at)}"
        )


@dataclass(frozen=True, slots=True)
class StreamProblem:
    """One stream anomaly of one client on one channel."""

    client: str
    channel: str
    position: Position
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.client} {self.channel}: {position_text(self.position)}{extra}"


@dataclass(slots=True)
class Report:
    """The checker's verdict: counts of each kind of problem, with the offenders."""

    acked: int = 0
    sent: int = 0
    records: int = 0
    lost: list[str] = field(default_factory=list)
    backlog: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    """event id -> number of copies in Kafka (2 or more)."""
    raw_duplicates: dict[bytes, int] = field(default_factory=dict)
    """value bytes -> number of identical records (2 or more)."""
    phantom: list[str] = field(default_factory=list)
    out_of_order: list[OrderViolation] = field(default_factory=list)
    updates_received: int = 0
    updates_expected: int = 0
    skipped: list[StreamProblem] = field(default_factory=list)
    repeated: list[StreamProblem] = field(default_factory=list)
    stream_out_of_order: list[StreamProblem] = field(default_factory=list)
    unexpected: list[StreamProblem] = field(default_factory=list)

    @property
    def duplicate_copies(self) -> int:
        """Extra copies in Kafka beyond the first, over every duplicated event id."""
        return sum(n - 1 for n in self.duplicated.values())

    @property
    def no_loss(self) -> bool:
        """Nothing acknowledged is missing for good (backlog and quarantine are not loss)."""
        return not self.lost

    @property
    def events_ok(self) -> bool:
        """Every acknowledged event exactly once in Kafka, nothing else there, in key order."""
        return not (
            self.lost
            or self.backlog
            or self.quarantined
            or self.dead_lettered
            or self.duplicated
            or self.raw_duplicates
            or self.phantom
            or self.out_of_order
        )

    @property
    def streams_ok(self) -> bool:
        """Every subscriber got every update of its channels exactly once, in order."""
        return not (self.skipped or self.repeated or self.stream_out_of_order or self.unexpected)

    @property
    def ok(self) -> bool:
        """No problem of any kind (an acknowledged event still in a backlog is one: it is not
        in Kafka yet)."""
        return self.events_ok and self.streams_ok

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"reliability check {verdict}: {self.acked} acked, {self.sent} sent, "
            f"{self.records} records in Kafka, {self.updates_received} updates received "
            f"({self.updates_expected} owed)"
        ]
        sections: list[tuple[str, Sequence[object]]] = [
            ("lost (acked, not in Kafka nor in any store)", self.lost),
            ("still in a store backlog (acked, not forwarded yet)", self.backlog),
            ("quarantined in a store", self.quarantined),
            ("dead-lettered", self.dead_lettered),
            (
                "duplicated event ids",
                [f"{i} x{n}" for i, n in sorted(self.duplicated.items())],
            ),
            (
                "raw duplicate values",
                [f"{v[:60]!r}... x{n}" for v, n in self.raw_duplicates.items()],
            ),
            ("phantom (in Kafka, never sent)", self.phantom),
            ("out of order per key", self.out_of_order),
            ("stream: skipped", self.skipped),
            ("stream: repeated", self.repeated),
            ("stream: out of order", self.stream_out_of_order),
            ("stream: unexpected (not of the channel)", self.unexpected),
        ]
        for title, items in sections:
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines.extend(f"    - {item}" for item in list(items)[:EXAMPLES])
                if len(items) > EXAMPLES:
                    lines.append(f"    - ... {len(items) - EXAMPLES} more")
        return "\n".join(lines)
