"""FedAvg: the sample-weighted mean of the sites' models.

Implementation based on McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017 (https://arxiv.org/abs/1602.05629):
``w <- sum_k n_k / n * w_k``.

The aggregate is folded as replies arrive (O(model) memory, never N updates) and
accumulated in float64, so the arrival order changes nothing beyond float64 rounding,
which vanishes when the result is cast back to the model's float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.strategies.base import ServerState, broadcast
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue, FitResult, Metrics, ModelState, Payload, RoundInfo, SiteId

__all__ = ["FedAvg", "WeightedMeanFold"]


class WeightedMeanFold:
    """Running weighted sum ``sum_k n_k * w_k`` and ``sum_k n_k`` in float64.

    Parameters
    ----------
    template : ModelState
        Names, shapes and dtypes of the entries to average.
    """

    def __init__(self, template: ModelState) -> None:
        self._template = template
        self._acc: dict[str, np.ndarray] = {}
        self._tmp: dict[str, np.ndarray] = {}
        self._total = 0.0
        self._count = 0
        self._metric_sums: dict[str, float] = {}

    @property
    def count(self) -> int:
        """Number of results folded so far."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights folded so far."""
        return self._total

    def add(self, site: SiteId, result: FitResult) -> None:
        """Add ``num_examples * state`` to the running sum (vectorised, in place)."""
        weight = float(result.num_examples)
        if weight <= 0:
            raise ValueError(f"site {site}: num_examples must be positive, got {weight}")
        for name, arr in result.state.items():
            acc = self._acc.get(name)
            if acc is None:
                self._acc[name] = acc = np.zeros(arr.shape, dtype=np.float64)
                self._tmp[name] = np.empty(arr.shape, dtype=np.float64)
            tmp = self._tmp[name]
            np.multiply(arr, weight, out=tmp)
            acc += tmp
        for key, value in result.metrics.items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + weight * value
        self._total += weight
        self._count += 1

    def mean(self) -> ModelState:
        """Return the weighted mean, cast back to each entry's template dtype."""
        if self._count == 0:
            raise NotEnoughSitesError("no site result to aggregate")
        inv = 1.0 / self._total
        out: ModelState = {}
        for name, ref in self._template.items():
            acc = self._acc[name]
            acc *= inv
            out[name] = acc.astype(ref.dtype, copy=False) if ref.dtype != acc.dtype else acc
        self._acc.clear()
        self._tmp.clear()
        return out

    def metrics(self) -> Metrics:
        """Example-weighted mean of the sites' training metrics."""
        if self._total == 0:
            return {}
        return {k: v / self._total for k, v in self._metric_sums.items()}


@register_strategy
class FedAvg:
    """Federated averaging weighted by the sites' training-example counts.

    Parameters
    ----------
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Config sent to every site each round (e.g. ``{"local_epochs": 1, "lr": 0.01}``).
    """

    name: ClassVar[str] = "fedavg"

    def __init__(self, *, fit_config: Mapping[str, ConfigValue] | None = None) -> None:
        self.fit_config: dict[str, ConfigValue] = dict(fit_config or {})
        for key, value in self.fit_config.items():
            if not isinstance(value, bool | int | float | str):
                raise ConfigError(f"fit_config[{key!r}] must be a scalar, got {type(value).__name__}")

    def init(self, model: ModelState) -> ServerState:
        """Start from ``model``; FedAvg has no extra state."""
        return ServerState(model=model)

    def configure_fit(
        self,
        state: ServerState,
        rnd: RoundInfo,
        sites: Sequence[SiteId],
        rng: np.random.Generator,
    ) -> Mapping[SiteId, Payload]:
        """Send the global model and the fixed fit config to every sampled site."""
        return broadcast(state, sites, self.fit_config)

    def new_fold(self, state: ServerState, rnd: RoundInfo) -> WeightedMeanFold:
        """Open a weighted-mean fold shaped like the global model."""
        return WeightedMeanFold(state.model)

    def finish_round(
        self,
        state: ServerState,
        fold: WeightedMeanFold,  # type: ignore[override]
    ) -> tuple[ServerState, Metrics]:
        """The new global model is the weighted mean of the folded site models."""
        metrics = fold.metrics()
        metrics["num_examples"] = fold.total_weight
        return ServerState(model=fold.mean(), extras=state.extras), metrics
