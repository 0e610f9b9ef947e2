"""Logistic regression in torch: FLamby's Fed-Heart-Disease model (Linear(d, 1) + sigmoid).

Fit config keys (all optional): ``lr`` (0.01), ``optimizer`` ("sgd" | "adam"),
``batch_size`` (4), ``local_epochs`` (1) or ``local_steps`` (overrides epochs),
``proximal_mu`` (0: FedProx's proximal term towards the received model). With a
``scaffold_c`` instruction record the task applies SCAFFOLD's correction (see
:class:`fedcare.tasks.torch_common.LocalCorrections`).
With a DP-SGD plan resolved by the site (``dp.*`` keys, see :mod:`fedcare.privacy.guard`)
training runs through Opacus instead (:func:`fedcare.tasks.torch_common.fit_dpsgd`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score

from fedcare.errors import ConfigError
from fedcare.task import ArrayDataset, FitContext
from fedcare.tasks.torch_common import (
    LocalCorrections,
    dp_requested,
    fit_dpsgd,
    linear_init,
    load_state,
    make_optimizer,
    module_state,
    read_int,
    train_steps,
    use_threads,
)
from fedcare.types import ConfigValue, EvalResult, FitResult, Metrics, ModelState

__all__ = ["LogisticRegressionTask", "binary_metrics"]


def binary_metrics(y: npt.NDArray[Any], p: npt.NDArray[np.float64]) -> Metrics:
    """Accuracy at 0.5, ROC AUC (when both classes are present) and log loss."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), 1e-7, 1 - 1e-7)
    out: Metrics = {
        "accuracy": float(np.mean((p >= 0.5) == (y >= 0.5))),
        "loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
    }
    if len(np.unique(y)) == 2:
        out["auc"] = float(roc_auc_score(y, p))
    return out


class LogisticRegressionTask:
    """Binary logistic regression on standardised tabular features.

    Parameters
    ----------
    n_features : int
        Number of input columns.
    """

    name = "logreg"
    #: The node passes a :class:`~fedcare.task.FitContext` (SCAFFOLD's site state).
    accepts_context = True
    #: torch intra-op threads while training (process-wide, see
    #: :func:`fedcare.tasks.torch_common.use_threads`): a small model gains nothing from more.
    num_threads: int | None = 1
    #: Keys ``fit`` reads from its config; run files are checked against them for typos.
    fit_config_keys = frozenset(
        {"lr", "optimizer", "momentum", "batch_size", "local_epochs", "local_steps", "proximal_mu"}
    )

    def __init__(self, *, n_features: int) -> None:
        if n_features < 1:
            raise ConfigError(f"n_features must be at least 1, got {n_features}")
        self.n_features = n_features

    def params(self) -> Mapping[str, ConfigValue]:
        """The architecture: number of inputs."""
        return {"n_features": self.n_features}

    def _module(self) -> torch.nn.Linear:
        return torch.nn.Linear(self.n_features, 1)

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
        """Minibatch training with BCE loss; optional FedProx term and SCAFFOLD correction."""
        if len(data) == 0:
            raise ConfigError("cannot fit on an empty training set")
        use_threads(self.num_threads)
        module = self._module()
        load_state(module, model)
        if dp_requested(config):
            if context is not None and context.inputs:
                raise ConfigError(f"instruction records {sorted(context.inputs)} are not supported with DP-SGD")
            x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
            y = torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.float32)).reshape(-1, 1)
            metrics = fit_dpsgd(module, x, y, torch.nn.BCEWithLogitsLoss(reduction="sum"), config)
            return FitResult(state=module_state(module), num_examples=len(data), metrics=metrics)
        optimizer = make_optimizer(module.parameters(), config)
        batch_size = read_int(config, "batch_size", 4)
        epochs = read_int(config, "local_epochs", 1)
        steps = read_int(config, "local_steps", 0)
        if batch_size < 1 or epochs < 1 or steps < 0:
            raise ConfigError("config batch_size and local_epochs must be >= 1, local_steps >= 0")
        corrections = LocalCorrections(module, config, context)
        x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.float32)).reshape(-1, 1)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        target_steps = steps if steps > 0 else epochs * math.ceil(len(data) / batch_size)
        mean_loss, done = train_steps(
            n=len(data),
            batch_size=batch_size,
            target_steps=target_steps,
            rng=rng,
            optimizer=optimizer,
            corrections=corrections,
            batch_loss=lambda index: loss_fn(module(x[index]), y[index]),
        )
        return FitResult(
            state=module_state(module),
            num_examples=len(data),
            metrics={"train_loss": mean_loss},
            extras=corrections.finish(steps=done),
        )

    def predict(self, model: ModelState, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Probability of the positive class for each row."""
        logits = np.asarray(x, dtype=np.float64) @ model["weight"].astype(np.float64).T
        logits = logits.ravel() + float(model["bias"][0])
        return 1.0 / (1.0 + np.exp(-logits))

    def evaluate(self, model: ModelState, data: ArrayDataset) -> EvalResult:
        """Log loss, accuracy and AUC on ``data``."""
        metrics = binary_metrics(data.y, self.predict(model, data.x))
        return EvalResult(loss=metrics["loss"], num_examples=len(data), metrics=metrics)
