"""Calibration of predicted probabilities: reliability curve, Brier score, ECE.

A model can rank patients well (high AUC) and still be badly calibrated: a predicted
risk of 0.8 should come true about 80 % of the time *at this hospital*. References:
Brier, "Verification of forecasts expressed in terms of probability", Monthly Weather
Review 1950; expected calibration error (ECE) as in Naeini, Cooper, Hauskrecht,
"Obtaining Well Calibrated Probabilities Using Bayesian Binning", AAAI 2015 and Guo et
al., "On Calibration of Modern Neural Networks", ICML 2017. The reliability curve
uses the binning of scikit-learn's ``calibration_curve(strategy="uniform")``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError, DataError

__all__ = ["calibration_report", "expected_calibration_error", "reliability_curve"]


def _check(y: npt.NDArray[Any], p: npt.NDArray[Any], n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise DataError(f"calibration: {len(y)} labels but {len(p)} predictions")
    if len(y) == 0:
        raise DataError("calibration: no rows")
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError("calibration: labels must be 0 or 1")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise DataError("calibration: predictions must be probabilities in [0, 1]")
    if n_bins < 1:
        raise ConfigError(f"calibration: n_bins must be at least 1, got {n_bins}")
    return y, p


def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    # scikit-learn's uniform strategy: inner edges linspace(0, 1, n_bins + 1)[1:-1], searchsorted (left)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], p)


def reliability_curve(
    y: npt.NDArray[Any], p: npt.NDArray[Any], n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed frequency, mean prediction and row count of each non-empty bin.

    The first two arrays equal ``sklearn.calibration.calibration_curve(y, p,
    n_bins=n_bins, strategy="uniform")``.
    """
    y, p = _check(y, p, n_bins)
    ids = _bins(p, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    hit = np.bincount(ids, weights=y, minlength=n_bins)
    mass = np.bincount(ids, weights=p, minlength=n_bins)
    keep = count > 0
    return hit[keep] / count[keep], mass[keep] / count[keep], count[keep]


def expected_calibration_error(y: npt.NDArray[Any], p: npt.NDArray[Any], n_bins: int = 10) -> float:
    """ECE: the row-weighted mean of |observed frequency - mean prediction| over bins."""
    frac, mean, count = reliability_curve(y, p, n_bins)
    return float(np.sum(count * np.abs(frac - mean)) / np.sum(count))


def calibration_report(y: npt.NDArray[Any], p: npt.NDArray[Any], n_bins: int = 10) -> dict[str, Any]:
    """Brier score, ECE, max calibration error and the reliability curve (JSON-ready)."""
    yv, pv = _check(y, p, n_bins)
    frac, mean, count = reliability_curve(yv, pv, n_bins)
    gaps = np.abs(frac - mean)
    return {
        "brier": float(np.mean((pv - yv) ** 2)),
        "ece": float(np.sum(count * gaps) / np.sum(count)),
        "mce": float(gaps.max()),
        "n": int(len(yv)),
        "observed_rate": float(yv.mean()),
        "mean_predicted": float(pv.mean()),
        "curve": {"mean_predicted": mean.tolist(), "observed": frac.tolist(), "count": count.astype(int).tolist()},
    }
