"""Raw patient rows to model inputs with a release bundle's preprocessing, checked row by row.

Used where rows are scored or validated: ``fedcare predict`` (CSV and FHIR input), and
``fedcare validate`` both in process and at a deployed site (the validation query), so a
row left out in one place is left out in all of them. A missing value, a value that is
not a number, a value outside the study schema's range or a category the model never saw
names its row, field and reason; the other rows are encoded (one-hot with the first
category dropped, standardised with the training cohort's combined mean/std).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.errors import ConfigError, DataError

__all__ = ["RowProblem", "categorical_dummies", "encode_rows"]


@dataclass(frozen=True)
class RowProblem:
    """Why one input row (a CSV row number, or a FHIR bundle and patient) was not scored."""

    row: int | str
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {"row": self.row, "field": self.field, "reason": self.reason}


def _category(value: Any, categories: Sequence[Any]) -> Any:
    """The category ``value`` names (numeric categories accept '2', '2.0', 2), or raise ValueError."""
    for c in categories:
        if isinstance(c, int | float) and not isinstance(c, bool):
            try:
                if float(value) == float(c):
                    return c
            except (TypeError, ValueError):
                continue
        elif str(value) == str(c):
            return c
    raise ValueError(f"{value!r} is not one of {', '.join(str(c) for c in categories)}")


def encode_rows(
    frame: pd.DataFrame,
    pre: Mapping[str, Any],
    *,
    first_row: int = 1,
    labels: Sequence[str] | None = None,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> tuple[npt.NDArray[np.float32], list[int], list[RowProblem]]:
    """Check and encode raw rows: ``(x, indices of the good rows, problems)``.

    Rows are numbered from ``first_row`` (1 = the first data row of a CSV), or named by
    ``labels`` (one per row: a FHIR bundle and patient). ``ranges`` (the study schema's
    ``min``/``max`` per column) names values outside them.
    """
    features: list[str] = list(pre.get("features", []))
    if not features:
        raise ConfigError("this bundle records no preprocessing: it cannot score raw patient rows")
    categorical: Mapping[str, Sequence[Any]] = pre.get("categorical", {})
    absent = [f for f in features if f not in frame.columns]
    if absent:
        raise DataError(f"input has no column(s) {', '.join(absent)} (the model needs: {', '.join(features)})")
    problems: list[RowProblem] = []
    good: list[int] = []

    def name(i: int) -> int | str:
        return labels[i] if labels is not None else first_row + i

    clean: list[dict[str, Any]] = []
    for i, (_, row) in enumerate(frame.iterrows()):
        values: dict[str, Any] = {}
        bad = False
        for f in features:
            raw = row[f]
            if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
                problems.append(RowProblem(name(i), f, "missing value"))
                bad = True
                continue
            try:
                if f in categorical:
                    values[f] = _category(raw, categorical[f])
                else:
                    number = float(raw)
                    if not math.isfinite(number):
                        raise ValueError(f"{raw!r} is not a finite number")
                    lo, hi = (ranges or {}).get(f, (None, None))
                    if (lo is not None and number < lo) or (hi is not None and number > hi):
                        bounds = ", ".join("" if v is None else f"{v:g}" for v in (lo, hi))
                        raise ValueError(f"{number:g} is outside the study's range [{bounds}]")
                    values[f] = number
            except (TypeError, ValueError) as exc:
                checked = f in categorical or "finite" in str(exc) or "range" in str(exc)
                reason = str(exc) if checked else f"{raw!r} is not a number"
                problems.append(RowProblem(name(i), f, reason))
                bad = True
        if not bad:
            good.append(i)
            clean.append(values)
    width = len(pre.get("encoded", []))
    if not clean:
        return np.zeros((0, width), dtype=np.float32), good, problems
    table = pd.DataFrame(clean, columns=features)
    numeric = [c for c in features if c not in categorical]
    parts = [table[numeric].to_numpy(dtype=np.float64)]
    for col in features:
        if col in categorical:
            cats = list(categorical[col])[1:]
            parts.append(np.stack([table[col].to_numpy() == c for c in cats], axis=1).astype(np.float64))
    x = np.concatenate(parts, axis=1)
    if pre.get("standardize", True):
        x = (x - np.asarray(pre["mean"])) / (np.asarray(pre["std"]) + 1e-9)  # as fedcare.data.tabular.Standardizer
    return x.astype(np.float32), good, problems


def categorical_dummies(pre: Mapping[str, Any]) -> dict[str, list[int]]:
    """Each categorical input's dummy columns (indices into the encoded inputs)."""
    encoded = list(pre.get("encoded", []))
    return {
        col: [encoded.index(f"{col}_{v}") for v in list(cats)[1:] if f"{col}_{v}" in encoded]
        for col, cats in pre.get("categorical", {}).items()
    }
