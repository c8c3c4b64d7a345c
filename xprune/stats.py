"""Uncertainty of reported figures: confidence intervals over test samples.

Intervals come from scipy.stats; none of the maths is ours. They describe the
spread over the evaluated test samples of one trained model, not training
variance across seeds.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["mean_ci", "proportion_ci"]


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval of the finite ``values``.

    Returns
    -------
    (mean, low, high, n)
        ``n`` counts the finite values used (NaNs, e.g. undefined rank
        correlations of constant maps, are left out). With n < 2 the interval
        is (nan, nan); with zero spread it collapses to the mean.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    sem = float(stats.sem(v))
    if sem == 0.0:
        return mean, mean, mean, n
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high), n


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """A proportion (e.g. accuracy) with its Wilson score interval: (p, low, high)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence,
                                                                method="wilson")
    return successes / n, float(ci.low), float(ci.high)
