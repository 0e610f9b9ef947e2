"""Federated external validation from sufficient statistics: no patient row leaves a site.

A new site scores its own patients with the released model and shares only:

* binned score counts by outcome (``bins`` equal-width bins of the predicted risk),
* calibration bins (rows, sum of predicted risk, events per 10 equal-width bins),
* the sums that give the Brier score exactly (``sum p^2``, ``sum p*y``, ``sum y``),
* per encoded feature: count, sum and sum of squares (for standardised mean
  differences), its histogram over :data:`HIST_EDGES` on the standardised scale (for the
  population stability index of numeric inputs, against the training cohort's histograms
  that the sites sent after training: :mod:`fedcare.runtime.reference`), and for
  categorical columns the count of each category (for their PSI).

Cells under ``min_cell`` are suppressed at the site (set to 0 and flagged) before
anything leaves. The coordinator adds the sites' statistics and computes AUC (with a
DeLong interval computed from the counts), calibration curve, Brier and ECE per site
and pooled, and the drift flags. Because every statistic is a sum, the combined
statistics equal the pooled computation on the same rows (before suppression), with
AUC taken over the binned scores.

Drift thresholds (documented, applied per feature): standardised mean difference
``|SMD| > 0.1`` (Austin, Stat Med 2009), population stability index ``PSI > 0.25``
(the credit-scoring convention: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.evaluation.calibration import _bins
from fedcare.evaluation.uncertainty import LEVEL, logit_interval, meta_of

__all__ = [
    "HIST_EDGES",
    "PSI_THRESHOLD",
    "SMD_THRESHOLD",
    "combine_statistics",
    "feature_histograms",
    "population_stability",
    "score_statistics",
    "summarise_validation",
]

SMD_THRESHOLD = 0.1
PSI_THRESHOLD = 0.25
CAL_BINS = 10


def score_statistics(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    x: npt.ArrayLike | None = None,
    *,
    bins: int = 100,
    categorical: Mapping[str, Sequence[int]] | None = None,
    min_cell: int = 0,
) -> dict[str, Any]:
    """A site's sufficient statistics of the model's scores ``p`` on its rows (``y`` 0/1).

    ``x`` (encoded, standardised inputs) adds the feature moments; ``categorical`` maps a
    categorical column to the indices of its dummy columns in ``x``. Cells with fewer
    than ``min_cell`` rows (but more than 0) are suppressed: set to 0, listed in
    ``suppressed``.
    """
    y_arr = np.asarray(y, dtype=np.float64).ravel() >= 0.5
    p_arr = np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)
    idx = _bins(p_arr, bins)
    cal = _bins(p_arr, CAL_BINS)  # as fedcare.evaluation.calibration (scikit-learn's uniform bins)
    out: dict[str, Any] = {
        "bins": bins,
        "n": int(len(p_arr)),
        "pos_counts": np.bincount(idx[y_arr], minlength=bins).tolist(),
        "neg_counts": np.bincount(idx[~y_arr], minlength=bins).tolist(),
        "cal_n": np.bincount(cal, minlength=CAL_BINS).tolist(),
        "cal_sum_p": np.bincount(cal, weights=p_arr, minlength=CAL_BINS).tolist(),
        "cal_events": np.bincount(cal[y_arr], minlength=CAL_BINS).tolist(),
        "sum_p2": float(np.sum(p_arr**2)),
        "sum_py": float(np.sum(p_arr[y_arr])),
        "sum_y": int(y_arr.sum()),
        "suppressed": [],
    }
    if x is not None:
        x_arr = np.asarray(x, dtype=np.float64)
        out["feat_n"] = int(len(x_arr))
        out["feat_sum"] = x_arr.sum(axis=0).tolist()
        out["feat_sum2"] = (x_arr**2).sum(axis=0).tolist()
        out["feat_hist"], hidden = feature_histograms(x_arr, min_cell=min_cell)
        if hidden:
            out["suppressed"].append(f"feature histograms: {hidden} cell(s)")
        out["categories"] = {
            col: [int(len(x_arr) - sum(int(np.sum(x_arr[:, j] > 0)) for j in cols))]
            + [int(np.sum(x_arr[:, j] > 0)) for j in cols]
            for col, cols in (categorical or {}).items()
        }
    if min_cell > 0:
        _suppress(out, min_cell)
    return out


#: Coarser score grids a site may fall back to (each divides the previous one).
_GRIDS = (100, 50, 25, 5)


def _coarsen(counts: Sequence[float], bins: int) -> list[float]:
    """Add adjacent cells of a ``len(counts)``-cell grid into ``bins`` cells (bins divides it)."""
    arr = np.asarray(counts, dtype=np.float64)
    out: list[float] = arr.reshape(bins, len(arr) // bins).sum(axis=1).tolist()
    return out


def _small(counts: Sequence[float], k: int) -> bool:
    return any(0 < c < k for c in counts)


def _suppress(stats: dict[str, Any], k: int) -> None:
    """Coarsen the score grid until no cell holds 1..k-1 rows, then zero what is still small.

    Coarsening keeps every row (only resolution is lost); a site too small even for the
    coarsest grid has its small cells zeroed. Calibration bins that hold 1..k-1 rows or
    events are zeroed.
    """
    for grid in _GRIDS:
        if grid > stats["bins"] or stats["bins"] % grid:
            continue
        if not (_small(stats["pos_counts"], k) or _small(stats["neg_counts"], k)):
            break
        stats["pos_counts"] = _coarsen(stats["pos_counts"], grid)
        stats["neg_counts"] = _coarsen(stats["neg_counts"], grid)
        stats["bins"] = grid
    for key in ("pos_counts", "neg_counts"):
        for i, c in enumerate(stats[key]):
            if 0 < c < k:
                stats[key][i] = 0
                stats["suppressed"].append(f"{key}[{i}]")
    for i, c in enumerate(stats["cal_n"]):
        if 0 < c < k or 0 < stats["cal_events"][i] < k:
            stats["cal_n"][i], stats["cal_sum_p"][i], stats["cal_events"][i] = 0, 0.0, 0
            stats["suppressed"].append(f"cal[{i}]")
    for col, counts in stats.get("categories", {}).items():
        for i, c in enumerate(counts):
            if 0 < c < k:
                counts[i] = 0
                stats["suppressed"].append(f"{col}[{i}]")


def combine_statistics(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add sites' statistics (every entry is a sum): the pooled statistics.

    Sites that coarsened their score grid are met on the coarsest grid among them.
    """
    first = parts[0]
    bins = min(p["bins"] for p in parts)
    parts = [
        {**p, **{k: _coarsen(p[k], bins) for k in ("pos_counts", "neg_counts")}} if p["bins"] != bins else p
        for p in parts
    ]
    out: dict[str, Any] = {"bins": bins, "suppressed": []}
    for key in ("n", "sum_p2", "sum_py", "sum_y", "feat_n"):
        if all(key in p for p in parts):
            out[key] = sum(p[key] for p in parts)
    for key in ("pos_counts", "neg_counts", "cal_n", "cal_sum_p", "cal_events", "feat_sum", "feat_sum2", "feat_hist"):
        if all(key in p for p in parts):
            out[key] = np.sum([np.asarray(p[key], dtype=np.float64) for p in parts], axis=0).tolist()
    if all("categories" in p for p in parts):
        out["categories"] = {
            col: np.sum([np.asarray(p["categories"][col]) for p in parts], axis=0).astype(int).tolist()
            for col in first["categories"]
            if all(col in p["categories"] for p in parts)
        }
    for p in parts:
        out["suppressed"].extend(p.get("suppressed", []))
    return out


def _auc_from_counts(pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64]) -> tuple[float, float]:
    """AUC over binned scores (ties within a bin count one half) and its DeLong variance."""
    m, n = pos.sum(), neg.sum()
    if m == 0 or n == 0:
        return math.nan, math.nan
    neg_below = np.cumsum(neg) - neg  # negatives in lower bins
    pos_above = pos.sum() - np.cumsum(pos)  # positives in higher bins
    v01 = (neg_below + 0.5 * neg) / n  # per positive in bin b: share of negatives it beats
    v10 = (pos_above + 0.5 * pos) / m  # per negative in bin b: share of positives beating it
    auc = float(np.sum(pos * v01) / m)
    s01 = float(np.sum(pos * (v01 - auc) ** 2) / (m - 1)) if m > 1 else 0.0
    s10 = float(np.sum(neg * (v10 - auc) ** 2) / (n - 1)) if n > 1 else 0.0
    return auc, s01 / m + s10 / n


def _metrics(stats: Mapping[str, Any], level: float) -> dict[str, Any]:
    pos = np.asarray(stats["pos_counts"], dtype=np.float64)
    neg = np.asarray(stats["neg_counts"], dtype=np.float64)
    auc, var = _auc_from_counts(pos, neg)
    lo, hi = logit_interval(auc, var, level) if math.isfinite(auc) else (math.nan, math.nan)
    n = stats["n"]
    cal_n = np.asarray(stats["cal_n"], dtype=np.float64)
    mean_p = np.divide(stats["cal_sum_p"], cal_n, out=np.full(CAL_BINS, np.nan), where=cal_n > 0)
    observed = np.divide(stats["cal_events"], cal_n, out=np.full(CAL_BINS, np.nan), where=cal_n > 0)
    shown = cal_n > 0
    ece = float(np.sum(cal_n[shown] * np.abs(mean_p[shown] - observed[shown])) / max(cal_n.sum(), 1))
    return {
        "n": n,
        "events": stats["sum_y"],
        "auc": {"value": auc, "lo": lo, "hi": hi, "se": math.sqrt(var) if var == var else math.nan, "method": "delong"},
        "brier": (stats["sum_p2"] - 2 * stats["sum_py"] + stats["sum_y"]) / n if n else math.nan,
        "ece": ece,
        "calibration": {
            "mean_predicted": [float(v) for v in mean_p[shown]],
            "observed": [float(v) for v in observed[shown]],
            "count": [int(v) for v in cal_n[shown]],
        },
    }


def _drift(
    stats: Mapping[str, Any], pre: Mapping[str, Any], reference: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Drift per input: SMD, and PSI for categorical and (with ``reference``) numeric inputs.

    SMD per encoded feature (training: mean 0, sd 1 after standardisation); PSI of a
    categorical input against the training frequencies, of a numeric input against the
    training cohort's histograms in ``reference``, when the bundle has them.
    """
    out: dict[str, Any] = {"smd": {}, "psi": {}, "flagged": []}
    n = stats.get("feat_n", 0)
    if not n:
        return out
    names = list(pre.get("encoded", []))
    mean = np.asarray(stats["feat_sum"]) / n
    var = np.maximum(np.asarray(stats["feat_sum2"]) / n - mean**2, 0.0) * n / max(n - 1, 1)
    smd = mean / np.sqrt((var + 1.0) / 2)  # standardised inputs: the training cohort has mean 0, variance 1
    for name, d in zip(names, smd, strict=False):
        out["smd"][name] = float(d)
        if abs(d) > SMD_THRESHOLD:
            out["flagged"].append(f"{name}: SMD {d:+.2f}")
    raw_mean = np.asarray(pre.get("mean", []))
    for col, counts in stats.get("categories", {}).items():
        cols = [i for i, name in enumerate(names) if name.startswith(f"{col}_")]
        train = np.asarray([raw_mean[i] for i in cols]) if len(raw_mean) else np.zeros(len(cols))
        expected = np.r_[1 - train.sum(), train]  # training frequency of each category (first = dropped)
        actual = np.asarray(counts, dtype=np.float64) / max(sum(counts), 1)
        e, a = np.clip(expected, 1e-4, None), np.clip(actual, 1e-4, None)
        psi = float(np.sum((a - e) * np.log(a / e)))
        out["psi"][col] = psi
        if psi > PSI_THRESHOLD:
            out["flagged"].append(f"{col}: PSI {psi:.2f}")
    train_hist = (reference or {}).get("histograms", {})
    hist = stats.get("feat_hist")
    if hist is not None:
        categorical = set(pre.get("categorical", {}))
        for j, name in enumerate(names):
            if name in categorical or name not in train_hist or j >= len(hist) or name in out["psi"]:
                continue
            if any(name.startswith(f"{c}_") for c in categorical):
                continue  # a dummy column: its category's PSI is above
            value = population_stability(train_hist[name], hist[j])
            out["psi"][name] = value
            if value > PSI_THRESHOLD:
                out["flagged"].append(f"{name}: PSI {value:.2f}")
    return out


def summarise_validation(
    sites: Mapping[str, Mapping[str, Any]],
    pre: Mapping[str, Any],
    *,
    level: float = LEVEL,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-site and pooled validation metrics with CIs, a meta-analysis of AUC, and drift flags.

    ``reference`` (a release bundle's ``reference``: the training cohort's numeric-input
    histograms) adds PSI for numeric inputs.
    """
    per_site = {s: {**_metrics(st, level), "drift": _drift(st, pre, reference)} for s, st in sites.items()}
    pooled = combine_statistics(list(sites.values()))
    return {
        "level": level,
        "thresholds": {"smd": SMD_THRESHOLD, "psi": PSI_THRESHOLD},
        "per_site": per_site,
        "pooled": {**_metrics(pooled, level), "drift": _drift(pooled, pre, reference)},
        "meta": {"auc": meta_of([{**m["auc"], "n": m["n"]} for m in per_site.values()])},
        "suppressed": pooled["suppressed"],
    }


#: Bin edges of the numeric-input histograms on the standardised scale (the deciles of
#: N(0, 1)): training and validation rows are binned alike, so PSI compares like with like.
HIST_EDGES = (-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816)


def feature_histograms(x: npt.ArrayLike, *, min_cell: int = 0) -> tuple[list[list[int]], int]:
    """Per column of standardised inputs, the row count in each :data:`HIST_EDGES` bin.

    Cells of 1..``min_cell``-1 rows are set to 0 (small-cell suppression at the site);
    returns ``(counts, cells suppressed)``.
    """
    arr = np.asarray(x, dtype=np.float64)
    arr = arr.reshape(len(arr), -1)
    counts = [
        np.bincount(np.searchsorted(HIST_EDGES, arr[:, j], side="right"), minlength=len(HIST_EDGES) + 1).tolist()
        for j in range(arr.shape[1])
    ]
    suppressed = 0
    if min_cell > 0:
        for col in counts:
            for i, c in enumerate(col):
                if 0 < c < min_cell:
                    col[i] = 0
                    suppressed += 1
    return counts, suppressed


def population_stability(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Population stability index of two count vectors (shares clipped at 1e-4)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    e = np.clip(e / max(e.sum(), 1.0), 1e-4, None)
    a = np.clip(a / max(a.sum(), 1.0), 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))
