"""Byzantine-robust aggregation: coordinate-wise median, trimmed mean, (multi-)Krum.

These rules bound the influence of a faulty or hostile site on the global model:

* **Median** and **trimmed mean**: Yin et al., "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018 (https://arxiv.org/abs/1803.01498).
  Each coordinate is the median of the sites' values, or their mean after dropping the
  ``floor(beta * n)`` largest and smallest values.
* **Krum / multi-Krum**: Blanchard et al., "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017 (https://arxiv.org/abs/1703.02757).
  Each site's score is the sum of squared distances to its ``n - f - 2`` nearest
  neighbours; the ``m`` lowest-scoring updates are averaged (``m = 1``: Krum).

All three are translation invariant, so aggregating the sites' models equals applying
the rule to their deltas and adding them to the global model. They ignore example
counts (a hostile site could lie about them).

**Memory: these folds buffer every update of the round** (O(n * model)): an order
statistic needs all values at once. This is the documented exception to fedcare's
streaming O(model) aggregation (DESIGN principle 5). Updates are sorted by site id
before aggregation, so the result does not depend on arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.strategies.base import ServerState
from fedcare.strategies.fedavg import FedAvg
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue, FitResult, Metrics, ModelState, RoundInfo, SiteId

__all__ = [
    "BufferFold",
    "CoordinateMedian",
    "Krum",
    "TrimmedMean",
    "coordinate_median",
    "krum_select",
    "trimmed_mean",
]


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Median over axis 0 of an ``(n, ...)`` stack."""
    median: npt.NDArray[Any] = np.median(stack, axis=0)
    return median


def trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    """Mean over axis 0 after dropping the ``floor(beta * n)`` smallest and largest values."""
    n = stack.shape[0]
    k = math.floor(beta * n)
    if n - 2 * k < 1:
        raise NotEnoughSitesError(f"trimmed mean with beta={beta} drops all {n} update(s)")
    ordered = np.sort(stack, axis=0)
    trimmed: npt.NDArray[Any] = ordered[k : n - k].mean(axis=0)
    return trimmed


def krum_select(vectors: np.ndarray, f: int, m: int) -> list[int]:
    """Indices of the ``m`` rows with the lowest Krum scores (ties: lower index first).

    Parameters
    ----------
    vectors : np.ndarray
        ``(n, d)`` flattened updates.
    f : int
        Number of Byzantine sites tolerated; needs ``n >= 2 f + 3``.
    m : int
        Number of updates to select, ``1 <= m <= n - f``.
    """
    n = vectors.shape[0]
    if n < 2 * f + 3:
        raise NotEnoughSitesError(f"Krum with f={f} needs at least {2 * f + 3} updates, got {n}")
    if not 1 <= m <= n - f:
        raise NotEnoughSitesError(f"multi-Krum m={m} must be in [1, n - f] = [1, {n - f}] with {n} updates")
    sq = np.sum(vectors * vectors, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * vectors @ vectors.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, : n - f - 2]
    scores = nearest.sum(axis=1)
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


class BufferFold:
    """Keep every site's update of the round (robust rules need them all; O(n * model)).

    Parameters
    ----------
    template : ModelState
        Names, shapes and dtypes every update must have.
    """

    def __init__(self, template: ModelState) -> None:
        self._template = template
        self._updates: dict[SiteId, ModelState] = {}
        self._weights: dict[SiteId, float] = {}
        self._metrics: dict[SiteId, Metrics] = {}

    @property
    def template(self) -> ModelState:
        """The global model the updates are shaped like."""
        return self._template

    @property
    def count(self) -> int:
        """Number of results buffered so far."""
        return len(self._updates)

    def add(self, site: SiteId, result: FitResult) -> None:
        """Buffer the site's model (one update per site and round)."""
        if site in self._updates:
            raise ValueError(f"site {site}: a second update in the same round")
        if result.num_examples <= 0:
            raise ValueError(f"site {site}: num_examples must be positive, got {result.num_examples}")
        self._updates[site] = result.state
        self._weights[site] = float(result.num_examples)
        self._metrics[site] = dict(result.metrics)

    def sites(self) -> list[SiteId]:
        """Buffered sites, sorted (the canonical order)."""
        return sorted(self._updates)

    def stack(self, name: str) -> np.ndarray:
        """``(n, ...)`` float64 stack of entry ``name`` in canonical site order."""
        return np.stack([np.asarray(self._updates[s][name], dtype=np.float64) for s in self.sites()])

    def flat(self) -> np.ndarray:
        """``(n, d)`` float64 matrix: each site's entries concatenated."""
        return np.concatenate([self.stack(k).reshape(self.count, -1) for k in self._template], axis=1)

    def cast(self, values: Mapping[str, np.ndarray]) -> ModelState:
        """Cast aggregated float64 entries back to the template's dtypes."""
        out: ModelState = {}
        for name, ref in self._template.items():
            v = np.asarray(values[name])  # a 0-d entry (e.g. a BatchNorm counter) reduces to a numpy scalar
            if not np.issubdtype(ref.dtype, np.floating):
                v = np.rint(v)
            out[name] = np.asarray(v).astype(ref.dtype)
        return out

    def metrics(self) -> Metrics:
        """Example-weighted mean of the training metrics and the total example count."""
        total = sum(self._weights.values())
        keys = sorted({k for m in self._metrics.values() for k in m})
        out = {k: sum(self._weights[s] * m[k] for s, m in self._metrics.items() if k in m) / total for k in keys}
        out["num_examples"] = total
        return out


class _Robust(FedAvg):
    """Shared plumbing: broadcast, buffer, aggregate with :meth:`aggregate`."""

    name: ClassVar[str] = "robust"
    #: Robust statistics need every update: never pre-folded where the sites run.
    linear_fold: ClassVar[bool] = False

    def __init__(self, *, fit_config: Mapping[str, ConfigValue] | None = None) -> None:
        super().__init__(fit_config=fit_config)

    def new_fold(self, state: ServerState, rnd: RoundInfo) -> BufferFold:  # type: ignore[override]
        """Open a buffering fold (robust statistics need every update)."""
        return BufferFold(state.model)

    def aggregate(self, fold: BufferFold) -> tuple[ModelState, Metrics]:
        """Return the aggregated model and extra metrics."""
        raise NotImplementedError

    def finish_round(
        self,
        state: ServerState,
        fold: BufferFold,  # type: ignore[override]
    ) -> tuple[ServerState, Metrics]:
        """The new global model is the robust aggregate of the buffered models."""
        if fold.count == 0:
            raise NotEnoughSitesError("no site result to aggregate")
        model, extra = self.aggregate(fold)
        metrics = fold.metrics()
        metrics.update(extra)
        return ServerState(model=model, extras=state.extras), metrics


@register_strategy
class CoordinateMedian(_Robust):
    """Coordinate-wise median of the sites' models (Yin et al. 2018); buffers the round.

    Parameters
    ----------
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Local training config sent to every site.
    """

    name: ClassVar[str] = "median"

    def aggregate(self, fold: BufferFold) -> tuple[ModelState, Metrics]:
        """Median of each coordinate over the sites."""
        return fold.cast({k: coordinate_median(fold.stack(k)) for k in fold.template}), {}


@register_strategy
class TrimmedMean(_Robust):
    """Coordinate-wise trimmed mean (Yin et al. 2018); buffers the round.

    Parameters
    ----------
    beta : float (default: 0.2)
        Fraction trimmed at each end, in [0, 0.5); ``floor(beta * n)`` values per side.
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Local training config sent to every site.
    """

    name: ClassVar[str] = "trimmed_mean"

    def __init__(self, *, beta: float = 0.2, fit_config: Mapping[str, ConfigValue] | None = None) -> None:
        super().__init__(fit_config=fit_config)
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta < 0.5:
            raise ConfigError(f"trimmed mean beta must be in [0, 0.5), got {beta!r}")
        self.beta = float(beta)

    def aggregate(self, fold: BufferFold) -> tuple[ModelState, Metrics]:
        """Trimmed mean of each coordinate over the sites."""
        trimmed = math.floor(self.beta * fold.count)
        model = fold.cast({k: trimmed_mean(fold.stack(k), self.beta) for k in fold.template})
        return model, {"trimmed_per_side": float(trimmed)}


@register_strategy
class Krum(_Robust):
    """(Multi-)Krum (Blanchard et al. 2017): average the ``m`` most central updates; buffers the round.

    Parameters
    ----------
    f : int (default: 1)
        Byzantine sites tolerated; each round needs at least ``2 f + 3`` updates.
    m : int (default: 1)
        Updates averaged (``1``: Krum; more: multi-Krum), at most ``n - f``.
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Local training config sent to every site.
    """

    name: ClassVar[str] = "krum"

    def __init__(self, *, f: int = 1, m: int = 1, fit_config: Mapping[str, ConfigValue] | None = None) -> None:
        super().__init__(fit_config=fit_config)
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ConfigError(f"Krum f must be a non-negative integer, got {f!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(f"Krum m must be a positive integer, got {m!r}")
        self.f = f
        self.m = m

    def aggregate(self, fold: BufferFold) -> tuple[ModelState, Metrics]:
        """Mean of the selected updates."""
        chosen = krum_select(fold.flat(), self.f, self.m)
        model = fold.cast({k: fold.stack(k)[chosen].mean(axis=0) for k in fold.template})
        return model, {"krum_selected": float(len(chosen))}
