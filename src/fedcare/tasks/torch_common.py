"""Helpers shared by the built-in torch tasks: state <-> module, seeded batches, optimisers."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from fedcare.errors import ConfigError
from fedcare.strategies.scaffold import CONTROL_RECORD, DELTA_RECORD, SITE_STATE_KEY
from fedcare.task import FitContext
from fedcare.types import ConfigValue, ModelState

__all__ = [
    "PRECISIONS",
    "LocalCorrections",
    "batches",
    "check_precision",
    "dp_requested",
    "fit_dpsgd",
    "linear_init",
    "load_state",
    "make_optimizer",
    "module_state",
    "native_bf16",
    "read_float",
    "read_int",
    "resolved_precision",
    "train_steps",
    "training_arithmetic",
    "use_threads",
]

#: Arithmetic of a torch task's training passes: float32, bfloat16 autocast, or "auto" (bf16 where
#: the CPU has bf16 units).
PRECISIONS = ("fp32", "bf16", "auto")
_log = logging.getLogger(__name__)


def native_bf16(capabilities: Mapping[str, Any] | None = None) -> bool:
    """True when the CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16, Arm BF16).

    ``capabilities`` defaults to ``torch.cpu.get_capabilities()`` (this machine). Without
    those units autocast converts in software: a chest X-ray training step took 1.4x the
    CPU of float32 with oneDNN held to AVX-512 without BF16, and 5x held to AVX2.
    """
    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return any(bool(caps.get(unit, False)) for unit in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def check_precision(precision: str, where: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` (a one-line error naming ``where`` if not).

    Warns when "bf16" is asked for on a CPU without bf16 units (slower than float32 there;
    "auto" chooses float32 on such a CPU instead).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not native_bf16():
        _log.warning("%sprecision='bf16': this CPU has no bf16 units, training will be slower than fp32", where)
    return precision


def resolved_precision(precision: str) -> str:
    """The arithmetic that runs here: "auto" is "bf16" on a CPU with bf16 units, else "fp32"."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def training_arithmetic(precision: str) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast when ``precision`` resolves to "bf16" here (weights stay float32), else nothing."""
    if resolved_precision(precision) == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_threads(n: int | None) -> None:
    """Set torch's process-wide intra-op pool to ``n`` threads (``None`` leaves it as it is).

    Simulated sites and the Local/Pooled baselines train in parallel threads, one per core;
    a second level of threads inside each op then only adds synchronisation (for the
    small tabular models, whose ops are far below torch's parallel grain, a training step
    was 5x slower with 2 intra-op threads than with 1 on a busy 2-core machine).
    """
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def load_state(module: torch.nn.Module, state: ModelState) -> None:
    """Copy a numpy state into ``module`` (the caller's arrays are never aliased)."""
    with torch.no_grad():
        for name, param in module.state_dict().items():
            param.copy_(torch.from_numpy(np.array(state[name], copy=True)))


def module_state(module: torch.nn.Module) -> ModelState:
    """Return the module's parameters and buffers as float32/int numpy arrays."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def read_float(config: Mapping[str, ConfigValue], key: str, default: float) -> float:
    """Read a float config value, with a clear error for a wrong type."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"config {key!r} must be a number, got {value!r}")
    return float(value)


def read_int(config: Mapping[str, ConfigValue], key: str, default: int) -> int:
    """Read an integer config value, with a clear error for a wrong type."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config {key!r} must be an integer, got {value!r}")
    return value


def make_optimizer(params: Iterator[torch.nn.Parameter], config: Mapping[str, ConfigValue]) -> torch.optim.Optimizer:
    """Build the local optimiser named by ``config["optimizer"]`` (sgd or adam).

    ``weight_decay`` (default 0) adds ``weight_decay * w`` to every gradient (L2 penalty).
    """
    name = config.get("optimizer", "sgd")
    lr = read_float(config, "lr", 0.01)
    if lr <= 0:
        raise ConfigError(f"config 'lr' must be positive, got {lr}")
    decay = read_float(config, "weight_decay", 0.0)
    if decay < 0:
        raise ConfigError(f"config 'weight_decay' must be non-negative, got {decay}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=read_float(config, "momentum", 0.0), weight_decay=decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    raise ConfigError(f"config 'optimizer' must be 'sgd' or 'adam', got {name!r}")


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield index batches of one shuffled epoch (seeded, so runs repeat exactly)."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


class LocalCorrections:
    """Site-side parts of FedProx and SCAFFOLD for any torch module's local loop.

    Use in a task's training loop::

        corr = LocalCorrections(module, config, context)
        loss = loss_fn(...) + corr.penalty()      # FedProx: mu / 2 ||w - w_t||^2
        loss.backward()
        corr.correct_gradients()                  # SCAFFOLD: g <- g - c_i + c
        optimizer.step()
        ...
        extras = corr.finish(steps=done)          # SCAFFOLD: Delta c_i; stores c_i+

    FedProx (Li et al., MLSys 2020) is on when ``config["proximal_mu"] > 0``. SCAFFOLD
    (Karimireddy et al., ICML 2020, option II) is on when the instruction carries the
    server control variate (record ``scaffold_c``); the site's own ``c_i`` lives in
    ``context.state`` between rounds and is updated only by :meth:`finish`.

    Parameters
    ----------
    module : torch.nn.Module
        The model, already loaded with the received global state.
    config : Mapping[str, ConfigValue]
        The fit config (``proximal_mu``, ``lr``, ``optimizer``).
    context : FitContext or None (default: None)
        The node's context; ``None`` disables SCAFFOLD.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        config: Mapping[str, ConfigValue],
        context: FitContext | None = None,
    ) -> None:
        self.mu = read_float(config, "proximal_mu", 0.0)
        if self.mu < 0:
            raise ConfigError(f"config 'proximal_mu' must be non-negative, got {self.mu}")
        self._params = {n: p for n, p in module.named_parameters() if p.requires_grad}  # frozen ones never move
        self._anchor = {n: p.detach().clone() for n, p in self._params.items()}
        self._context = context
        self._control = context.inputs.get(CONTROL_RECORD) if context is not None else None
        self._correction: dict[str, torch.Tensor] = {}
        self._lr = read_float(config, "lr", 0.01)
        if self._control is None:
            return
        if config.get("optimizer", "sgd") != "sgd" or read_float(config, "momentum", 0.0) != 0.0:
            raise ConfigError("SCAFFOLD needs plain SGD at the site (optimizer 'sgd', momentum 0)")
        state = module.state_dict()
        for name, c in self._control.items():
            if name not in state or tuple(state[name].shape) != c.shape:
                raise ConfigError(f"SCAFFOLD control variate entry {name!r} does not match the model")
        missing = [n for n in self._params if n not in self._control]
        if missing:
            raise ConfigError(f"SCAFFOLD control variate lacks parameters {missing}")
        assert context is not None
        previous = context.state.get(SITE_STATE_KEY)
        self._c_i = {n: np.zeros(c.shape, np.float64) for n, c in self._control.items()}
        if previous is not None and set(previous) == set(self._control):
            self._c_i = {n: np.asarray(v, np.float64) for n, v in previous.items()}
        for name in self._params:
            diff = np.asarray(self._control[name], np.float64) - self._c_i[name]
            self._correction[name] = torch.from_numpy(diff.astype(np.float32))

    @property
    def scaffold(self) -> bool:
        """True when the instruction asked for SCAFFOLD's correction."""
        return self._control is not None

    def penalty(self) -> torch.Tensor | float:
        """FedProx's ``mu / 2 * ||w - w_t||^2`` (``0.0`` when ``mu`` is 0)."""
        if self.mu <= 0:
            return 0.0
        prox = sum(((p - self._anchor[n]) ** 2).sum() for n, p in self._params.items())
        return 0.5 * self.mu * prox

    def correct_gradients(self) -> None:
        """Add ``c - c_i`` to each parameter's gradient (no-op without SCAFFOLD)."""
        for name, corr in self._correction.items():
            grad = self._params[name].grad
            if grad is not None:
                grad.add_(corr.to(grad.dtype))

    def finish(self, *, steps: int) -> dict[str, ModelState]:
        """Return the reply records; with SCAFFOLD store ``c_i+`` and return ``Delta c_i``.

        ``c_i+ = c_i - c + (x - y) / (steps * lr)`` (option II), computed from the
        received model ``x`` and the trained one ``y``.
        """
        if self._control is None or self._context is None:
            return {}
        if steps < 1:
            raise ConfigError("SCAFFOLD needs at least one local step")
        new_ci: ModelState = {}
        delta: ModelState = {}
        scale = 1.0 / (steps * self._lr)
        for name, c in self._control.items():
            c64 = np.asarray(c, np.float64)
            if name in self._params:
                x = self._anchor[name].detach().cpu().numpy().astype(np.float64)
                y = self._params[name].detach().cpu().numpy().astype(np.float64)
                updated = self._c_i[name] - c64 + (x - y) * scale
            else:  # buffers carry no gradient: their control variate stays put
                updated = self._c_i[name]
            new_ci[name] = updated
            delta[name] = (updated - self._c_i[name]).astype(c.dtype)
        self._context.state[SITE_STATE_KEY] = new_ci
        return {DELTA_RECORD: delta}


def dp_requested(config: Mapping[str, ConfigValue]) -> bool:
    """True when the site's privacy guard resolved a DP-SGD plan for this fit."""
    return "dp.noise_multiplier" in config


def fit_dpsgd(
    module: torch.nn.Module,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: Mapping[str, ConfigValue],
    *,
    records: torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Train ``module`` with DP-SGD (Opacus) as resolved by the site's privacy guard.

    Any torch task calls this when :func:`dp_requested` is true; ``loss_fn`` must sum
    over the batch. ``records`` (a Dataset of (x, y) pairs) replaces ``x``/``y`` for data
    read from files. The ``dp.*`` keys (noise multiplier, sample rate, steps, clipping
    norm, secure mode, noise seed) come from the site, never from the task. Returns
    the metrics that prove what ran (``dp.steps``, ``dp.noise_multiplier``, ...).
    """
    from fedcare.privacy.dpsgd import noise_generator, train_dpsgd

    if read_float(config, "proximal_mu", 0.0) > 0:
        raise ConfigError("proximal_mu > 0 is not supported with DP-SGD (the proximal term is not clipped)")
    sigma = read_float(config, "dp.noise_multiplier", 0.0)
    seed = read_int(config, "dp.noise_seed", -1)
    secure = config.get("dp.secure_mode", True)
    result = train_dpsgd(
        module,
        x,
        y,
        loss_fn=loss_fn,
        optimizer=make_optimizer(module.parameters(), config),
        noise_multiplier=sigma,
        max_grad_norm=read_float(config, "dp.max_grad_norm", 1.0),
        sample_rate=read_float(config, "dp.sample_rate", 1.0),
        steps=read_int(config, "dp.steps", 1),
        generator=noise_generator(None if seed < 0 else seed),
        secure_mode=secure is True,
        records=records,
    )
    return {
        "dp.steps": float(result.steps),
        "dp.noise_multiplier": sigma,
        "dp.empty_batches": float(result.empty_batches),
    }


def linear_init(n_features: int, rng: np.random.Generator) -> ModelState:
    """Seeded Uniform(-1/sqrt(d), 1/sqrt(d)) weight (1, d) and bias (1,), as torch's Linear default."""
    bound = 1.0 / math.sqrt(n_features)
    return {
        "weight": rng.uniform(-bound, bound, (1, n_features)).astype(np.float32),
        "bias": rng.uniform(-bound, bound, (1,)).astype(np.float32),
    }


def train_steps(
    *,
    n: int,
    batch_size: int,
    target_steps: int,
    rng: np.random.Generator,
    optimizer: torch.optim.Optimizer,
    corrections: LocalCorrections,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    after_step: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """Run ``target_steps`` minibatch steps over seeded epochs; return (mean loss, steps).

    ``batch_loss`` maps a tensor of row indices to the batch's loss. The FedProx penalty
    and SCAFFOLD correction of ``corrections`` are applied at every step. A loss that does
    not depend on the parameters (e.g. a Cox batch without events) is counted but skips
    the update.
    """
    total, seen, done = 0.0, 0, 0
    while done < target_steps:
        for idx in batches(n, batch_size, rng):
            optimizer.zero_grad()
            loss = batch_loss(torch.from_numpy(idx))
            objective = loss + corrections.penalty()
            if objective.requires_grad:
                objective.backward()
                corrections.correct_gradients()
                optimizer.step()
                if after_step is not None:
                    after_step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            done += 1
            if done >= target_steps:
                break
    return total / max(seen, 1), done
