"""SCAFFOLD: stochastic controlled averaging with server and site control variates.

Implementation based on Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", ICML 2020 (https://arxiv.org/abs/1910.06378), Algorithm 1 with
option II for the site control variate.

Round ``t``, with global model ``x``, server control variate ``c`` and, at site ``i``,
its own control variate ``c_i`` (kept AT THE SITE between rounds, initially 0):

* the server sends ``x`` and ``c`` (record ``scaffold_c``);
* the site runs ``K`` SGD steps ``y <- y - lr * (g_i(y) - c_i + c)`` from ``y = x``,
  then sets ``c_i+ = c_i - c + (x - y) / (K * lr)`` and returns ``y`` and
  ``Delta c_i = c_i+ - c_i`` (record ``scaffold_delta_c``);
* the server sets ``x <- x + eta_g * mean_i(y_i - x)`` and
  ``c <- c + |S| / N * mean_i(Delta c_i)``.

Means are example-weighted, like FedAvg (with equal weights this is the paper's uniform
mean; weights are fixed per site, so ``c`` stays the weighted mean of the ``c_i``).
``c`` lives in ``ServerState.extras`` and is checkpointed with the model. The site side
is :class:`fedcare.tasks.torch_common.LocalCorrections` (plain SGD only, as in FLamby).
The fold streams (O(model) memory).

A site whose reply is lost after it updated ``c_i`` leaves ``c`` slightly off the mean
of the ``c_i``; the algorithm tolerates this (it is the partial-participation case).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from fedcare.errors import ConfigError
from fedcare.strategies.base import ServerState
from fedcare.strategies.fedavg import FedAvg, WeightedMeanFold
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue, FitResult, Metrics, ModelState, Payload, RoundInfo, SiteId

__all__ = ["CONTROL_RECORD", "DELTA_RECORD", "SITE_STATE_KEY", "Scaffold", "ScaffoldFold"]

#: Instruction record holding the server control variate ``c``.
CONTROL_RECORD = "scaffold_c"
#: Reply record holding the site's ``Delta c_i``.
DELTA_RECORD = "scaffold_delta_c"
#: Key of the site's own control variate ``c_i`` in the node's per-run site state.
SITE_STATE_KEY = "scaffold_c_i"


class ScaffoldFold:
    """Two streamed weighted means: the sites' models and their ``Delta c_i``.

    Parameters
    ----------
    model : ModelState
        The global model (names, shapes and dtypes of the models to average).
    control : ModelState
        The server control variate (names and shapes every ``Delta c_i`` must have).
    """

    def __init__(self, model: ModelState, control: ModelState) -> None:
        self._models = WeightedMeanFold(model)
        self._controls = WeightedMeanFold(control)
        self._control = control

    @property
    def count(self) -> int:
        """Number of results folded so far."""
        return self._models.count

    @property
    def total_weight(self) -> float:
        """Sum of the weights folded so far."""
        return self._models.total_weight

    def add(self, site: SiteId, result: FitResult) -> None:
        """Fold the site's model and ``Delta c_i``; reject a reply without a valid delta."""
        delta = result.extras.get(DELTA_RECORD)
        if delta is None:
            raise ValueError(f"site {site}: SCAFFOLD reply carries no {DELTA_RECORD!r} record")
        if set(delta) != set(self._control):
            raise ValueError(
                f"site {site}: {DELTA_RECORD!r} entries {sorted(delta)} do not match the control "
                f"variate {sorted(self._control)}"
            )
        for name, ref in self._control.items():
            if delta[name].shape != ref.shape:
                raise ValueError(
                    f"site {site}: {DELTA_RECORD!r}[{name!r}] has shape {delta[name].shape}, expected {ref.shape}"
                )
        self._models.add(site, result)
        self._controls.add(site, FitResult(state=dict(delta), num_examples=result.num_examples))

    def finish(self) -> tuple[ModelState, ModelState, Metrics]:
        """Return the mean model, the mean ``Delta c_i`` and the training metrics."""
        metrics = self._models.metrics()
        metrics["num_examples"] = self._models.total_weight
        return self._models.mean(), self._controls.mean(), metrics


@register_strategy
class Scaffold:
    """SCAFFOLD's server: global step ``eta_g`` and the server control variate.

    Parameters
    ----------
    server_lr : float (default: 1.0)
        Global step size ``eta_g`` (1.0 in FLamby and the paper's experiments).
    num_sites : int or None (default: None)
        Total number of sites ``N``, to scale the control update by ``|S| / N`` when
        rounds sample a subset; ``None`` assumes full participation (``|S| = N``).
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Local training config (``optimizer`` must be plain ``"sgd"``).
    """

    name: ClassVar[str] = "scaffold"

    def __init__(
        self,
        *,
        server_lr: float = 1.0,
        num_sites: int | None = None,
        fit_config: Mapping[str, ConfigValue] | None = None,
    ) -> None:
        self._avg = FedAvg(fit_config=fit_config)
        self.fit_config = self._avg.fit_config
        if isinstance(server_lr, bool) or not isinstance(server_lr, int | float) or not server_lr > 0:
            raise ConfigError(f"SCAFFOLD server_lr must be a positive number, got {server_lr!r}")
        if num_sites is not None and (isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1):
            raise ConfigError(f"SCAFFOLD num_sites must be a positive integer or None, got {num_sites!r}")
        if self.fit_config.get("optimizer", "sgd") != "sgd":
            raise ConfigError(f"SCAFFOLD needs fit_config optimizer 'sgd', got {self.fit_config['optimizer']!r}")
        self.server_lr = float(server_lr)
        self.num_sites = num_sites

    def init(self, model: ModelState) -> ServerState:
        """Start from ``model`` with ``c = 0`` for every floating-point entry."""
        control = {k: np.zeros(a.shape, dtype=a.dtype) for k, a in model.items() if np.issubdtype(a.dtype, np.floating)}
        return ServerState(model=model, extras={CONTROL_RECORD: control})

    def configure_fit(
        self,
        state: ServerState,
        rnd: RoundInfo,
        sites: Sequence[SiteId],
        rng: np.random.Generator,
    ) -> Mapping[SiteId, Payload]:
        """Send ``x`` and ``c`` to every sampled site."""
        payload = Payload(
            arrays={"model": state.model, CONTROL_RECORD: state.extras[CONTROL_RECORD]}, config=self.fit_config
        )
        return dict.fromkeys(sites, payload)

    def new_fold(self, state: ServerState, rnd: RoundInfo) -> ScaffoldFold:
        """Open the two streamed means."""
        return ScaffoldFold(state.model, state.extras[CONTROL_RECORD])

    def finish_round(
        self,
        state: ServerState,
        fold: ScaffoldFold,
    ) -> tuple[ServerState, Metrics]:
        """``x += eta_g * (mean y - x)``; ``c += |S|/N * mean Delta c``."""
        participants = fold.count
        mean_model, mean_delta_c, metrics = fold.finish()
        share = 1.0 if self.num_sites is None else min(1.0, participants / self.num_sites)
        model: ModelState = {}
        for name, x in state.model.items():
            if np.issubdtype(x.dtype, np.floating):
                x64 = x.astype(np.float64)
                model[name] = (x64 + self.server_lr * (mean_model[name].astype(np.float64) - x64)).astype(x.dtype)
            else:
                model[name] = mean_model[name]
        control = {
            k: (c.astype(np.float64) + share * mean_delta_c[k].astype(np.float64)).astype(c.dtype)
            for k, c in state.extras[CONTROL_RECORD].items()
        }
        norm_sq = sum(float(np.sum(np.square(c, dtype=np.float64))) for c in control.values())
        metrics["control_norm"] = float(np.sqrt(norm_sq))
        return ServerState(model=model, extras={**state.extras, CONTROL_RECORD: control}), metrics
