"""Partitioners: split one pooled data set into simulated sites to rehearse a study.

Each returns a list of index arrays (one per site, sorted, disjoint, covering every row)
and takes an injected ``numpy.random.Generator`` where it is random:

* :func:`natural_partition`: one site per value of a site column (the real split).
* :func:`dirichlet_label_partition`: label skew; each class is spread over the sites with
  proportions drawn from Dirichlet(alpha) (Hsu, Qi & Brown 2019, arXiv:1909.06335;
  the benchmark recipe of Li et al. 2022, "Federated Learning on Non-IID Data Silos",
  ICDE). Small alpha -> each site sees few classes.
* :func:`quantity_skew_partition`: site sizes drawn from Dirichlet(alpha) over a
  shuffled index (Li et al. 2022, "quantity-based skew"), labels stay IID.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcare.errors import ConfigError, DataError

__all__ = ["dirichlet_label_partition", "natural_partition", "quantity_skew_partition"]


def natural_partition(site_column: Sequence[object]) -> dict[str, np.ndarray]:
    """One site per distinct value of ``site_column`` (missing values are a DataError).

    Returns a mapping site value (as text, sorted) -> row indices.
    """
    values = np.asarray(site_column, dtype=object)
    missing = [i for i, v in enumerate(values) if v is None or v != v or str(v) == ""]
    if missing:
        raise DataError(f"site column has {len(missing)} empty value(s) (first at row {missing[0] + 1})")
    keys = np.array([str(v) for v in values], dtype=object)
    return {k: np.flatnonzero(keys == k) for k in sorted(set(keys.tolist()))}


def _check(n_sites: int, alpha: float, n: int) -> None:
    if n_sites < 1:
        raise ConfigError(f"n_sites must be >= 1, got {n_sites}")
    if not (alpha > 0 and np.isfinite(alpha)):
        raise ConfigError(f"alpha must be a positive number, got {alpha}")
    if n < n_sites:
        raise DataError(f"cannot split {n} rows into {n_sites} non-empty sites")


def dirichlet_label_partition(
    labels: Sequence[object] | np.ndarray,
    n_sites: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: class ``c``'s rows go to sites in proportions ~ Dirichlet(alpha).

    Parameters
    ----------
    labels : array-like
        One label per row.
    n_sites : int
        Number of sites.
    alpha : float
        Concentration; large -> close to IID, small (0.1) -> strongly skewed.
    rng : numpy.random.Generator
        Randomness (seed it for a reproducible split).
    min_size : int (default: 1)
        Redraw (as Li et al. do) until every site has at least this many rows.
    max_tries : int (default: 100)
        Give up with a DataError after this many draws.
    """
    y = np.asarray(labels)
    _check(n_sites, alpha, len(y))
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise DataError(
        f"no Dirichlet(alpha={alpha}) split of {len(y)} rows gave every one of {n_sites} sites "
        f">= {min_size} rows in {max_tries} draws; raise alpha or lower min_size"
    )


def quantity_skew_partition(n_rows: int, n_sites: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Quantity-skewed split: site sizes ~ Dirichlet(alpha) * n, each site >= 1 row, IID labels."""
    _check(n_sites, alpha, n_rows)
    p = rng.dirichlet(np.full(n_sites, alpha))
    sizes = np.ones(n_sites, dtype=np.int64) + np.floor(p * (n_rows - n_sites)).astype(np.int64)
    sizes[np.argmax(p)] += n_rows - sizes.sum()  # rounding remainder to the largest site
    idx = rng.permutation(n_rows)
    return [np.sort(part) for part in np.split(idx, np.cumsum(sizes)[:-1])]
