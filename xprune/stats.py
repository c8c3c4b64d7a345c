"""Uncertainty of reported figures: confidence intervals over test samples.

Intervals come from scipy.stats; none of the maths is ours. They describe the
spread over the evaluated test samples of one trained model, not training
variance across seeds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

__all__ = ["bootstrap_ci", "holm", "mean_ci", "paired_test", "proportion_ci"]


def _finite(values) -> tuple[np.ndarray, tuple[float, float, float, int] | None]:
    """The finite values as float64, and the result when there are too few for an interval."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return v, (math.nan, math.nan, math.nan, 0)
    if v.size < 2:
        return v, (float(v.mean()), math.nan, math.nan, 1)
    return v, None


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval of the finite ``values``.

    Returns
    -------
    (mean, low, high, n)
        ``n`` counts the finite values used (NaNs, e.g. undefined rank
        correlations of constant maps, are left out). With n < 2 the interval
        is (nan, nan); with zero spread it collapses to the mean.
    """
    v, early = _finite(values)
    if early is not None:
        return early
    n, mean = int(v.size), float(v.mean())
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


def bootstrap_ci(values, confidence: float = 0.95, *, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float, int]:
    """Mean and bias-corrected, accelerated (BCa) bootstrap interval of the finite ``values``.

    ``scipy.stats.bootstrap`` with ``n_resamples`` resamples drawn from a
    generator seeded with ``seed``, so the same values and seed give the same
    interval. Returns ``(mean, low, high, n)`` like :func:`mean_ci`: NaNs are
    left out, n < 2 gives no interval, zero spread collapses it to the mean.
    Efron 1987, 'Better bootstrap confidence intervals', JASA.
    """
    v, early = _finite(values)
    if early is not None:
        return early
    n, mean = int(v.size), float(v.mean())
    if float(v.max()) == float(v.min()):
        return mean, mean, mean, n
    with warnings.catch_warnings():  # nearly degenerate samples: BCa may warn, then NaN
        warnings.simplefilter("ignore")
        res = stats.bootstrap((v,), np.mean, confidence_level=confidence,
                              n_resamples=n_resamples, method="BCa", vectorized=True,
                              rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined: percentile instead
        low, high = (float(q) for q in np.quantile(
            res.bootstrap_distribution, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return mean, low, high, n


def paired_test(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (finite ones only).

    ``scipy.stats.wilcoxon`` with its default zero handling. Differences that
    are all zero give p = 1 (nothing changed); fewer than 2 finite
    differences give NaN. Wilcoxon 1945, 'Individual comparisons by ranking methods'.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return math.nan
    if not d.any():
        return 1.0
    return float(stats.wilcoxon(d).pvalue)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, family-wise error control (Holm 1979).

    The k-th smallest of m p-values becomes ``max_{j<=k} min(1, (m - j + 1) p_(j))``;
    NaNs stay NaN and are not counted in m. Reject where the adjusted value is
    below alpha. Holm 1979, 'A simple sequentially rejective multiple test
    procedure', Scand. J. Statist. 6(2).
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
