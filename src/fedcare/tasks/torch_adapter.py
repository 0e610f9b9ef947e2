"""Bring your own PyTorch model: a complete fedcare Task from a module factory and a loss.

A task package wraps its network in :class:`TorchTask`; fedcare supplies the rest of the
contract (seeded initialisation, the local training loop, evaluation, prediction) and
everything the strategies need at the site:

* FedAvg/FedOpt/robust rules (plain fits), FedProx (``proximal_mu``), SCAFFOLD (control
  variates through :class:`~fedcare.tasks.torch_common.LocalCorrections`), SecAgg+ (the
  node masks whatever ``fit`` returns);
* record-level DP-SGD through Opacus when the site's privacy guard asks for it; a module
  Opacus cannot train privately is refused before training, naming the layer and what to
  use instead (BatchNorm -> GroupNorm, LSTM -> ``opacus.layers.DPLSTM``);
* personalisation: ``local=("head.",)`` keeps those entries at the site (FedPer/FedBN),
  and :meth:`TorchTask.fit_toward` gives Ditto its personal step;
* partial sharing: ``trainable=("head.",)`` trains and sends only those entries; the rest
  (a frozen backbone) is rebuilt identically at every site from ``base_seed`` or the
  ``weights`` file, so fewer bytes travel each round.

Example (a whole task module)::

    import torch
    from fedcare.tasks.torch_adapter import TorchTask

    class Net(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, width), torch.nn.ReLU())
            self.head = torch.nn.Linear(width, 1)

        def forward(self, x):
            return self.head(self.body(x)).squeeze(-1)

    def make_task(width: int = 32) -> TorchTask:
        return TorchTask(
            name="xray-mlp",
            model=lambda: Net(width),
            loss=torch.nn.BCEWithLogitsLoss(),
            params={"width": width},
            input_shape=(1, 28, 28),
        )

Fit config keys: ``optimizer`` ("adam" | "sgd", default "adam"), ``lr`` (0.001),
``momentum``, ``weight_decay``, ``batch_size`` (64), ``local_epochs`` (1) or
``local_steps``, ``lr_schedule`` ("constant" | "cosine": decay to 0 within the fit call),
``proximal_mu`` (0), and the keys fedcare itself adds (the instruction's ``task``,
``task_hash``, ``seed``, ``study*`` and ``p2p``; ``compression*``, ``ditto_*`` and every
namespaced ``family.key`` such as ``dp.*``, ``secagg.*``). Any other key is refused,
naming it and the accepted ones.

Randomness comes from the numpy generator passed in, through a ``torch.Generator``
seeded from it: batch order, augmentation (``augment(x, generator)``) and the masks of
the network's ``torch.nn.Dropout*`` layers (swapped for ones drawing from that
generator), so sites trained in parallel threads repeat bit for bit. The model factory
itself draws its initial weights from torch's global generator: it runs seeded, under a
lock, with the global state restored afterwards.
"""

from __future__ import annotations

import copy
import inspect
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedcare.errors import ConfigError, DataError
from fedcare.task import ArrayDataset, FitContext
from fedcare.tasks.logreg import binary_metrics
from fedcare.tasks.torch_common import (
    LocalCorrections,
    batches,
    check_precision,
    dp_requested,
    fit_dpsgd,
    make_optimizer,
    read_float,
    read_int,
    resolved_precision,
    training_arithmetic,
)
from fedcare.types import ConfigValue, EvalResult, FitResult, ModelState

__all__ = ["FIT_CONFIG_KEYS", "TorchTask", "dp_incompatible_layers"]

Metrics = Callable[[npt.NDArray[Any], npt.NDArray[np.float64]], Mapping[str, float]]
OptimizerFactory = Callable[[list[torch.nn.Parameter], Mapping[str, ConfigValue]], torch.optim.Optimizer]

_EVAL_BATCH = 1024
#: Fit config keys TorchTask reads (besides the ``dp.``/``compression``/``ditto_`` families).
FIT_CONFIG_KEYS = frozenset(
    {
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "batch_size",
        "local_epochs",
        "local_steps",
        "lr_schedule",
        "proximal_mu",
    }
)
#: Keys fedcare adds to a fit instruction: its stamp, the study's, the peer-to-peer flag, compression,
#: Ditto; and every namespaced ``family.key`` (``dp.``, ``secagg.``, ``ckks.``, ``p2p.``).
_STAMP_KEYS = frozenset({"task", "task_hash", "seed", "study", "study_hash", "study_spec", "p2p"})
_SET_BY_FEDCARE = ("compression", "ditto_")
#: Held while a model factory runs on torch's seeded global generator (threads would interleave draws).
_GLOBAL_RNG = threading.Lock()
_DP_REPLACEMENTS = {
    "BatchNorm": "torch.nn.GroupNorm (or LayerNorm / InstanceNorm without running statistics)",
    "InstanceNorm": "InstanceNorm with track_running_stats=False, or torch.nn.GroupNorm",
    "LSTM": "opacus.layers.DPLSTM",
    "GRU": "opacus.layers.DPGRU",
    "RNN": "opacus.layers.DPRNN",
    "MultiheadAttention": "opacus.layers.DPMultiheadAttention",
}


def dp_incompatible_layers(module: torch.nn.Module) -> list[str]:
    """Each layer Opacus cannot train with DP-SGD, as ``'name' (Type): use X instead``."""
    from opacus.validators import ModuleValidator

    out = []
    for name, sub in module.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(sub))
        if validator is None or not validator(sub):
            continue
        kind = type(sub).__name__
        fix = next((v for k, v in _DP_REPLACEMENTS.items() if kind.startswith(k)), None)
        reason = str(validator(sub)[0]).split(". ")[0]
        out.append(f"layer {name or '<root>'!r} ({kind}): " + (f"use {fix} instead" if fix else reason))
    return out


def _prefixed(names: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p) for p in prefixes)]


class TorchTask:
    """A fedcare Task around any ``torch.nn.Module``.

    Parameters
    ----------
    name : str
        Registry name (the entry point's name).
    model : Callable[[], torch.nn.Module]
        Builds the network; its output for a batch is what ``loss`` and ``output`` take.
    loss : Callable[[Tensor, Tensor], Tensor]
        A torch loss module (its ``reduction`` is set to ``mean``, or ``sum`` under
        DP-SGD) or a function returning one loss per record.
    params : Mapping[str, ConfigValue] (default: {})
        The architecture's parameters (part of the task hash; say everything that shapes
        the network here).
    metrics : Callable[[y, scores], Mapping[str, float]] or "binary" (default: "binary")
        Site-side metrics from true targets and :meth:`predict` scores; ``"binary"`` gives
        loss, accuracy, AUC (and more) of a probability.
    output : Callable[[Tensor], Tensor] (default: torch.sigmoid)
        Turns network outputs into the scores :meth:`predict` returns.
    input_shape : tuple[int, ...] or None (default: None)
        Shape of one record; flat rows are reshaped to it.
    target_dtype : torch.dtype (default: torch.float32)
        dtype of the targets handed to ``loss`` (``torch.long`` for cross-entropy).
    optimizer : OptimizerFactory or None (default: None)
        ``(parameters, fit config) -> Optimizer``; ``None`` builds sgd/adam from the fit
        config (needed for SCAFFOLD, which requires plain SGD).
    local : Sequence[str] (default: ())
        Name prefixes of entries that never leave the site (FedPer head, FedBN norms).
    trainable : Sequence[str] or None (default: None)
        Name prefixes of the entries that train and travel; the rest is frozen and rebuilt
        at each site. ``None``: everything.
    base_seed : int (default: 0)
        Seed of the frozen entries' initialisation (the same at every site).
    weights : str or Path or None (default: None)
        A safetensors file of initial (pretrained) weights; its digest is in the task hash.
    augment : Callable[[Tensor, Generator], Tensor] or None (default: None)
        Applied to each training batch as ``augment(x, generator)`` (draw random
        transforms from ``generator``, which fit seeds from ``rng``); a one-argument
        ``augment(x)`` runs on torch's global generator, seeded and under a lock. Not used
        for evaluation or under DP-SGD.
    num_threads : int or None (default: None)
        torch intra-op threads during fit and predict (not hashed: speed only).
    precision : {"fp32", "bf16", "auto"} (default: "fp32")
        Arithmetic of the training passes: "bf16" runs the forward pass under bfloat16
        autocast (weights, optimizer, the loss and predictions stay float32); "auto" is bf16
        on a CPU with bf16 units and fp32 elsewhere; hashed, as it changes the model.
        DP-SGD trains in fp32: "bf16" is refused there, "auto" falls back to fp32.
    """

    #: The node passes a :class:`~fedcare.task.FitContext` (SCAFFOLD's site state).
    accepts_context = True
    #: Site data may be a :class:`~fedcare.task.RecordSource` (files read a batch at a time).
    streams = True
    #: Keys ``fit`` reads from its config: a study's ``[fit]`` is checked against them.
    fit_config_keys = FIT_CONFIG_KEYS

    def __init__(
        self,
        *,
        name: str,
        model: Callable[[], torch.nn.Module],
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        params: Mapping[str, ConfigValue] | None = None,
        metrics: Metrics | str = "binary",
        output: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
        input_shape: tuple[int, ...] | None = None,
        target_dtype: torch.dtype = torch.float32,
        optimizer: OptimizerFactory | None = None,
        local: Sequence[str] = (),
        trainable: Sequence[str] | None = None,
        base_seed: int = 0,
        weights: str | Path | None = None,
        augment: Callable[..., torch.Tensor] | None = None,
        num_threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if not name:
            raise ConfigError("TorchTask needs a name")
        if metrics != "binary" and not callable(metrics):
            raise ConfigError(f"TorchTask {name!r}: metrics must be 'binary' or a function, got {metrics!r}")
        self.name = name
        self._factory = model
        self._loss = loss
        self._params = dict(params or {})
        self._metrics = binary_metrics if metrics == "binary" else metrics
        self._output = output
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.target_dtype = target_dtype
        self._optimizer = optimizer
        self.weights = Path(weights) if weights is not None else None
        if self.weights is not None and not self.weights.is_file():
            raise ConfigError(f"TorchTask {name!r}: weights file {self.weights} not found")
        self.base_seed = int(base_seed)
        self.num_threads = num_threads
        self.precision = check_precision(precision, f"TorchTask {name!r}: ")
        self._augment = augment
        base = self._base_state()
        names = list(base)
        self._trainable = names if trainable is None else _prefixed(names, tuple(trainable))
        if not self._trainable:
            raise ConfigError(f"TorchTask {name!r}: trainable {list(trainable or [])} matches no entry of the model")
        self._local = frozenset(_prefixed(self._trainable, tuple(local)))
        if local and not self._local:
            raise ConfigError(f"TorchTask {name!r}: local {list(local)} matches no trainable entry of the model")
        self._local_prefixes, self._trainable_prefixes = tuple(local), trainable

    # -- the contract ---------------------------------------------------------------

    def params(self) -> Mapping[str, ConfigValue]:
        """The user's parameters plus what decides which entries train and travel."""
        out: dict[str, ConfigValue] = dict(self._params)
        if self._trainable_prefixes is not None:
            out["trainable"] = ",".join(self._trainable_prefixes)
            out["base_seed"] = self.base_seed
        if self._local_prefixes:
            out["local"] = ",".join(self._local_prefixes)
        if self.input_shape is not None:
            out["input_shape"] = "x".join(map(str, self.input_shape))
        if self.precision != "fp32":  # absent for fp32: hashes of tasks from before the option hold
            out["precision"] = self.precision
        return out

    def hashed_files(self) -> Mapping[str, Path]:
        """The pretrained weights file, if any (its digest is part of the task hash)."""
        return {self.weights.name: self.weights} if self.weights is not None else {}

    def source_modules(self) -> list[str]:
        """Modules of the user's code (model factory, loss, metrics, ...): their package is in the task hash."""
        out: list[str] = []
        for fn in (self._factory, self._loss, self._metrics, self._output, self._optimizer, self._augment):
            module = getattr(fn, "__module__", None) or type(fn).__module__
            if module and module.split(".")[0] not in ("torch", "builtins", "fedcare") and module not in out:
                out.append(module)
        return out

    def local_keys(self) -> frozenset[str]:
        """Entries that never leave the site."""
        return self._local

    def shared_keys(self) -> list[str]:
        """Entries that travel each round (trainable and not local)."""
        return [n for n in self._trainable if n not in self._local]

    def frozen_keys(self) -> dict[str, tuple[int, ...]]:
        """Entries outside ``trainable`` (name -> shape): never trained, never sent, rebuilt at each site."""
        keep = set(self._trainable)
        return {n: tuple(v.shape) for n, v in self._base_state().items() if n not in keep}

    def init_model(self, rng: np.random.Generator) -> ModelState:
        """The trainable entries, freshly initialised from ``rng`` (or the weights file)."""
        if self.weights is not None:
            base = self._base_state()
            return {n: base[n].copy() for n in self._trainable}
        module = self._build(int(rng.integers(0, 2**63 - 1)))
        state = {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
        return {n: state[n] for n in self._trainable}

    def fit(
        self,
        model: ModelState,
        data: ArrayDataset,
        config: Mapping[str, ConfigValue],
        rng: np.random.Generator,
        *,
        context: FitContext | None = None,
    ) -> FitResult:
        """Local training (FedProx/SCAFFOLD at the site, DP-SGD when the site asks for it)."""
        return self._train(model, model, data, config, rng, mu_key="proximal_mu", context=context)

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
        """Train ``model`` with ``config[mu_key] / 2 * ||w - anchor||^2`` added (Ditto's personal step)."""
        return self._train(model, anchor, data, config, rng, mu_key=mu_key, context=None)

    def predict(self, model: ModelState, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Scores for each record (``output`` of the network in evaluation mode)."""
        self._threads()
        module = self._module(model)
        module.eval()
        inputs = self._inputs(np.asarray(x), "prediction input")
        with torch.no_grad():
            outs = [self._output(module(inputs[i : i + _EVAL_BATCH])) for i in range(0, len(inputs), _EVAL_BATCH)]
        if not outs:
            return np.zeros(0)
        scores = torch.cat(outs).double().numpy()
        return scores.reshape(len(inputs), -1).squeeze(-1) if scores.ndim > 1 else scores

    def evaluate(self, model: ModelState, data: ArrayDataset) -> EvalResult:
        """The task's metrics on ``data`` (``loss`` from them when they have one); files are read in chunks."""
        if not isinstance(data, ArrayDataset):  # a RecordSource: score it a chunk at a time
            chunks = [np.arange(i, min(i + _EVAL_BATCH, len(data))) for i in range(0, len(data), _EVAL_BATCH)]
            scores = np.concatenate([self.predict(model, data.read(c)) for c in chunks]) if chunks else np.zeros(0)
            metrics = {k: float(v) for k, v in self._metrics(np.asarray(data.y), scores).items()}
            if "loss" not in metrics:
                raise ConfigError(f"task {self.name!r}: metrics must include 'loss' to evaluate streamed data")
            return EvalResult(loss=metrics["loss"], num_examples=len(data), metrics=metrics)
        scores = self.predict(model, data.x)
        metrics = {k: float(v) for k, v in self._metrics(np.asarray(data.y), scores).items()}
        loss = metrics.get("loss")
        if loss is None:
            module = self._module(model)
            module.eval()
            with torch.no_grad():
                out = module(self._inputs(np.asarray(data.x), "evaluation data"))
                loss = float(self._mean_loss(out, self._targets(data.y)))
        return EvalResult(loss=loss, num_examples=len(data), metrics=metrics)

    # -- internals --------------------------------------------------------------------

    def _base_state(self) -> dict[str, npt.NDArray[Any]]:
        cached = getattr(self, "_base_cache", None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        module = self._build(self.base_seed)
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"TorchTask {self.name!r}: model() returned {type(module).__name__}, not a torch Module")
        state = {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
        if self.weights is not None:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                loaded = load_file(str(self.weights))
            except (OSError, SafetensorError) as exc:
                raise ConfigError(f"TorchTask {self.name!r}: cannot read weights {self.weights}: {exc}") from None
            for key, value in loaded.items():
                if key not in state or state[key].shape != value.shape:
                    raise ConfigError(f"TorchTask {self.name!r}: weights entry {key!r} does not match the model")
                state[key] = value
        self._base_cache = state
        return state

    def _build(self, seed: int) -> torch.nn.Module:
        """The factory's module, its initial draws from torch's global generator seeded with ``seed``."""
        with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._factory()

    def _module(self, model: ModelState) -> torch.nn.Module:
        module = self._build(0)  # every entry is overwritten below
        full = dict(self._base_state())
        missing = [n for n in self._trainable if n not in model]
        if missing:
            raise DataError(f"task {self.name!r}: the model lacks entries {missing[:5]}")
        for n in self._trainable:
            full[n] = model[n]
        with torch.no_grad():
            for name, tensor in module.state_dict().items():
                tensor.copy_(torch.from_numpy(np.array(full[name], copy=True)))
        trainable = set(self._trainable)
        for name, param in module.named_parameters():
            param.requires_grad_(name in trainable)
        return module

    def _threads(self) -> None:
        if self.num_threads is not None and torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)

    def _inputs(self, x: npt.NDArray[Any], where: str) -> torch.Tensor:
        if self.input_shape is not None:
            if x.ndim == 2 and x.shape[1] == math.prod(self.input_shape):
                x = x.reshape(-1, *self.input_shape)
            if tuple(x.shape[1:]) != self.input_shape:
                raise DataError(f"{where}: records must have shape {self.input_shape}, got {tuple(x.shape[1:])}")
        return torch.from_numpy(_writable(np.ascontiguousarray(x, dtype=np.float32)))

    def _targets(self, y: npt.NDArray[Any]) -> torch.Tensor:
        return torch.from_numpy(_writable(np.ascontiguousarray(y))).to(self.target_dtype)

    def _reduced(self, reduction: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        loss = self._loss
        if isinstance(getattr(loss, "reduction", None), str):
            reduced = copy.copy(loss)
            reduced.reduction = reduction  # type: ignore[attr-defined]
            return reduced

        def apply(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            per_record = loss(out, y)
            return per_record.sum() if reduction == "sum" else per_record.mean()

        return apply

    def _mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._reduced("mean")(out, y)

    def _train(
        self,
        model: ModelState,
        anchor: ModelState,
        data: ArrayDataset,
        config: Mapping[str, ConfigValue],
        rng: np.random.Generator,
        *,
        mu_key: str,
        context: FitContext | None,
    ) -> FitResult:
        if len(data) == 0:
            raise DataError("cannot fit on an empty training set")
        self._threads()
        unknown = sorted(
            k
            for k in config
            if k not in FIT_CONFIG_KEYS | _STAMP_KEYS | {mu_key} and "." not in k and not k.startswith(_SET_BY_FEDCARE)
        )
        if unknown:
            accepted = ", ".join(sorted(FIT_CONFIG_KEYS))
            raise ConfigError(f"task {self.name!r}: unknown fit config key(s) {unknown}; accepted: {accepted}")
        cfg = {"optimizer": "adam", "lr": 0.001, **config}
        batch_size = read_int(cfg, "batch_size", 64)
        epochs = read_int(cfg, "local_epochs", 1)
        steps = read_int(cfg, "local_steps", 0)
        if batch_size < 1 or epochs < 1 or steps < 0:
            raise ConfigError("config batch_size and local_epochs must be >= 1, local_steps >= 0")
        schedule = cfg.get("lr_schedule", "constant")
        if schedule not in ("constant", "cosine"):
            raise ConfigError(f"config 'lr_schedule' must be constant or cosine, got {schedule!r}")
        mu = read_float(cfg, mu_key, 0.0)
        if mu < 0:
            raise ConfigError(f"config {mu_key!r} must be non-negative, got {mu}")
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        module = self._module(model)
        _seed_dropout(module, generator)
        module.train()
        params = [p for _, p in module.named_parameters() if p.requires_grad]
        streaming = not isinstance(data, ArrayDataset)
        x = None if streaming else self._inputs(data.x, "training data")
        y = self._targets(data.y)
        if dp_requested(cfg):
            bad = dp_incompatible_layers(module)
            if bad:
                raise ConfigError(f"task {self.name!r} cannot train with DP-SGD: " + "; ".join(bad))
            if self.precision == "bf16":
                raise ConfigError(
                    f"task {self.name!r}: precision={self.precision!r} cannot train with DP-SGD "
                    "(per-record gradients are clipped in float32); use precision='fp32'"
                )
            records = None
            if x is None:  # Poisson sampling reads the sampled records from the files
                records = _Records(data, y, lambda a: self._inputs(a, "training data"))
            metrics = fit_dpsgd(module, x, y if x is not None else None, self._reduced("sum"), cfg, records=records)
            return FitResult(state=self._state(module), num_examples=len(data), metrics=metrics)
        optimizer = self._optimizer(params, cfg) if self._optimizer else make_optimizer(iter(params), cfg)
        corrections = LocalCorrections(module, {**cfg, "proximal_mu": 0.0}, context)
        named = {n: p for n, p in module.named_parameters() if p.requires_grad}
        anchors = {n: torch.from_numpy(np.array(anchor[n], dtype=np.float32)) for n in named} if mu > 0 else {}
        loss_fn = self._reduced("mean")
        target = steps if steps > 0 else epochs * math.ceil(len(data) / batch_size)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=target) if schedule == "cosine" else None
        )
        augment = _with_generator(self._augment) if self._augment is not None else None
        precision = resolved_precision(self.precision)  # "auto" decided once per fit
        total, seen, done = 0.0, 0, 0
        order = getattr(data, "batch_order", None)
        for idx in _index_batches(len(data), batch_size, rng, target, order):
            index = torch.from_numpy(idx)
            optimizer.zero_grad()
            xb = x[index] if x is not None else self._inputs(data.read(idx), "training data")
            if augment is not None:
                xb = augment(xb, generator)
            with training_arithmetic(precision):
                out = module(xb)
            loss = loss_fn(out.float() if out.is_floating_point() else out, y[index])
            objective = loss
            if mu > 0:
                objective = objective + 0.5 * mu * sum(((p - anchors[n]) ** 2).sum() for n, p in named.items())
            objective.backward()
            corrections.correct_gradients()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            done += 1
        return FitResult(
            state=self._state(module),
            num_examples=len(data),
            metrics={"train_loss": total / max(seen, 1)},
            extras=corrections.finish(steps=done),
        )

    def _state(self, module: torch.nn.Module) -> ModelState:
        state = module.state_dict()
        return {n: state[n].detach().cpu().numpy().copy() for n in self._trainable}


def _index_batches(
    n: int,
    batch_size: int,
    rng: np.random.Generator,
    steps: int,
    order: Callable[[int, np.random.Generator], Iterator[npt.NDArray[np.int64]]] | None = None,
) -> Iterator[npt.NDArray[np.int64]]:
    done = 0
    while done < steps:
        for idx in order(batch_size, rng) if order is not None else batches(n, batch_size, rng):
            yield idx
            done += 1
            if done >= steps:
                return


class _Dropout(torch.nn.Module):
    """``torch.nn.Dropout`` (``channels=False``) or ``Dropout1d/2d/3d`` with masks drawn from ``generator``."""

    def __init__(self, p: float, channels: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.channels, self.generator = p, channels, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.channels else x.shape
        keep = torch.rand(shape, generator=self.generator) >= self.p
        return x * keep / (1.0 - self.p)


def _seed_dropout(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Swap each ``torch.nn.Dropout*`` submodule for one drawing its masks from ``generator``."""
    kinds = {torch.nn.Dropout: False, torch.nn.Dropout1d: True, torch.nn.Dropout2d: True, torch.nn.Dropout3d: True}
    for name, sub in list(module.named_modules()):
        channels = kinds.get(type(sub))
        if channels is None or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, _Dropout(float(sub.p), channels, generator))  # type: ignore[arg-type]


def _with_generator(
    augment: Callable[..., torch.Tensor],
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``augment(x, generator)``; a one-argument ``augment(x)`` runs on torch's global generator seeded from it."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        kinds = [p.kind for p in inspect.signature(augment).parameters.values()]
    except (TypeError, ValueError):
        kinds = []
    takes_generator = sum(k in positional for k in kinds) >= 2 or inspect.Parameter.VAR_POSITIONAL in kinds
    if takes_generator:
        return augment

    def seeded(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return augment(x)

    return seeded


def _writable(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a``, or a copy when it is read-only (torch tensors must not alias read-only memory)."""
    return a if a.flags.writeable else a.copy()


class _Records(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A streamed site's records one at a time, for Opacus's Poisson sampler."""

    def __init__(self, data: Any, y: torch.Tensor, inputs: Callable[[npt.NDArray[Any]], torch.Tensor]) -> None:
        self.data, self.y, self.inputs = data, y, inputs

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs(self.data.read(np.array([i], dtype=np.int64)))[0], self.y[i]
