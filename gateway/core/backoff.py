"""Capped exponential backoff with full jitter (pure: the random source is injected)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delay before retry *n*: uniform in ``[0, min(cap, base * 2**n)]`` ("full jitter").

    ``reset()`` after a success; ``next_delay()`` after each failure.
    """

    base: float = 0.2
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 32)))
        self.failures += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.failures = 0
