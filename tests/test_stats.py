"""Tests of xprune.stats: the group comparisons (used by the Hooker et al. 2019 reproduction) and
the t-test behind mean_ci's interval, against scipy and literal loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from xprune.stats import compare_groups, mean_ci, stratified_difference, t_test_p, van_elteren


def test_compare_groups_against_scipy():
    rng = np.random.default_rng(1)
    values = rng.normal(size=120)
    values[[3, 50]] = np.nan
    in_group = np.zeros(120, bool)
    in_group[:25] = True
    values[:25] -= 0.8
    res = compare_groups(values, in_group, n_resamples=500, seed=4)
    a, b = values[:25], values[25:]
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    assert (res["n_group"], res["n_rest"]) == (24, 94)
    assert res["diff"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    literal = stats.mannwhitneyu(a, b, alternative="two-sided")
    assert res["u"] == literal.statistic and res["p"] == pytest.approx(literal.pvalue)
    assert res["ci_low"] < res["diff"] < res["ci_high"] < 0
    assert compare_groups(values, in_group, n_resamples=500, seed=4) == res
    few = compare_groups(values, np.arange(120) == 0, n_resamples=500)
    assert math.isnan(few["p"]) and math.isnan(few["ci_low"])


def test_stratified_difference_against_a_literal_loop():
    rng = np.random.default_rng(3)
    values = rng.normal(size=80)
    in_group = rng.random(80) < 0.3
    strata = rng.integers(0, 4, size=80)
    strata[in_group & (strata == 3)] = 2   # stratum 3 holds no member: weight 0
    res = stratified_difference(values, in_group, strata, n_resamples=300, seed=0)
    total, weight = 0.0, 0
    for s in range(4):
        a = [values[i] for i in range(80) if strata[i] == s and in_group[i]]
        b = [values[i] for i in range(80) if strata[i] == s and not in_group[i]]
        if a and b:
            total += len(a) * (sum(a) / len(a) - sum(b) / len(b))
            weight += len(a)
    assert res["diff"] == pytest.approx(total / weight)
    assert res["n_strata"] == 3 and res["ci_low"] < res["diff"] < res["ci_high"]
    one = stratified_difference(values, in_group, np.zeros(80), n_resamples=300)
    assert one["diff"] == pytest.approx(values[in_group].mean() - values[~in_group].mean())


def test_van_elteren_with_one_stratum_is_mann_whitney_asymptotic():
    rng = np.random.default_rng(5)
    values = np.round(rng.normal(size=70), 1)  # ties
    in_group = rng.random(70) < 0.3
    z, p = van_elteren(values, in_group, np.zeros(70))
    ref = stats.mannwhitneyu(values[in_group], values[~in_group], alternative="two-sided",
                             method="asymptotic", use_continuity=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    assert np.sign(z) == np.sign(ref.statistic - in_group.sum() * (~in_group).sum() / 2)
    assert van_elteren(np.ones(10), np.arange(10) < 3, np.zeros(10)) == (0.0, 1.0)
    assert all(math.isnan(v) for v in van_elteren(values, np.zeros(70, bool), np.zeros(70)))


def test_van_elteren_against_a_literal_loop():
    rng = np.random.default_rng(6)
    values = np.round(rng.normal(size=90), 1)
    in_group = rng.random(90) < 0.35
    values[in_group] += 0.4
    strata = rng.integers(0, 3, size=90)
    total, var = 0.0, 0.0
    for s in range(3):
        a, b = values[(strata == s) & in_group], values[(strata == s) & ~in_group]
        both = np.concatenate([a, b])
        n1, n2, n = len(a), len(b), len(both)
        ranks = [sum(1.0 for w in both if w < v) + (sum(1.0 for w in both if w == v) + 1) / 2
                 for v in both]
        counts = [list(both).count(v) for v in set(both)]
        tie = sum(t ** 3 - t for t in counts) / (n * (n - 1))
        total += (sum(ranks[:n1]) - n1 * (n + 1) / 2) / (n + 1)
        var += n1 * n2 / 12 * ((n + 1) - tie) / (n + 1) ** 2
    z, p = van_elteren(values, in_group, strata)
    assert z == pytest.approx(total / math.sqrt(var)) and z > 0
    assert p == pytest.approx(2 * stats.norm.sf(abs(total / math.sqrt(var))))
    res = stratified_difference(values, in_group, strata, n_resamples=200)
    assert (res["z"], res["p"]) == (z, p)


def test_t_test_p_is_scipy_and_matches_the_mean_ci_interval():
    gen = np.random.default_rng(0)
    for shift in (0.0, 0.3, 1.0):
        v = gen.normal(shift, 1.0, 8)
        _, lo, hi, _ = mean_ci(v)
        p = t_test_p(v)
        assert p == pytest.approx(stats.ttest_1samp(v, 0.0).pvalue)
        assert (p < 0.05) == (lo > 0 or hi < 0)  # the test behind the interval
    assert math.isnan(t_test_p(np.array([0.4])))
    assert t_test_p(np.array([0.2, 0.2])) == 0.0 and t_test_p(np.zeros(3)) == 1.0
    assert t_test_p([0.1, math.nan, 0.3, 0.2]) == pytest.approx(
        stats.ttest_1samp([0.1, 0.3, 0.2], 0.0).pvalue)  # NaN left out
