"""Tabular preprocessing shared by built-in and user data sets.

The steps follow FLamby's Fed-Heart-Disease recipe and generalise it: per-site
seeded train/test split (stratified when both classes have more than two rows),
one-hot encoding with a category list fixed across sites, mean imputation and
standardisation with **training statistics only**: each site's own, the federation's
(combined from per-site counts and sums, no row leaves a site) or pooled (the
reference).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.errors import DataError
from fedcare.runtime.moments import column_moments
from fedcare.task import ArrayDataset, SiteData
from fedcare.types import SiteId

if TYPE_CHECKING:  # pandas is a second to import: reading a study file does not need it
    import pandas as pd

__all__ = [
    "Moments",
    "PreparedSites",
    "Standardizer",
    "TabularRecipe",
    "prepare_sites",
    "preprocessing_spec",
    "split_indices",
    "split_sizes",
]


def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """(test rows, train rows) of ``n`` rows: scikit-learn's rule, without its rounding trap.

    scikit-learn takes ``ceil(test * n)`` and ``floor(train * n)`` of the two float
    fractions; with ``test_fraction = 0.3`` and 40 rows that is ``ceil(12.000000000000002)
    = 13`` plus 28 = 41 rows, and the split is refused. The sizes here are those same
    numbers whenever they fit (so FLamby's published splits are unchanged), and the test
    share gives way by the rounding excess when they do not.
    """
    train_fraction = 1.0 - test_fraction
    n_test, n_train = math.ceil((1.0 - train_fraction) * n), math.floor(train_fraction * n)
    if n_test + n_train > n:
        n_test = n - n_train
    return n_test, n_train


def split_indices(y: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into train and test (FLamby's rule).

    Stratified on ``y`` when there are two or more classes and each has more than two
    rows; shuffled with ``random_state=seed``.
    """
    from sklearn.model_selection import train_test_split  # seconds to import: only when a split is made

    n = len(y)
    levels, counts = np.unique(y, return_counts=True)
    stratify = y if len(levels) > 1 and bool((counts > 2).all()) else None
    n_test, n_train = split_sizes(n, test_fraction)
    train_idx, test_idx = train_test_split(
        np.arange(n),
        test_size=n_test,
        train_size=n_train,
        random_state=seed,
        shuffle=True,
        stratify=stratify,
    )
    return np.sort(train_idx), np.sort(test_idx)


@dataclass(frozen=True)
class Standardizer:
    """Column means and standard deviations (ddof=1) of training rows."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """Compute statistics from training rows."""
        if len(x) < 2:
            return cls(mean=x.mean(axis=0) if len(x) else np.zeros(x.shape[1]), std=np.ones(x.shape[1]))
        return cls(mean=x.mean(axis=0), std=x.std(axis=0, ddof=1))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / (std + 1e-9)`` as float32 (FLamby's epsilon)."""
        return ((x - self.mean) / (self.std + 1e-9)).astype(np.float32)


@dataclass(frozen=True)
class TabularRecipe:
    """How raw site tables become model inputs.

    Attributes
    ----------
    features : tuple[str, ...]
        Input columns, in order (categoricals included).
    categorical : Mapping[str, Sequence[object]]
        Categorical columns and their categories; encoded one-hot with the first
        category dropped (``pandas.get_dummies(drop_first=True)`` on pooled data).
    test_fraction : float
        Share of each site's rows held out for testing.
    seed : int
        Split seed (FLamby uses 43).
    standardize : bool
        Standardise numeric inputs with training statistics.
    """

    features: tuple[str, ...]
    categorical: Mapping[str, Sequence[object]]
    test_fraction: float
    seed: int
    standardize: bool = True

    def encoded_names(self) -> tuple[str, ...]:
        """Column names after one-hot encoding (numeric first, then dummies)."""
        numeric = [c for c in self.features if c not in self.categorical]
        dummies = [f"{c}_{v}" for c in self.features if c in self.categorical for v in list(self.categorical[c])[1:]]
        return tuple(numeric + dummies)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """One-hot encode categoricals; numeric values stay (NaN where missing).

        A missing categorical value (NaN/None) gives NaN in all of its dummy columns, so
        imputation fills them with the training frequencies; a value that is not in the
        category list gives zeros (the dropped first category).
        """
        numeric = [c for c in self.features if c not in self.categorical]
        parts = [frame[numeric].to_numpy(dtype=np.float64)]
        for col in self.features:
            if col in self.categorical:
                cats = list(self.categorical[col])[1:]
                values = frame[col].to_numpy()
                block = (
                    np.stack([values == c for c in cats], axis=1).astype(np.float64)
                    if cats
                    else np.zeros((len(frame), 0))
                )
                block[frame[col].isna().to_numpy()] = np.nan  # a missing category is imputed like any missing value
                parts.append(block)
        return np.concatenate(parts, axis=1)


def _impute(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    out = x.copy()
    rows, cols = np.nonzero(np.isnan(out))
    out[rows, cols] = means[cols]
    return out


@dataclass(frozen=True)
class Moments:
    """What a site shares for federated preprocessing: per-column count, sum, sum of squares.

    Missing values (NaN) are left out of every column's count and sums. Adding the
    sites' moments gives exactly the moments of the pooled training rows.
    """

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """Moments of one site's training rows."""
        return cls(*column_moments(x))

    def __add__(self, other: Moments) -> Moments:
        """Combine two sites' moments."""
        return Moments(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    def standardizer(self) -> Standardizer:
        """Mean and sample std (ddof=1) of the rows these moments summarise."""
        n = np.maximum(self.count, 1.0)
        mean = self.total / n
        var = np.maximum(self.total_sq - n * mean**2, 0.0) / np.maximum(n - 1.0, 1.0)
        std = np.where(self.count > 1, np.sqrt(var), 1.0)
        return Standardizer(mean=mean, std=std)


def impute_and_standardize(
    xtr: np.ndarray, xte: np.ndarray, stats: Standardizer, standardize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Impute missing values with the training mean, then standardise (train and test rows)."""
    return _finish(xtr, xte, stats, standardize)


def _finish(xtr: np.ndarray, xte: np.ndarray, stats: Standardizer, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Impute missing values with the training mean, then standardise."""
    xtr, xte = _impute(xtr, stats.mean), _impute(xte, stats.mean)
    if standardize:
        return stats.transform(xtr), stats.transform(xte)
    return xtr.astype(np.float32), xte.astype(np.float32)


@dataclass(frozen=True)
class PreparedSites:
    """The same rows and split under the three preprocessing views (see FederatedDataset)."""

    federated: dict[SiteId, SiteData]
    local: dict[SiteId, SiteData]
    pooled: dict[SiteId, SiteData]
    #: How a new patient's row becomes a model input under the federated view
    #: (:func:`preprocessing_spec`): recorded with a run, shipped in a release bundle.
    preprocessing: Mapping[str, Any] = field(default_factory=dict)


def preprocessing_spec(recipe: TabularRecipe, stats: Standardizer) -> dict[str, Any]:
    """JSON-ready preprocessing: raw features, categories, encoded columns, combined mean/std."""
    return {
        "features": list(recipe.features),
        "categorical": {c: [_plain(v) for v in cats] for c, cats in recipe.categorical.items()},
        "encoded": list(recipe.encoded_names()),
        "standardize": recipe.standardize,
        "mean": [float(v) for v in stats.mean],
        "std": [float(v) for v in stats.std],
        "statistics": "combined from the sites' counts, sums and sums of squares (training rows)",
    }


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def prepare_sites(
    frames: Mapping[SiteId, pd.DataFrame],
    labels: Mapping[SiteId, np.ndarray],
    recipe: TabularRecipe,
) -> PreparedSites:
    """Split, encode, impute (training mean) and standardise each site's table.

    Three views of the same rows: ``local`` uses each site's own training statistics
    (what a site alone can do; FLamby's per-centre normalisation), ``federated`` uses
    statistics combined from the sites' :class:`Moments` (only counts and sums leave a
    site), and ``pooled`` uses statistics computed directly on all training rows in
    one place. ``federated`` and ``pooled`` agree to float64 rounding.
    """
    encoded: dict[SiteId, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for site, frame in frames.items():
        y = np.asarray(labels[site])
        if len(frame) == 0:
            raise DataError(f"site {site!r} has no rows")
        train_idx, test_idx = split_indices(y, test_fraction=recipe.test_fraction, seed=recipe.seed)
        x = recipe.encode(frame)
        encoded[site] = (x[train_idx], y[train_idx], x[test_idx], y[test_idx])

    def view(stats_of: Mapping[SiteId, Standardizer]) -> dict[SiteId, SiteData]:
        out: dict[SiteId, SiteData] = {}
        for site, (xtr, ytr, xte, yte) in encoded.items():
            a, b = _finish(xtr, xte, stats_of[site], recipe.standardize)
            out[site] = SiteData(ArrayDataset(a, ytr), ArrayDataset(b, yte))
        return out

    local_stats = {s: Moments.of(v[0]).standardizer() for s, v in encoded.items()}
    combined = functools.reduce(operator.add, (Moments.of(v[0]) for v in encoded.values()))
    federated_stats = combined.standardizer()
    all_train = np.concatenate([v[0] for v in encoded.values()])
    pooled_stats = Standardizer(mean=np.nanmean(all_train, axis=0), std=np.nanstd(all_train, axis=0, ddof=1))
    return PreparedSites(
        federated=view(dict.fromkeys(encoded, federated_stats)),
        local=view(local_stats),
        pooled=view(dict.fromkeys(encoded, pooled_stats)),
        preprocessing=preprocessing_spec(recipe, federated_stats),
    )
