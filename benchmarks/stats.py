"""Summaries of measured samples: percentiles, means and ratios, as plain JSON numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], *, digits: int = 4) -> dict[str, float | int | None]:
    """``{"n", "p50", "p95", "p99", "mean", "min", "max"}`` of ``values`` (``None`` entries when empty)."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p95": rounded(percentile(values, 95)),
        "p99": rounded(percentile(values, 99)),
        "mean": rounded(sum(values) / len(values)) if values else None,
        "min": rounded(min(values)) if values else None,
        "max": rounded(max(values)) if values else None,
    }


def ratio(ours: float | None, baseline: float | None, *, digits: int = 2) -> float | None:
    """``ours / baseline``, or ``None`` when either is missing or the baseline is zero."""
    if ours is None or baseline is None or baseline == 0:
        return None
    return round(ours / baseline, digits)
