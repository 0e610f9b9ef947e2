"""Helpers shared by the built-in torch tasks: state <-> module, seeded batches, optimisers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

from fedcare.errors import ConfigError
from fedcare.types import ConfigValue, ModelState

__all__ = ["batches", "load_state", "make_optimizer", "module_state", "read_float", "read_int"]


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
    """Build the local optimiser named by ``config["optimizer"]`` (sgd or adam)."""
    name = config.get("optimizer", "sgd")
    lr = read_float(config, "lr", 0.01)
    if lr <= 0:
        raise ConfigError(f"config 'lr' must be positive, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=read_float(config, "momentum", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ConfigError(f"config 'optimizer' must be 'sgd' or 'adam', got {name!r}")


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield index batches of one shuffled epoch (seeded, so runs repeat exactly)."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
