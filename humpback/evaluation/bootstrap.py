"""Percentile bootstrap intervals over items, seeded: every interval in the metrics (`<name>_ci`) is one of these.

A paired interval resamples the same items for both sides of a comparison, so what the two models have
in common (an easy item, a hard one) cancels out of the delta."""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def interval(stat, columns: list, resamples: int, seed: int, level: float = LEVEL) -> dict:
    """{"lo": ..., "hi": ...}: the interval of `stat(*columns)` (numpy arrays, one entry per item) over `resamples` resamples of the
    items with replacement, rounded to 4 dp. `resamples` must be at least 1000 (the issue's floor: fewer
    makes the 2.5% tails rest on under 25 draws)."""
    if resamples < 1000:
        raise ValueError(f"bootstrap resamples must be at least 1000, not {resamples}")
    cols = [np.asarray(c, dtype=float) for c in columns]
    n = len(cols[0])
    if n == 0 or any(len(c) != n for c in cols):
        raise ValueError("bootstrap columns must be non-empty and of the same length")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    stats = np.array([stat(*(c[row] for c in cols)) for row in idx])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    # An object, not a [lo, hi] list: DVC's metrics commands show nested numbers and drop lists.
    return {"lo": round(float(lo), 4), "hi": round(float(hi), 4)}


