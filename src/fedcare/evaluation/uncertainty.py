"""Confidence intervals and meta-analysis for per-site clinical metrics.

With a few dozen test rows per site, a point estimate alone misleads: an AUC of 1.00 at
a site with 12 patients says little. Every metric the reports show gets a 95 %
confidence interval from the method the clinical literature uses for it:

* ROC AUC: DeLong et al. (Biometrics 1988) variance, computed with the midrank
  algorithm of Sun & Xu (IEEE SPL 2014); the interval is built on the logit scale so
  that it stays inside (0, 1) (as in Qin & Hotilovac, Stat Methods Med Res 2008).
* Proportions (accuracy, sensitivity, specificity): Wilson score interval
  (Wilson 1927; recommended by Brown, Cai & DasGupta, Stat Sci 2001).
* Harrell's C-index: percentile bootstrap over patients (seeded).

Sites are combined as in a clinical meta-analysis: inverse-variance pooling on the
logit scale, fixed effect and DerSimonian-Laird random effects (Controlled Clinical
Trials 1986), with Cochran's Q and I² (Higgins & Thompson, Stat Med 2002).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "LEVEL",
    "Interval",
    "MetaAnalysis",
    "accuracy_interval",
    "auc_interval",
    "bootstrap_interval",
    "delong_auc",
    "logit_interval",
    "meta_analysis",
    "meta_of",
    "metric_intervals",
    "wilson_interval",
]

#: Default coverage of every interval.
LEVEL = 0.95


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval.

    Attributes
    ----------
    value : float
        The point estimate.
    lo, hi : float
        Bounds of the interval at ``level``.
    se : float
        Standard error of ``value`` (NaN when the method has none, e.g. bootstrap percentile).
    method : str
        ``delong``, ``wilson``, ``bootstrap``, ``logit``.
    n : int
        Rows behind the estimate.
    """

    value: float
    lo: float
    hi: float
    se: float
    method: str
    n: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of a proportion ``successes / n``."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, "wilson", 0)
    z = _z(level)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at the edges, not 1e-17
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, lo, hi, math.sqrt(p * (1 - p) / n), "wilson", n)


def _midrank(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Ranks 1..n with ties given their mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks = np.empty(n, dtype=np.float64)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks
    return out


def delong_auc(y: npt.ArrayLike, score: npt.ArrayLike) -> tuple[float, float]:
    """ROC AUC and its DeLong variance (ties count one half).

    Returns ``(nan, nan)`` when only one class is present.
    """
    y_arr = np.asarray(y, dtype=np.float64).ravel() >= 0.5
    s = np.asarray(score, dtype=np.float64).ravel()
    pos, neg = s[y_arr], s[~y_arr]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return math.nan, math.nan
    tz = _midrank(np.concatenate([pos, neg]))
    tx, ty = _midrank(pos), _midrank(neg)
    auc = float((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    v01 = (tz[:m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[m:] - ty) / m  # ... of the negatives
    s01 = float(np.var(v01, ddof=1)) if m > 1 else 0.0
    s10 = float(np.var(v10, ddof=1)) if n > 1 else 0.0
    return auc, s01 / m + s10 / n


def logit_interval(value: float, variance: float, level: float = LEVEL) -> tuple[float, float]:
    """Interval for a quantity in (0, 1) built on the logit scale (delta method), mapped back."""
    if not (0.0 < value < 1.0) or not variance > 0:
        return math.nan, math.nan
    z = _z(level)
    logit = math.log(value / (1 - value))
    half = z * math.sqrt(variance) / (value * (1 - value))
    return 1 / (1 + math.exp(-(logit - half))), 1 / (1 + math.exp(-(logit + half)))


def auc_interval(y: npt.ArrayLike, score: npt.ArrayLike, level: float = LEVEL) -> Interval:
    """ROC AUC with a DeLong interval on the logit scale.

    An AUC of exactly 0 or 1 (perfect separation, common at small sites) has DeLong
    variance 0; the interval is then computed at the AUC moved half a pair away from the
    bound, ``(A * m * n ± 0.5) / (m * n)``, with that AUC's Hanley-McNeil (Radiology 1982)
    variance, so that a small site is never shown as certain.
    """
    y_arr = np.asarray(y, dtype=np.float64).ravel() >= 0.5
    m, n = int(y_arr.sum()), int((~y_arr).sum())
    auc, var = delong_auc(y_arr, score)
    if math.isnan(auc):
        return Interval(math.nan, math.nan, math.nan, math.nan, "delong", m + n)
    a, v = auc, var
    if not (0.0 < auc < 1.0) or var <= 0:
        pairs = m * n
        a = min(max(auc, 0.5 / pairs), 1 - 0.5 / pairs)
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        v = (a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / pairs
    lo, hi = logit_interval(a, v, level)
    if auc >= 1.0:
        hi = 1.0
    if auc <= 0.0:
        lo = 0.0
    return Interval(auc, lo, hi, math.sqrt(max(var, 0.0)), "delong", m + n)


def bootstrap_interval(
    statistic: Any,
    arrays: Sequence[npt.NDArray[Any]],
    rng: np.random.Generator,
    *,
    n_boot: int = 200,
    level: float = LEVEL,
) -> Interval:
    """Percentile bootstrap of ``statistic(*arrays)``, resampling rows (patients) with replacement.

    Resamples where the statistic is undefined (NaN, e.g. no comparable pair) are dropped.
    """
    n = len(arrays[0])
    value = float(statistic(*arrays))
    reps: list[float] = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        rep = float(statistic(*(a[idx] for a in arrays)))
        if math.isfinite(rep):
            reps.append(rep)
    if len(reps) < max(10, n_boot // 2):
        return Interval(value, math.nan, math.nan, math.nan, "bootstrap", n)
    lo, hi = np.quantile(reps, [(1 - level) / 2, 0.5 + level / 2])
    return Interval(value, float(lo), float(hi), float(np.std(reps, ddof=1)), "bootstrap", n)


@dataclass(frozen=True)
class MetaAnalysis:
    """Sites' estimates combined on the logit scale.

    Attributes
    ----------
    fixed, random : float
        Inverse-variance (fixed effect) and DerSimonian-Laird (random effects) pooled
        estimates, back on the metric's scale.
    lo, hi : float
        Interval of the random-effects estimate at ``level``.
    q : float
        Cochran's Q.
    i2 : float
        I² = max(0, (Q - df) / Q): the share of the variation between sites beyond chance.
    tau2 : float
        Between-site variance (logit scale).
    k : int
        Number of sites with a usable estimate.
    """

    fixed: float
    random: float
    lo: float
    hi: float
    q: float
    i2: float
    tau2: float
    k: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


def _expit(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def meta_analysis(values: Sequence[float], variances: Sequence[float], level: float = LEVEL) -> MetaAnalysis:
    """Pool per-site estimates in (0, 1) with their variances (metric scale), on the logit scale.

    Estimates at 0 or 1, or without a positive variance, are left out (they have no
    finite logit-scale weight); ``k`` says how many sites were pooled.
    """
    ys: list[float] = []
    vs: list[float] = []
    for value, var in zip(values, variances, strict=True):
        if 0.0 < value < 1.0 and var > 0 and math.isfinite(var):
            ys.append(math.log(value / (1 - value)))
            vs.append(var / (value * (1 - value)) ** 2)
    k = len(ys)
    if k == 0:
        nan = math.nan
        return MetaAnalysis(nan, nan, nan, nan, nan, nan, nan, 0)
    y, v = np.asarray(ys), np.asarray(vs)
    w = 1 / v
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2))
    df = k - 1
    c = float(np.sum(w) - np.sum(w * w) / np.sum(w))
    tau2 = max(0.0, (q - df) / c) if c > 0 else 0.0
    wr = 1 / (v + tau2)
    random = float(np.sum(wr * y) / np.sum(wr))
    se = math.sqrt(1 / float(np.sum(wr)))
    z = _z(level)
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return MetaAnalysis(_expit(fixed), _expit(random), _expit(random - z * se), _expit(random + z * se), q, i2, tau2, k)


def _cindex(time: npt.NDArray[Any], event: npt.NDArray[Any], risk: npt.NDArray[Any]) -> float:
    from lifelines.utils import concordance_index

    try:
        return float(concordance_index(time, -risk, event))
    except ZeroDivisionError:  # no comparable pair in this (re)sample
        return math.nan


def metric_intervals(
    y: npt.ArrayLike, pred: npt.ArrayLike, *, kind: str, seed: int = 0, level: float = LEVEL
) -> dict[str, dict[str, Any]]:
    """Intervals of the metrics a report shows, from one set of test rows.

    Binary: ``auc`` (DeLong), ``accuracy``, ``sensitivity``, ``specificity`` (Wilson;
    threshold 0.5, as the metrics themselves). Survival (``y`` = time, event):
    ``c_index`` (bootstrap, 200 resamples seeded by ``seed``).
    """
    y_arr = np.asarray(y, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64).ravel()
    out: dict[str, dict[str, Any]] = {}
    if kind == "survival":
        iv = bootstrap_interval(_cindex, [y_arr[:, 0], y_arr[:, 1], p], np.random.default_rng(seed), level=level)
        out["c_index"] = iv.as_dict()
        return out
    truth, said = y_arr.ravel() >= 0.5, p >= 0.5
    if truth.any() and (~truth).any():
        out["auc"] = auc_interval(truth, p, level).as_dict()
    out["accuracy"] = wilson_interval(int(np.sum(truth == said)), len(p), level).as_dict()
    if truth.any():
        out["sensitivity"] = wilson_interval(int(np.sum(said[truth])), int(truth.sum()), level).as_dict()
    if (~truth).any():
        out["specificity"] = wilson_interval(int(np.sum(~said[~truth])), int((~truth).sum()), level).as_dict()
    return out


def accuracy_interval(accuracy: float, n: int, level: float = LEVEL) -> dict[str, Any]:
    """Wilson interval of an accuracy known only as a mean over ``n`` rows (a stored metric)."""
    return wilson_interval(round(accuracy * n), n, level).as_dict()


def meta_of(intervals: Sequence[dict[str, Any]], level: float = LEVEL) -> dict[str, Any]:
    """Meta-analysis of per-site intervals of one metric (as :func:`metric_intervals` gives them).

    Proportions (Wilson) enter with a continuity correction, ``(k + 0.5) / (n + 1)``, so
    that a site at 0 % or 100 % still counts; AUC and C-index with their own variance.
    """
    values: list[float] = []
    variances: list[float] = []
    for iv in intervals:
        value, n, se = iv.get("value"), iv.get("n") or 0, iv.get("se")
        if value is None or not math.isfinite(value) or n <= 0:
            continue
        if iv.get("method") == "wilson":
            corrected = (value * n + 0.5) / (n + 1)
            values.append(corrected)
            variances.append(corrected * (1 - corrected) / n)
        elif se is not None and math.isfinite(se) and se > 0:
            values.append(value)
            variances.append(se * se)
    return meta_analysis(values, variances, level).as_dict()
