"""Per-column moments (count, sum, sum of squares): the arithmetic of federated standardisation.

Kept apart from :mod:`fedcare.runtime.queries` (which wires the site's privacy guard, and
with it the DP accountants and torch) so that the data connectors can use it without
importing the training stack.
"""

from __future__ import annotations

import numpy as np

__all__ = ["column_moments"]


def column_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column count, sum and sum of squares of ``x``, NaN left out of all three."""
    present = ~np.isnan(x)
    filled = np.where(present, x, 0.0)
    return present.sum(axis=0).astype(np.float64), filled.sum(axis=0), (filled**2).sum(axis=0)
