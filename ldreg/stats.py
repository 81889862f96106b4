"""The statistics behind the findings' verdicts: paired t-intervals and Holm's correction.

Pure functions of numbers (numpy and scipy only), so each can be checked by hand. A verdict
compares a paired per-example change with zero; how many changes were tested together decides,
through Holm's step-down procedure, the confidence level at which each one's interval is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _scipy


@dataclass(frozen=True)
class Interval:
    """A mean with its standard error, its two-sided t-interval at ``level`` and its p-value (H0: mean 0)."""

    n: int
    mean: float
    se: float
    low: float
    high: float
    level: float
    p: float

    def excludes_zero(self) -> int:
        """+1 when the interval lies above 0, -1 when below, 0 when it covers 0 (or is undefined)."""
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student's t-interval for the mean of ``values`` (one number per example, or per seed).

    NaNs are dropped. With fewer than 2 values, or no spread at all around a non-zero mean, the
    standard error is 0 or undefined; the interval is then the point (p 0) or undefined (NaN).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan, level, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan, level, math.nan)
    se = float(x.std(ddof=1) / math.sqrt(n))
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return Interval(n, mean, 0.0, mean, mean, level, p)
    crit = float(_scipy.t.ppf((1 + level) / 2, n - 1))
    p = float(2 * _scipy.t.sf(abs(mean / se), n - 1))
    return Interval(n, mean, se, mean - crit * se, mean + crit * se, level, p)


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Holm's step-down procedure, as the significance level each hypothesis is judged at.

    Sorted ascending, the j-th smallest p (j = 1..m) is compared with alpha / (m - j + 1); the
    procedure stops at the first that exceeds its threshold, and that one and all larger p-values
    keep the threshold at which it stopped. So a hypothesis is rejected exactly when its p is at
    most its returned level, and an interval drawn at confidence 1 - level excludes 0 exactly
    when Holm rejects (intervals consistent with the decisions; not simultaneous intervals).
    NaN p-values (nothing to test) are placed last and never rejected.
    """
    p = [math.inf if not np.isfinite(v) else float(v) for v in pvalues]
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    levels = [0.0] * m
    stopped: float | None = None
    for rank, i in enumerate(order):
        threshold = alpha / (m - rank)
        if stopped is None and p[i] > threshold:
            stopped = threshold
        levels[i] = stopped if stopped is not None else threshold
    return levels


def holm_adjusted(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values: max over j' <= j of (m - j' + 1) p_(j'), capped at 1 (NaN stays NaN)."""
    p = [float(v) for v in pvalues]
    m = len(p)
    order = sorted((i for i in range(m) if np.isfinite(p[i])), key=lambda i: p[i])
    out = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def random_effects(seed_means: Sequence[float], level: float = 0.95) -> Interval:
    """Seed as a random effect, the simple way: a t-interval over the seeds' own mean changes.

    Its standard error is the spread between seeds, which already contains each seed's sampling
    noise over examples; with k seeds it has k - 1 degrees of freedom (so 3 seeds give 2).
    """
    return t_interval(seed_means, level)


__all__ = ["Interval", "holm_adjusted", "holm_levels", "random_effects", "t_interval"]
