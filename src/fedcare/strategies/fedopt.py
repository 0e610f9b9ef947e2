"""FedOpt: adaptive server optimisers FedAdam, FedYogi and FedAdagrad.

Implementation based on Reddi et al., "Adaptive Federated Optimization", ICLR 2021
(https://arxiv.org/abs/2003.00295), Algorithm 2. The sites run plain local SGD; the
server treats the mean of their model deltas as a pseudo-gradient
``Delta_t = mean_k(w_k) - w_t`` (example-weighted, as FedAvg, FLamby and Flower do) and
applies an adaptive step::

    m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
    v_t = v_{t-1} + Delta_t^2                                          (FedAdagrad)
    v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)  (FedYogi)
    v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2                    (FedAdam)
    w_{t+1} = w_t + eta * m_t / (sqrt(v_t) + tau)

with ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (the paper's ``v_{-1} >= tau^2``), and no bias
correction (as in the paper and FLamby). The moments live in ``ServerState.extras``
(``fedopt_m`` and ``fedopt_v``), so a checkpoint holds them and a resumed run continues
exactly. Entries that are not floating point (e.g. integer counters) take FedAvg's mean.
The fold streams (O(model) memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError
from fedcare.strategies.base import ServerState
from fedcare.strategies.fedavg import FedAvg, WeightedMeanFold
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue, Metrics, ModelState

__all__ = ["FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]

#: Extras record names of the first and second moments.
M_RECORD = "fedopt_m"
V_RECORD = "fedopt_v"


def _number(name: str, value: object, *, low: float, high: float | None = None, closed_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok_low = v >= low if closed_low else v > low
    ok_high = True if high is None else v < high
    if not (ok_low and ok_high and np.isfinite(v)):
        bound = f"{'[' if closed_low else '('}{low:g}, {'inf' if high is None else f'{high:g}'})"
        raise ConfigError(f"{name} must be in {bound}, got {v!r}")
    return v


def _is_float(arr: np.ndarray) -> bool:
    return bool(np.issubdtype(arr.dtype, np.floating))


class FedOpt(FedAvg):
    """Base of the adaptive server optimisers; subclasses define :meth:`second_moment`.

    Parameters
    ----------
    server_lr : float (default: 0.01)
        Server learning rate ``eta``.
    beta1 : float (default: 0.9)
        First-moment decay, in [0, 1).
    beta2 : float (default: 0.999)
        Second-moment decay, in [0, 1) (unused by FedAdagrad).
    tau : float (default: 1e-8)
        Adaptivity / numerical floor added to ``sqrt(v)``, positive.
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Local training config sent to every site (plain SGD in the paper).
    """

    name: ClassVar[str] = "fedopt"

    def __init__(
        self,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        tau: float = 1e-8,
        fit_config: Mapping[str, ConfigValue] | None = None,
    ) -> None:
        super().__init__(fit_config=fit_config)
        self.server_lr = _number("server_lr", server_lr, low=0.0)
        self.beta1 = _number("beta1", beta1, low=0.0, high=1.0, closed_low=True)
        self.beta2 = _number("beta2", beta2, low=0.0, high=1.0, closed_low=True)
        self.tau = _number("tau", tau, low=0.0)

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Return ``v_t`` from ``v_{t-1}`` and ``Delta_t^2`` (float64 arrays)."""
        raise NotImplementedError

    def init(self, model: ModelState) -> ServerState:
        """Start from ``model`` with ``m = 0`` and ``v = tau^2`` for each float entry."""
        m: ModelState = {k: np.zeros(a.shape, np.float64) for k, a in model.items() if _is_float(a)}
        v: ModelState = {k: np.full(a.shape, self.tau**2, np.float64) for k, a in model.items() if _is_float(a)}
        return ServerState(model=model, extras={M_RECORD: m, V_RECORD: v})

    def finish_round(
        self,
        state: ServerState,
        fold: WeightedMeanFold,
    ) -> tuple[ServerState, Metrics]:
        """Apply the adaptive step to the pseudo-gradient ``mean - w_t``."""
        metrics = fold.metrics()
        metrics["num_examples"] = fold.total_weight
        mean = fold.mean()
        m_old = state.extras.get(M_RECORD, {})
        v_old = state.extras.get(V_RECORD, {})
        model: ModelState = {}
        m_new: ModelState = {}
        v_new: ModelState = {}
        step_sq = 0.0
        for name, current in state.model.items():
            if not _is_float(current):
                model[name] = mean[name]
                continue
            x = current.astype(np.float64)
            delta = mean[name].astype(np.float64) - x
            m_prev = m_old.get(name)
            v_prev = v_old.get(name)
            m = np.zeros_like(x) if m_prev is None else np.asarray(m_prev, np.float64)
            v = np.full_like(x, self.tau**2) if v_prev is None else np.asarray(v_prev, np.float64)
            m = self.beta1 * m + (1.0 - self.beta1) * delta
            v = self.second_moment(v, delta * delta)
            step = self.server_lr * m / (np.sqrt(v) + self.tau)
            step_sq += float(np.sum(step * step))
            model[name] = (x + step).astype(current.dtype)
            m_new[name], v_new[name] = m, v
        metrics["server_step_norm"] = float(np.sqrt(step_sq))
        extras = {**state.extras, M_RECORD: m_new, V_RECORD: v_new}
        return ServerState(model=model, extras=extras), metrics


@register_strategy
class FedAdam(FedOpt):
    """FedOpt with Adam's second moment ``v = beta2 v + (1 - beta2) Delta^2`` (Reddi et al. 2021)."""

    name: ClassVar[str] = "fedadam"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Exponential moving average of ``Delta^2``."""
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


@register_strategy
class FedYogi(FedOpt):
    """FedOpt with Yogi's additive second moment (Reddi et al. 2021; Zaheer et al. 2018)."""

    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """``v - (1 - beta2) Delta^2 sign(v - Delta^2)``: grows or shrinks towards ``Delta^2``."""
        out: npt.NDArray[Any] = v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)
        return out


@register_strategy
class FedAdagrad(FedOpt):
    """FedOpt with Adagrad's accumulated second moment ``v = v + Delta^2`` (Reddi et al. 2021)."""

    name: ClassVar[str] = "fedadagrad"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Sum of squared pseudo-gradients."""
        out: npt.NDArray[Any] = v + delta_sq
        return out
