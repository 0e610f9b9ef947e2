"""Cox proportional hazards with a linear risk score: FLamby's Fed-TCGA-BRCA model.

Model: ``Linear(d, 1)`` gives the log relative risk ``eta = x @ w + b`` (Cox, "Regression
models and life-tables", JRSS B 1972). Loss: the negative log partial likelihood with
Breslow's handling of ties (Breslow, "Covariance analysis of censored survival data",
Biometrics 1974), averaged over the events of the batch::

    L = -(1 / #events) * sum_{i: E_i = 1} [eta_i - log sum_{j: T_j >= T_i} exp(eta_j)]

Metric: Harrell's concordance index from lifelines,
``concordance_index(T, -risk, E)`` exactly as FLamby's ``metric.py`` (a higher risk
means a shorter survival, hence the minus sign).

Targets ``y`` are ``(n, 2)``: column 0 the time, column 1 the event indicator (1 = death
observed, 0 = censored). Fit config keys as :mod:`fedcare.tasks.logreg` (``lr``,
``optimizer``, ``batch_size`` (default 8; 0 = full batch), ``local_epochs`` /
``local_steps``, ``proximal_mu``); with a ``scaffold_c`` instruction record the task
applies SCAFFOLD's correction (:class:`fedcare.tasks.torch_common.LocalCorrections`).
A batch without an event contributes no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from lifelines.utils import concordance_index

from fedcare.errors import ConfigError, DataError
from fedcare.task import ArrayDataset, FitContext
from fedcare.tasks.torch_common import (
    LocalCorrections,
    linear_init,
    load_state,
    make_optimizer,
    module_state,
    read_int,
    train_steps,
    use_threads,
)
from fedcare.types import ConfigValue, EvalResult, FitResult, Metrics, ModelState

__all__ = ["CoxTask", "cox_partial_likelihood_loss", "survival_metrics"]


def cox_partial_likelihood_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Breslow log partial likelihood per event (0 when there is no event).

    Parameters
    ----------
    risk : torch.Tensor
        Log relative risk per row, shape ``(n,)``.
    time, event : torch.Tensor
        Survival time and event indicator (1 observed, 0 censored), shape ``(n,)``.
    """
    risk, time, event = risk.reshape(-1), time.reshape(-1), event.reshape(-1)
    n_events = event.sum()
    if float(n_events) == 0:
        return risk.sum() * 0.0
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    log_cum = torch.logcumsumexp(r, dim=0)
    # Breslow: the risk set of row i is every row with T_j >= T_i, tied rows included,
    # i.e. everything up to the last position holding the same time in descending order.
    last_tied = torch.searchsorted(-t, -t, right=True) - 1
    log_risk_set = log_cum[last_tied]
    return -((r - log_risk_set) * e).sum() / n_events


def survival_metrics(y: npt.NDArray[Any], risk: npt.NDArray[np.float64]) -> Metrics:
    """C-index (lifelines, FLamby's call) and the Breslow loss of ``risk`` on ``y``."""
    y = np.asarray(y, dtype=np.float64)
    risk = np.asarray(risk, dtype=np.float64).ravel()
    time, event = y[:, 0], y[:, 1]
    out: Metrics = {
        "loss": float(
            cox_partial_likelihood_loss(torch.from_numpy(risk), torch.from_numpy(time), torch.from_numpy(event))
        )
    }
    try:
        out["c_index"] = float(concordance_index(time, -risk, event))
    except ZeroDivisionError:  # no admissible pair (e.g. no event in this test set)
        out["c_index"] = float("nan")
    return out


class CoxTask:
    """Linear Cox proportional-hazards model on tabular features.

    Parameters
    ----------
    n_features : int
        Number of input columns (39 for Fed-TCGA-BRCA).
    """

    name = "cox"
    #: The node passes a :class:`~fedcare.task.FitContext` (SCAFFOLD's site state).
    accepts_context = True
    #: torch intra-op threads while training (process-wide, see
    #: :func:`fedcare.tasks.torch_common.use_threads`): a small model gains nothing from more.
    num_threads: int | None = 1

    def __init__(self, *, n_features: int) -> None:
        if n_features < 1:
            raise ConfigError(f"n_features must be at least 1, got {n_features}")
        self.n_features = n_features

    def params(self) -> Mapping[str, ConfigValue]:
        """The architecture: number of inputs."""
        return {"n_features": self.n_features}

    def init_model(self, rng: np.random.Generator) -> ModelState:
        """Uniform(-1/sqrt(d), 1/sqrt(d)) weights and bias, as torch's default, seeded."""
        return linear_init(self.n_features, rng)

    def fit(
        self,
        model: ModelState,
        data: ArrayDataset,
        config: Mapping[str, ConfigValue],
        rng: np.random.Generator,
        *,
        context: FitContext | None = None,
    ) -> FitResult:
        """Minibatch training on the Cox loss; optional FedProx term and SCAFFOLD correction."""
        if len(data) == 0:
            raise ConfigError("cannot fit on an empty training set")
        use_threads(self.num_threads)
        if data.y.ndim != 2 or data.y.shape[1] != 2:
            raise DataError(f"cox task needs y of shape (n, 2) = (time, event), got {data.y.shape}")
        module = torch.nn.Linear(self.n_features, 1)
        load_state(module, model)
        optimizer = make_optimizer(module.parameters(), config)
        batch_size = read_int(config, "batch_size", 8) or len(data)
        epochs = read_int(config, "local_epochs", 1)
        steps = read_int(config, "local_steps", 0)
        corrections = LocalCorrections(module, config, context)
        x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
        time = torch.from_numpy(np.ascontiguousarray(data.y[:, 0], dtype=np.float32))
        event = torch.from_numpy(np.ascontiguousarray(data.y[:, 1], dtype=np.float32))
        target_steps = steps if steps > 0 else epochs * math.ceil(len(data) / batch_size)
        mean_loss, done = train_steps(
            n=len(data),
            batch_size=batch_size,
            target_steps=target_steps,
            rng=rng,
            optimizer=optimizer,
            corrections=corrections,
            batch_loss=lambda index: cox_partial_likelihood_loss(module(x[index]), time[index], event[index]),
        )
        return FitResult(
            state=module_state(module),
            num_examples=len(data),
            metrics={"train_loss": mean_loss},
            extras=corrections.finish(steps=done),
        )

    def predict(self, model: ModelState, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Log relative risk for each row (higher = earlier expected event)."""
        risk = np.asarray(x, dtype=np.float64) @ model["weight"].astype(np.float64).T
        return risk.ravel() + float(model["bias"][0])

    def evaluate(self, model: ModelState, data: ArrayDataset) -> EvalResult:
        """Breslow loss and C-index on ``data``."""
        metrics = survival_metrics(data.y, self.predict(model, data.x))
        return EvalResult(loss=metrics["loss"], num_examples=len(data), metrics=metrics)
