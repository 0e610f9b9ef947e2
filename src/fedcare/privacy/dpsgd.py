"""DP-SGD at the site through Opacus: per-record clipping, Gaussian noise, Poisson batches.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016
(https://arxiv.org/abs/1607.00133), as implemented by Opacus (Yousefpour et al.,
"Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021,
https://arxiv.org/abs/2109.12298): ``GradSampleModule`` computes per-record gradients,
``DPOptimizer`` clips each to ``max_grad_norm``, sums, adds N(0, (sigma C)^2) and divides
by the expected batch size, and ``DPDataLoader`` draws Poisson batches (each record
independently with probability ``q``), the sampling the accountant assumes.

Poisson batches can be empty (a 30-row site with ``q = 0.13`` draws an empty batch
with probability ``0.87^30 ~ 1.5%``). Opacus's loader then yields zero-length tensors;
the loss is a *sum* over records (0 for an empty batch), so the step still adds pure
noise, exactly what the accountant counts, instead of a NaN from a mean over nothing.
"""

from __future__ import annotations

import logging
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch.utils.data import Dataset, TensorDataset

from fedcare.errors import ConfigError

__all__ = ["DpSgdResult", "noise_generator", "train_dpsgd"]

log = logging.getLogger(__name__)

#: A loss that SUMS over the records of a batch (``reduction="sum"``).
SumLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def noise_generator(seed: int | None) -> torch.Generator:
    """A torch generator for DP noise and Poisson sampling.

    ``None`` (the default for real use) seeds it with 63 bits from the OS CSPRNG
    (:mod:`secrets`); an integer seed makes runs repeatable and is for tests and demos.
    """
    g = torch.Generator()
    if seed is None:
        g.manual_seed(secrets.randbits(63))
    else:
        log.debug("DP-SGD noise is seeded (seed=%d): repeatable, for tests and demos only", seed)
        g.manual_seed(int(seed))
    return g


@dataclass(frozen=True)
class DpSgdResult:
    """What a DP-SGD run did (the site checks ``steps`` against what it charges)."""

    steps: int
    empty_batches: int
    records_seen: int
    mean_loss: float


def train_dpsgd(
    module: torch.nn.Module,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    *,
    loss_fn: SumLoss,
    optimizer: torch.optim.Optimizer,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    generator: torch.Generator,
    secure_mode: bool = True,
    records: Dataset[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> DpSgdResult:
    """Run exactly ``steps`` DP-SGD steps on ``(x, y)``, updating ``module`` in place.

    Parameters
    ----------
    module : torch.nn.Module
        Model to train; ``optimizer`` must hold its parameters.
    x, y : torch.Tensor or None
        The site's training records (rows); ``None`` when ``records`` is given.
    loss_fn : callable
        Loss summed over the batch's records.
    optimizer : torch.optim.Optimizer
        Plain optimiser wrapped by Opacus's ``DPOptimizer``.
    noise_multiplier, max_grad_norm : float
        sigma and C of the Gaussian mechanism on each step.
    sample_rate : float
        Poisson sampling rate q; the expected batch size is ``q * n``.
    steps : int
        Number of noisy steps (the accountant's count).
    generator : torch.Generator
        Source of the noise and of the Poisson samples (:func:`noise_generator`).
    secure_mode : bool (default: True)
        Opacus's floating-point-attack-resistant noise (sum of 4 draws).
    records : torch Dataset of (x, y) pairs or None (default: None)
        Records read one at a time (files streamed from disk) instead of ``x``/``y``;
        Poisson sampling draws from it the same way.

    Returns
    -------
    DpSgdResult
    """
    if records is None:
        if x is None or y is None:
            raise ConfigError("DP-SGD needs the training records: x and y, or records")
        records = TensorDataset(x, y)
    n = len(records)
    if n < 1:
        raise ConfigError("DP-SGD needs at least one training record")
    if steps < 1:
        raise ConfigError(f"DP-SGD steps must be at least 1, got {steps}")
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"DP-SGD sample_rate must be in (0, 1], got {sample_rate}")
    gsm = GradSampleModule(module, loss_reduction="sum")
    dp_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=max(1, round(sample_rate * n)),
        loss_reduction="mean",
        generator=generator,
        secure_mode=secure_mode,
    )
    loader = DPDataLoader(records, sample_rate=sample_rate, generator=generator)
    done = empty = seen = 0
    total_loss = 0.0
    try:
        while done < steps:
            for xb, yb in loader:
                dp_optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(gsm(xb), yb)
                with warnings.catch_warnings():
                    # Opacus's hooks on a first layer whose input needs no gradient: harmless.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                dp_optimizer.step()
                done += 1
                seen += len(xb)
                empty += int(len(xb) == 0)
                total_loss += float(loss.detach())
                if done >= steps:
                    break
    finally:
        gsm._close()  # remove Opacus's hooks: the module goes back to plain torch
    return DpSgdResult(steps=done, empty_batches=empty, records_seen=seen, mean_loss=total_loss / max(seen, 1))
