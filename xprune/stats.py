"""Uncertainty of reported figures: confidence intervals over test samples, and tests
of a group of samples against the rest (plain and stratified).

Intervals come from scipy.stats; none of the maths is ours. They describe the
spread over the evaluated test samples of one trained model, not training
variance across seeds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

__all__ = ["bootstrap_ci", "compare_groups", "holm", "mean_ci", "paired_test", "proportion_ci",
           "stratified_difference", "t_test_p", "van_elteren"]


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


def t_test_p(values) -> float:
    """Two-sided one-sample t-test p-value of mean = 0 (scipy), on the finite values.

    The test behind :func:`mean_ci`'s t-interval: p < 0.05 exactly when the 95% interval
    excludes 0. Fewer than 2 values: NaN; no spread: 0 if the mean is not 0,
    else 1 (the interval collapses to the mean).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return math.nan
    if float(v.max()) == float(v.min()):
        return 1.0 if float(v[0]) == 0.0 else 0.0
    return float(stats.ttest_1samp(v, 0.0).pvalue)


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


def compare_groups(values, in_group, *, n_resamples: int = 2000, seed: int = 0,
                   confidence: float = 0.95) -> dict[str, float]:
    """Difference in means, group - rest, with a bootstrap CI and a Mann-Whitney U test.

    Parameters
    ----------
    values : array of shape (N,)
        One value per sample (NaNs are left out).
    in_group : bool array of shape (N,)
        True for the group's samples (e.g. Hooker et al.'s PIEs), False for the rest.

    Returns
    -------
    dict
        ``n_group``, ``n_rest``, ``mean_group``, ``mean_rest``, ``diff`` (group - rest),
        ``ci_low``, ``ci_high`` (two-sample BCa bootstrap, ``scipy.stats.bootstrap``
        resampling each group separately, generator seeded with ``seed``),
        ``u`` and ``p`` (two-sided ``scipy.stats.mannwhitneyu``). NaN where a
        group has fewer than 2 values (no interval, no test).
    """
    v = np.asarray(values, dtype=np.float64)
    grp = np.asarray(in_group, dtype=bool)
    if v.shape != grp.shape or v.ndim != 1:
        raise ValueError(f"Expected `values` and `in_group` of the same shape (N,), got {v.shape} "
                         f"and {grp.shape}.")
    ok = np.isfinite(v)
    a, b = v[ok & grp], v[ok & ~grp]
    out = {"n_group": int(a.size), "n_rest": int(b.size),
           "mean_group": float(a.mean()) if a.size else math.nan,
           "mean_rest": float(b.mean()) if b.size else math.nan,
           "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "u": math.nan,
           "p": math.nan}
    if a.size and b.size:
        out["diff"] = out["mean_group"] - out["mean_rest"]
    if a.size < 2 or b.size < 2:
        return out
    if np.ptp(np.concatenate([a, b])) == 0:
        out.update(ci_low=out["diff"], ci_high=out["diff"], u=a.size * b.size / 2, p=1.0)
        return out
    with warnings.catch_warnings():  # nearly degenerate groups: BCa may warn, then NaN
        warnings.simplefilter("ignore")
        res = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis),
                              vectorized=True, method="BCa", n_resamples=n_resamples,
                              confidence_level=confidence, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined: percentile instead
        low, high = (float(q) for q in np.quantile(
            res.bootstrap_distribution, [(1 - confidence) / 2, (1 + confidence) / 2]))
    test = stats.mannwhitneyu(a, b, alternative="two-sided")
    out.update(ci_low=low, ci_high=high, u=float(test.statistic), p=float(test.pvalue))
    return out


def stratified_difference(values, in_group, strata, *, n_resamples: int = 2000, seed: int = 0,
                          confidence: float = 0.95) -> dict[str, float]:
    """Group - rest difference within strata, averaged with the group's weights.

    ``sum_s w_s (mean_group_s - mean_rest_s)`` over the strata s that hold at
    least one group member and one other sample, with ``w_s`` the stratum's
    share of those members: the difference a member shows compared with
    others of the same stratum (Hooker et al.'s PIEs against non-PIEs of
    similar dense margin). The percentile interval comes
    from resampling each (stratum, group) cell with replacement. The test is
    van Elteren's stratified rank-sum test (:func:`van_elteren`), the
    stratified counterpart of the Mann-Whitney test of :func:`compare_groups`,
    so that every comparison of the run has a p-value for one Holm family.

    Returns
    -------
    dict
        ``diff``, ``ci_low``, ``ci_high``, ``n_group`` (group members in usable strata),
        ``n_rest`` (others in them), ``n_strata`` (usable strata), ``z`` and
        ``p`` (two-sided van Elteren test; NaN with fewer than 2 members).
    """
    cells = _strata_cells(values, in_group, strata)
    out = {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "n_group": int(sum(a.size for a, _ in cells)),
           "n_rest": int(sum(b.size for _, b in cells)), "n_strata": len(cells),
           "z": math.nan, "p": math.nan}
    if not cells:
        return out
    weights = np.array([a.size for a, _ in cells], dtype=np.float64)
    weights /= weights.sum()
    out["diff"] = float(sum(w * (a.mean() - b.mean()) for w, (a, b) in zip(weights, cells,
                                                                              strict=True)))
    if out["n_group"] < 2:
        return out
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_resamples)
    for w, (a, b) in zip(weights, cells, strict=True):
        ma = a[rng.integers(0, a.size, (n_resamples, a.size))].mean(axis=1)
        mb = b[rng.integers(0, b.size, (n_resamples, b.size))].mean(axis=1)
        draws += w * (ma - mb)
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    z, p = _van_elteren_cells(cells)
    out.update(ci_low=float(low), ci_high=float(high), z=z, p=p)
    return out


def _strata_cells(values, in_group, strata) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stratum with both groups: (finite group values, finite other values)."""
    v = np.asarray(values, dtype=np.float64)
    grp = np.asarray(in_group, dtype=bool)
    s = np.asarray(strata)
    if not (v.shape == grp.shape == s.shape) or v.ndim != 1:
        raise ValueError(f"Expected `values`, `in_group` and `strata` of the same shape (N,), got "
                         f"{v.shape}, {grp.shape} and {s.shape}.")
    ok = np.isfinite(v)
    cells = []
    for stratum in np.unique(s[ok]):
        a, b = v[ok & grp & (s == stratum)], v[ok & ~grp & (s == stratum)]
        if a.size and b.size:
            cells.append((a, b))
    return cells


def van_elteren(values, in_group, strata) -> tuple[float, float]:
    """Van Elteren's stratified Wilcoxon rank-sum test of a group vs the rest: ``(z, p)``.

    Within each stratum holding at least one member and one other finite value,
    ``W_s`` is the group's rank sum (average ranks for ties), with mean
    ``n1 (N + 1) / 2`` and tie-corrected variance
    ``n1 n2 / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1)))``; the strata are
    combined with weights ``1 / (N_s + 1)`` and ``z`` is referred to the
    standard normal (two-sided ``p``; ``z > 0``: the group ranks higher). With one
    stratum this is the Mann-Whitney U test with the normal approximation,
    tie correction and no continuity correction. Van Elteren 1960, 'On the
    combination of independent two-sample tests of Wilcoxon', Bull. Int.
    Statist. Inst. 37.

    Returns
    -------
    (z, p) : floats; NaN when no stratum is usable, ``(0, 1)`` when all values tie.
    """
    cells = _strata_cells(values, in_group, strata)
    return _van_elteren_cells(cells)


def _van_elteren_cells(cells) -> tuple[float, float]:
    if not cells:
        return math.nan, math.nan
    total, variance = 0.0, 0.0
    for a, b in cells:
        n1, n2 = a.size, b.size
        n = n1 + n2
        ranks = stats.rankdata(np.concatenate([a, b]))
        _, ties = np.unique(np.concatenate([a, b]), return_counts=True)
        tie_term = float((ties.astype(np.float64) ** 3 - ties).sum()) / (n * (n - 1)) \
            if n > 1 else 0.0
        weight = 1.0 / (n + 1)
        total += weight * (ranks[:n1].sum() - n1 * (n + 1) / 2)
        variance += weight ** 2 * n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:
        return 0.0, 1.0
    z = total / math.sqrt(variance)
    return float(z), float(2 * stats.norm.sf(abs(z)))
