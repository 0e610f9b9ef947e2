"""A small MLP for tabular data with a shared body and a head, for personalised FL.

Architecture: ``[BatchNorm1d(d)] -> (Linear -> [BatchNorm1d] -> ReLU) x len(hidden) ->
Linear(·, 1)``. State entries are named ``body.<i>.<param>`` and ``head.<param>``.

The task declares which entries stay at the site (:meth:`MLPTask.local_keys`):

* ``local="norm"``: FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features
  via Local Batch Normalization", ICLR 2021): every BatchNorm entry (affine parameters
  and running statistics) is local, the rest is averaged. With ``input_norm`` the first
  BatchNorm learns each site's own feature standardisation.
* ``local="head"``: FedPer (Arivazhagan et al., "Federated Learning with Personalization
  Layers", arXiv:1912.00818, 2019): the final layer is personal, the body is shared.
* ``local="none"``: everything is shared (plain FedAvg and the others).

Objectives: ``"binary"`` (BCE on a logit; metrics as :mod:`fedcare.tasks.logreg`) or
``"cox"`` (Breslow partial likelihood; metrics as :mod:`fedcare.tasks.cox`).

Fit config keys: ``lr``, ``optimizer``, ``batch_size`` (0 = full batch), ``local_epochs``
/ ``local_steps``, ``proximal_mu`` (pull towards the received model, FedProx) and
``weight_decay`` (0, L2). :meth:`MLPTask.fit_toward` pulls towards any anchor (Ditto).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedcare.errors import ConfigError, DataError
from fedcare.task import ArrayDataset
from fedcare.tasks.cox import cox_partial_likelihood_loss, survival_metrics
from fedcare.tasks.logreg import binary_metrics
from fedcare.tasks.torch_common import (
    batches,
    load_state,
    make_optimizer,
    module_state,
    read_float,
    read_int,
    use_threads,
)
from fedcare.types import ConfigValue, EvalResult, FitResult, ModelState

__all__ = ["MLPTask"]

_LOCAL = ("none", "norm", "head")
_OBJECTIVES = ("binary", "cox")


class _Net(torch.nn.Module):
    def __init__(self, n_features: int, hidden: Sequence[int], input_norm: bool, hidden_norm: bool) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        if input_norm:
            layers.append(torch.nn.BatchNorm1d(n_features))
        width = n_features
        for h in hidden:
            layers.append(torch.nn.Linear(width, h))
            if hidden_norm:
                layers.append(torch.nn.BatchNorm1d(h))
            layers.append(torch.nn.ReLU())
            width = h
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).reshape(-1)


class MLPTask:
    """Tabular MLP (binary or Cox) whose state splits into shared and site-local entries.

    Parameters
    ----------
    n_features : int
        Number of input columns.
    hidden : tuple[int, ...] (default: (16,))
        Hidden layer widths; ``()`` gives a linear model.
    input_norm : bool (default: False)
        BatchNorm on the inputs (FedBN's site-specific feature normalisation).
    hidden_norm : bool (default: False)
        BatchNorm after each hidden linear layer.
    local : {"none", "norm", "head"} (default: "none")
        Which entries stay at the site (see the module docstring).
    objective : {"binary", "cox"} (default: "binary")
        Loss and metrics.
    """

    name = "mlp"
    #: torch intra-op threads while training (process-wide, see
    #: :func:`fedcare.tasks.torch_common.use_threads`): a small model gains nothing from more.
    num_threads: int | None = 1

    def __init__(
        self,
        *,
        n_features: int,
        hidden: Sequence[int] = (16,),
        input_norm: bool = False,
        hidden_norm: bool = False,
        local: str = "none",
        objective: str = "binary",
    ) -> None:
        if n_features < 1:
            raise ConfigError(f"n_features must be at least 1, got {n_features}")
        if any(int(h) < 1 for h in hidden):
            raise ConfigError(f"hidden widths must be positive, got {tuple(hidden)}")
        if local not in _LOCAL:
            raise ConfigError(f"local must be one of {_LOCAL}, got {local!r}")
        if objective not in _OBJECTIVES:
            raise ConfigError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
        if local == "norm" and not (input_norm or hidden_norm):
            raise ConfigError("local='norm' (FedBN) needs input_norm or hidden_norm")
        self.n_features = n_features
        self.hidden = tuple(int(h) for h in hidden)
        self.input_norm = input_norm
        self.hidden_norm = hidden_norm
        self.local = local
        self.objective = objective

    def params(self) -> Mapping[str, ConfigValue]:
        """The architecture and what stays local (all part of the content hash)."""
        return {
            "n_features": self.n_features,
            "hidden": ",".join(map(str, self.hidden)),
            "input_norm": self.input_norm,
            "hidden_norm": self.hidden_norm,
            "local": self.local,
            "objective": self.objective,
        }

    def _net(self) -> _Net:
        return _Net(self.n_features, self.hidden, self.input_norm, self.hidden_norm)

    def _norm_prefixes(self) -> list[str]:
        net = self._net()
        return [f"body.{i}." for i, m in enumerate(net.body) if isinstance(m, torch.nn.BatchNorm1d)]

    def local_keys(self) -> frozenset[str]:
        """State entries that never leave the site (empty: everything is shared)."""
        names = self.init_model(np.random.default_rng(0)).keys()
        if self.local == "norm":
            prefixes = tuple(self._norm_prefixes())
            return frozenset(n for n in names if n.startswith(prefixes))
        if self.local == "head":
            return frozenset(n for n in names if n.startswith("head."))
        return frozenset()

    def init_model(self, rng: np.random.Generator) -> ModelState:
        """Seeded init: Uniform(+-1/sqrt(fan_in)) for linear layers (torch's bound), BN at identity."""
        state = module_state(self._net())
        out: ModelState = {}
        for name, value in state.items():
            if name.endswith(("weight", "bias")) and value.ndim >= 1 and not self._is_norm(name):
                fan_in = state[name.rsplit(".", 1)[0] + ".weight"].shape[-1]
                bound = 1.0 / math.sqrt(fan_in)
                out[name] = rng.uniform(-bound, bound, value.shape).astype(value.dtype)
            else:
                out[name] = value
        return out

    def _is_norm(self, name: str) -> bool:
        return name.startswith(tuple(self._norm_prefixes()))

    def _targets(self, data: ArrayDataset) -> torch.Tensor:
        y = np.asarray(data.y, dtype=np.float32)
        if self.objective == "cox" and (y.ndim != 2 or y.shape[1] != 2):
            raise DataError(f"mlp task with objective 'cox' needs y of shape (n, 2), got {y.shape}")
        return torch.from_numpy(np.ascontiguousarray(y))

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.objective == "cox":
            return cox_partial_likelihood_loss(out, y[:, 0], y[:, 1])
        return torch.nn.functional.binary_cross_entropy_with_logits(out, y.reshape(-1))

    def fit(
        self,
        model: ModelState,
        data: ArrayDataset,
        config: Mapping[str, ConfigValue],
        rng: np.random.Generator,
    ) -> FitResult:
        """Minibatch training; ``proximal_mu`` pulls towards the received ``model`` (FedProx)."""
        return self.fit_toward(model, model, data, config, rng, mu_key="proximal_mu")

    def fit_toward(
        self,
        model: ModelState,
        anchor: ModelState,
        data: ArrayDataset,
        config: Mapping[str, ConfigValue],
        rng: np.random.Generator,
        *,
        mu_key: str = "proximal_mu",
    ) -> FitResult:
        """Train ``model`` with ``config[mu_key] / 2 * ||theta - anchor||^2`` added (Ditto's step).

        Only trainable parameters are pulled; BatchNorm running statistics are not.
        """
        if len(data) == 0:
            raise ConfigError("cannot fit on an empty training set")
        use_threads(self.num_threads)
        net = self._net()
        load_state(net, model)
        net.train()
        optimizer = make_optimizer(net.parameters(), config)
        batch_size = read_int(config, "batch_size", 4) or len(data)
        epochs = read_int(config, "local_epochs", 1)
        steps = read_int(config, "local_steps", 0)
        mu = read_float(config, mu_key, 0.0)
        names = [n for n, _ in net.named_parameters()]
        anchors = [torch.from_numpy(np.array(anchor[n], dtype=np.float32)) for n in names] if mu > 0 else []
        x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
        y = self._targets(data)
        has_norm = self.input_norm or self.hidden_norm
        total, seen, done = 0.0, 0, 0
        target_steps = steps if steps > 0 else epochs * math.ceil(len(data) / batch_size)
        while done < target_steps:
            for idx in batches(len(data), batch_size, rng):
                done += 1
                if has_norm and len(idx) < 2:  # BatchNorm cannot train on one row
                    continue
                index = torch.from_numpy(idx)
                optimizer.zero_grad()
                loss = self._loss(net(x[index]), y[index])
                objective = loss
                if mu > 0:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(net.parameters(), anchors, strict=True))
                    objective = objective + 0.5 * mu * prox
                if objective.requires_grad:
                    objective.backward()
                    optimizer.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                if done >= target_steps:
                    break
        return FitResult(state=module_state(net), num_examples=len(data), metrics={"train_loss": total / max(seen, 1)})

    def predict(self, model: ModelState, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Probability (binary) or log relative risk (cox) per row, BatchNorm in eval mode."""
        net = self._net()
        load_state(net, model)
        net.eval()
        with torch.no_grad():
            out = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double().numpy()
        return 1.0 / (1.0 + np.exp(-out)) if self.objective == "binary" else out

    def evaluate(self, model: ModelState, data: ArrayDataset) -> EvalResult:
        """Binary metrics (accuracy, AUC, log loss) or survival metrics (C-index, Cox loss)."""
        pred = self.predict(model, data.x)
        metrics = binary_metrics(data.y, pred) if self.objective == "binary" else survival_metrics(data.y, pred)
        return EvalResult(loss=metrics["loss"], num_examples=len(data), metrics=metrics)
