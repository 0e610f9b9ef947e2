"""FedBuff: buffered asynchronous aggregation with staleness-weighted updates.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022 (https://arxiv.org/abs/2106.06639).

Sites train continuously: each starts from the global model current when it was sent
work and replies whenever it finishes. The server folds each reply as it arrives,
weighted by its staleness ``τ`` (server steps since that site's model was sent), and
steps the global model once ``buffer_size`` (K) updates are in the buffer::

    w <- w + server_lr * sum_i s(τ_i) n_i (w_i - w^{(τ_i)}) / sum_i n_i,
    s(τ) = (1 + τ)^(-staleness_exponent)

with ``w^{(τ_i)}`` the model site ``i`` started from. With every site in the buffer,
no staleness and ``server_lr = 1`` the step is exactly FedAvg's weighted mean.

One Coordinator round is one server step. The asynchronous exchange (keeping sites
busy across steps, deadlines, simulated latency) is the runtime's
:class:`fedcare.runtime.asynchronous.BufferedAsyncFit`, chosen by the Coordinator
because this strategy sets ``asynchronous = True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.strategies.base import ServerState, broadcast
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue, FitResult, Metrics, ModelState, Payload, RoundInfo, SiteId

__all__ = ["FedBuff", "StalenessFold"]


class StalenessFold:
    """Running sum ``sum_i s(τ_i) n_i (w_i - ref_i)`` and ``sum_i n_i`` in float64.

    O(model) memory: each update is folded and dropped. Updates must arrive through
    :meth:`add_stale` (they need the model the site started from); :meth:`add` is the
    fresh case (``τ = 0``, started from the current global model).
    """

    def __init__(self, current: ModelState, *, staleness_exponent: float) -> None:
        self._current = current
        self._exponent = staleness_exponent
        self._acc: dict[str, np.ndarray] = {k: np.zeros(v.shape, np.float64) for k, v in current.items()}
        self._total = 0.0
        self._count = 0
        self._staleness: list[int] = []
        self._metric_sums: dict[str, float] = {}

    @property
    def count(self) -> int:
        """Number of updates folded."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the folded updates' example counts."""
        return self._total

    def weight(self, staleness: int) -> float:
        """``s(τ) = (1 + τ)^-a``: the polynomial staleness discount of the paper."""
        return float((1.0 + staleness) ** -self._exponent)

    def add(self, site: SiteId, result: FitResult) -> None:
        """Fold an update trained from the current global model (no staleness)."""
        self.add_stale(site, result, reference=self._current, staleness=0)

    def add_stale(self, site: SiteId, result: FitResult, *, reference: ModelState, staleness: int) -> None:
        """Fold ``result``, trained from ``reference``, ``staleness`` server steps old."""
        n = float(result.num_examples)
        if n <= 0:
            raise ValueError(f"site {site}: num_examples must be positive, got {n}")
        if staleness < 0:
            raise ValueError(f"site {site}: staleness must be non-negative, got {staleness}")
        scale = n * self.weight(staleness)
        for name, acc in self._acc.items():
            acc += scale * np.subtract(result.state[name].astype(np.float64), reference[name])
        for key, value in result.metrics.items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + n * value
        self._total += n
        self._count += 1
        self._staleness.append(staleness)

    def step(self) -> ModelState:
        """The buffered update ``sum_i s(τ_i) n_i Δ_i / sum_i n_i`` (float64)."""
        if self._count == 0:
            raise NotEnoughSitesError("no site update in the buffer")
        return {k: v / self._total for k, v in self._acc.items()}

    def metrics(self) -> Metrics:
        """Example-weighted training metrics and the buffer's staleness."""
        out = {k: v / self._total for k, v in self._metric_sums.items()} if self._total else {}
        if self._staleness:
            out["staleness_mean"] = float(np.mean(self._staleness))
            out["staleness_max"] = float(max(self._staleness))
        return out


@register_strategy
class FedBuff:
    """Buffered asynchronous FedAvg (FedBuff).

    Parameters
    ----------
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Config sent to every site with its work.
    buffer_size : int or None (default: None)
        K, updates per server step; ``None`` means every site (one update each).
    concurrency : int or None (default: None)
        Most sites training at once; ``None`` means every site.
    server_lr : float (default: 1.0)
        Server step size ``η_g``.
    staleness_exponent : float (default: 0.5)
        ``a`` in ``s(τ) = (1 + τ)^-a`` (the paper's ``1/sqrt(1 + τ)``); 0 disables the discount.
    simulated_latency : Mapping[str, float] or None (default: None)
        Simulation only: seconds each site takes per update on a virtual clock, which
        makes the order updates are folded in depend on these latencies and the seed
        alone (deterministic). ``None`` folds updates in real arrival order (deployment).
    """

    name: ClassVar[str] = "fedbuff"
    #: The Coordinator runs this strategy with the buffered asynchronous fit workflow.
    asynchronous: ClassVar[bool] = True

    def __init__(
        self,
        *,
        fit_config: Mapping[str, ConfigValue] | None = None,
        buffer_size: int | None = None,
        concurrency: int | None = None,
        server_lr: float = 1.0,
        staleness_exponent: float = 0.5,
        simulated_latency: Mapping[str, float] | None = None,
    ) -> None:
        self.fit_config: dict[str, ConfigValue] = dict(fit_config or {})
        for key, value in self.fit_config.items():
            if not isinstance(value, bool | int | float | str):
                raise ConfigError(f"fit_config[{key!r}] must be a scalar, got {type(value).__name__}")
        for label, count in (("buffer_size", buffer_size), ("concurrency", concurrency)):
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
                raise ConfigError(f"fedbuff {label} must be a positive integer, got {count!r}")
        if not server_lr > 0:
            raise ConfigError(f"fedbuff server_lr must be positive, got {server_lr}")
        if not staleness_exponent >= 0:
            raise ConfigError(f"fedbuff staleness_exponent must be >= 0, got {staleness_exponent}")
        latency = dict(simulated_latency or {})
        for site, seconds in latency.items():
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
                raise ConfigError(f"fedbuff simulated_latency[{site!r}] must be seconds >= 0, got {seconds!r}")
        self.buffer_size = buffer_size
        self.concurrency = concurrency
        self.server_lr = float(server_lr)
        self.staleness_exponent = float(staleness_exponent)
        self.simulated_latency: dict[str, float] | None = (
            {str(k): float(v) for k, v in latency.items()} if simulated_latency is not None else None
        )

    def init(self, model: ModelState) -> ServerState:
        """Start from ``model``; no extra state."""
        return ServerState(model=model)

    def configure_fit(
        self,
        state: ServerState,
        rnd: RoundInfo,
        sites: Sequence[SiteId],
        rng: np.random.Generator,
    ) -> Mapping[SiteId, Payload]:
        """The current global model and fit config, for whichever sites are idle."""
        return broadcast(state, sites, self.fit_config)

    def new_fold(self, state: ServerState, rnd: RoundInfo) -> StalenessFold:
        """Open the buffer of this server step."""
        return StalenessFold(state.model, staleness_exponent=self.staleness_exponent)

    def finish_round(
        self,
        state: ServerState,
        fold: StalenessFold,
    ) -> tuple[ServerState, Metrics]:
        """Step the global model by ``server_lr`` times the buffered update."""
        step = fold.step()
        model: ModelState = {}
        for name, ref in state.model.items():
            moved = ref.astype(np.float64) + np.multiply(self.server_lr, step[name])
            model[name] = moved.astype(ref.dtype, copy=False)
        metrics = fold.metrics()
        metrics["num_examples"] = fold.total_weight
        return ServerState(model=model, extras=state.extras), metrics
