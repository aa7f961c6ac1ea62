"""Optional PNG timeline of a load run (matplotlib is not a dependency: skipped without it)."""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_timeline"]


def plot_timeline(samples: Sequence[tuple[float, int, int, bool]], path: Path) -> str | None:
    """Draw published/answered counts over time, link-down periods shaded, into ``path``.

    Returns a note for the report when nothing was drawn (matplotlib absent, no samples).
    """
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        pyplot: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return f"--plot {path}: skipped, matplotlib is not installed"
    if not samples:
        return f"--plot {path}: skipped, no samples (run too short)"
    times = [s[0] for s in samples]
    figure, axes = pyplot.subplots(figsize=(10, 4))
    axes.plot(times, [s[1] for s in samples], label="published")
    axes.plot(times, [s[2] for s in samples], label="answered")
    for (t0, *_, up), (t1, *_) in itertools.pairwise(samples):
        if not up:
            axes.axvspan(t0, t1, color="red", alpha=0.15, linewidth=0)
    axes.set_xlabel("seconds")
    axes.set_ylabel("events")
    axes.set_title("sync-gateway load (shaded: link down)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return None
