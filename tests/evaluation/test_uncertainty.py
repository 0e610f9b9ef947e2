"""Confidence intervals: right against references, and 95 % intervals cover 95 % of the time."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedcare.evaluation.uncertainty import (
    auc_interval,
    bootstrap_interval,
    delong_auc,
    meta_analysis,
    meta_of,
    metric_intervals,
    wilson_interval,
)


def _delong_bruteforce(y, s):
    """DeLong et al. (1988) structural components straight from the definition, O(m n)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_delong_matches_the_definition_and_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties
        auc, var = delong_auc(y, s)
        ref_auc, ref_var = _delong_bruteforce(y, s)
        assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert auc == pytest.approx(ref_auc, abs=1e-12) and var == pytest.approx(ref_var, rel=1e-10)


def test_delong_on_hanley_mcneil_1982_ct_ratings():
    """Hanley & McNeil (Radiology 1982) Table 1: 58 normal, 51 abnormal CT images rated 1-5; AUC 0.893."""
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    y = np.r_[np.zeros(58), np.ones(51)]
    s = np.r_[np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)].astype(float)
    auc, var = delong_auc(y, s)
    assert round(auc, 3) == 0.893
    assert math.sqrt(var) == pytest.approx(0.032, abs=0.004)  # the paper's (Hanley-McNeil) SE: 0.032
    iv = auc_interval(y, s)
    assert iv.lo < auc < iv.hi and iv.hi < 1


def test_perfect_separation_at_a_small_site_is_not_shown_as_certain():
    iv = auc_interval([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert iv.value == 1.0 and iv.hi == 1.0 and iv.lo < 0.8


def test_wilson_matches_the_published_formula_and_handles_the_edges():
    # Newcombe (Stat Med 1998) Table I, example 81/263: 0.2553 to 0.3662
    iv = wilson_interval(81, 263)
    assert (round(iv.lo, 4), round(iv.hi, 4)) == (0.2553, 0.3662)
    zero = wilson_interval(0, 10)
    assert zero.lo == 0 and 0.25 < zero.hi < 0.35  # Newcombe: 0 to 0.2775
    assert round(zero.hi, 4) == 0.2775


def _coverage(hits):
    return float(np.mean(hits))


def test_delong_interval_covers_the_true_auc_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = []
    for m, n, true_auc in [(50, 50, 0.8), (30, 80, 0.7), (40, 25, 0.9)]:
        d = math.sqrt(2) * NormalDist().inv_cdf(true_auc)  # binormal, equal variances: AUC = Phi(d / sqrt 2)
        for _ in range(700):
            y = np.r_[np.ones(m), np.zeros(n)]
            s = np.r_[rng.normal(d, 1, m), rng.normal(0, 1, n)]
            iv = auc_interval(y, s)
            hits.append(iv.lo <= true_auc <= iv.hi)
    assert 0.93 <= _coverage(hits) <= 0.97, _coverage(hits)


def test_wilson_interval_covers_the_true_proportion_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(3000):
        p, n = rng.uniform(0.55, 0.95), int(rng.integers(20, 150))
        iv = wilson_interval(int(rng.binomial(n, p)), n)
        hits.append(iv.lo <= p <= iv.hi)
    assert 0.93 <= _coverage(hits) <= 0.97, _coverage(hits)


def _harrell_c(time, risk):
    """Harrell's C without censoring, vectorised (pairs ordered by time, ties in risk count 1/2)."""
    earlier = time[:, None] < time[None, :]
    conc = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    return float((conc * earlier).sum() / earlier.sum())


@pytest.mark.slow
def test_bootstrap_cindex_interval_covers_the_true_cindex_95_percent_of_the_time():
    # Exponential proportional hazards, hazard exp(x), x ~ N(0, 1), no censoring:
    # P(T_i < T_j) = sigmoid(x_i - x_j), so the true C = 2 E[1(D > 0) sigmoid(D)], D ~ N(0, 2).
    rng = np.random.default_rng(2)
    d = rng.normal(0, math.sqrt(2), 2_000_000)
    true_c = float(2 * np.mean((d > 0) / (1 + np.exp(-d))))
    hits = []
    for _ in range(500):
        x = rng.normal(0, 1, 60)
        t = rng.exponential(1 / np.exp(x))
        iv = bootstrap_interval(_harrell_c, [t, x], rng, n_boot=200)
        hits.append(iv.lo <= true_c <= iv.hi)
    assert 0.93 <= _coverage(hits) <= 0.97, (_coverage(hits), true_c)


def test_meta_analysis_pools_identical_sites_without_heterogeneity_and_flags_different_ones():
    same = meta_analysis([0.8, 0.8, 0.8], [0.001, 0.002, 0.001])
    assert same.random == pytest.approx(0.8) and same.i2 == 0 and same.tau2 == 0
    apart = meta_analysis([0.6, 0.9, 0.75, 0.95], [0.0005] * 4)
    assert apart.i2 > 0.9 and apart.lo < apart.random < apart.hi and apart.k == 4
    # DerSimonian-Laird by hand on the logit scale
    y = np.log(np.array([0.6, 0.9, 0.75, 0.95]) / (1 - np.array([0.6, 0.9, 0.75, 0.95])))
    v = 0.0005 / (np.array([0.6, 0.9, 0.75, 0.95]) * (1 - np.array([0.6, 0.9, 0.75, 0.95]))) ** 2
    w = 1 / v
    q = np.sum(w * (y - np.sum(w * y) / np.sum(w)) ** 2)
    tau2 = (q - 3) / (w.sum() - (w**2).sum() / w.sum())
    wr = 1 / (v + tau2)
    assert apart.q == pytest.approx(q) and apart.tau2 == pytest.approx(tau2)
    assert apart.random == pytest.approx(1 / (1 + np.exp(-np.sum(wr * y) / wr.sum())))


def test_metric_intervals_of_a_site_and_meta_of_sites_including_a_perfect_one():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, 80))))
    ivs = metric_intervals(y, p, kind="binary")
    assert set(ivs) == {"auc", "accuracy", "sensitivity", "specificity"}
    assert ivs["accuracy"]["value"] == pytest.approx(np.mean((p >= 0.5) == (y == 1)))
    perfect = wilson_interval(12, 12).as_dict()
    meta = meta_of([ivs["accuracy"], perfect])
    assert meta["k"] == 2  # the 12/12 site counts (continuity correction), not dropped
    surv = metric_intervals(np.c_[rng.exponential(1, 50), np.ones(50)], rng.normal(0, 1, 50), kind="survival", seed=1)
    assert surv["c_index"]["method"] == "bootstrap" and surv["c_index"]["lo"] < surv["c_index"]["hi"]
