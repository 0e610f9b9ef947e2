"""Metrics per subgroup (sex, age band...) of one site's test rows.

A model that is accurate on average can be wrong for one hospital's women; reporting
each subgroup separately (with its size, so small groups are read with care) makes that
visible. This follows the subgroup reporting asked for by TRIPOD+AI (Collins et al.,
BMJ 2024; item on model performance in key subgroups).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from fedcare.errors import DataError

__all__ = ["subgroup_metrics"]


def _binary(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    out = {
        "n": float(len(y)),
        "positives": float(y.sum()),
        "accuracy": float(np.mean((p >= 0.5) == (y >= 0.5))),
        "observed_rate": float(y.mean()),
        "mean_predicted": float(p.mean()),
        "brier": float(np.mean((p - y) ** 2)),
    }
    positive, negative = y >= 0.5, y < 0.5
    if positive.any():
        out["sensitivity"] = float(np.mean(p[positive] >= 0.5))
    if negative.any():
        out["specificity"] = float(np.mean(p[negative] < 0.5))
    if positive.any() and negative.any():
        out["auc"] = float(roc_auc_score(y, p))
    return out


def _survival(y: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    out = {"n": float(len(y)), "events": float(y[:, 1].sum())}
    try:
        out["c_index"] = float(concordance_index(y[:, 0], -risk, y[:, 1]))
    except ZeroDivisionError:  # no comparable pair: leave the C-index out
        pass
    return out


def subgroup_metrics(
    y: npt.NDArray[Any],
    pred: npt.NDArray[Any],
    groups: Mapping[str, npt.NDArray[Any]],
    *,
    kind: str,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{attribute: {level: metrics}}`` for each grouping attribute of the rows.

    Parameters
    ----------
    y : array
        Labels (binary) or ``(n, 2)`` (time, event) (survival).
    pred : array
        Probabilities (binary) or risk scores (survival), one per row.
    groups : Mapping[str, array]
        Attribute name -> one level per row (e.g. ``{"sex": ["female", ...]}``).
    kind : {"binary", "survival"}
        Which metrics to compute.
    """
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if len(y) != len(pred):
        raise DataError(f"subgroups: {len(y)} rows but {len(pred)} predictions")
    if kind not in ("binary", "survival"):
        raise DataError(f"subgroups: unknown kind {kind!r}")
    score = _binary if kind == "binary" else _survival
    out: dict[str, dict[str, dict[str, float]]] = {}
    for attribute, values in groups.items():
        values = np.asarray(values)
        if len(values) != len(y):
            raise DataError(f"subgroups: attribute {attribute!r} has {len(values)} values for {len(y)} rows")
        out[attribute] = {str(level): score(y[values == level], pred[values == level]) for level in np.unique(values)}
    return out
