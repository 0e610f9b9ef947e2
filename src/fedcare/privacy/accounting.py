"""Privacy accounting through Opacus's accountants (RDP and PRV); nothing hand-written.

Every mechanism fedcare runs is a (sub)sampled Gaussian mechanism, described by one
:class:`PrivacyCost`: noise multiplier ``sigma``, sampling rate ``q`` and number of
steps. A list of costs is an Opacus accountant ``history``; the ε of any list (one
round, one run, a site's whole study) is what the accountant says for that history.

References
----------
* Mironov, "Rényi Differential Privacy", CSF 2017 (RDP composition);
  Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled Gaussian
  Mechanism", 2019 (https://arxiv.org/abs/1908.10530).
* Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy", NeurIPS 2021
  (PRV accountant, https://arxiv.org/abs/2106.02848).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from importlib.metadata import version

from fedcare.errors import ConfigError
from fedcare.privacy.cost import Accountant, Mechanism, PrivacyCost

__all__ = [
    "ACCOUNTANT_VERSION",
    "Accountant",
    "Mechanism",
    "PrivacyCost",
    "RDP_ORDERS",
    "calibrate_noise_multiplier",
    "epsilon_of",
]

#: RDP orders: two fractional orders instead of Opacus's 99 (fractional orders of the
#: sampled Gaussian are the slow ones; few keep calibration fast on a busy site),
#: all integers to 63 and larger orders, which the strongly noised, unsampled mechanisms
#: of small-ε runs need for a tight bound (Opacus warns otherwise). Any set of orders
#: gives a valid bound; this one is part of ``ACCOUNTANT_VERSION`` so ε can be recomputed.
RDP_ORDERS: tuple[float, ...] = (
    1.5,
    2.5,
    *range(2, 64),
    80,
    96,
    128,
    192,
    256,
    384,
    512,
    1024,
)

#: Recorded with every ledger entry, so anyone can recompute ε with the same code.
ACCOUNTANT_VERSION = f"opacus {version('opacus')}; rdp orders fedcare-v1"


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def epsilon_of(costs: Iterable[PrivacyCost], *, delta: float, accountant: Accountant = Accountant.RDP) -> float:
    """ε after composing ``costs`` at ``delta``, by the named Opacus accountant.

    An empty history spends nothing (0.0). The composition of Gaussian mechanisms is
    the accountant's own (RDP orders add; PRV convolves the privacy loss
    distributions), never a sum of ε. Laplace releases (pure ε-DP, which the Opacus
    accountants do not model) are added by basic composition: an (ε₁, δ)- and an
    ε₂-DP mechanism together are (ε₁ + ε₂, δ)-DP (Dwork & Roth 2014, Thm 3.16).
    """
    _check_delta(delta)
    costs = list(costs)
    pure = [c for c in costs if c.mechanism is Mechanism.STATS_LAPLACE]
    laplace = sum(c.steps / c.noise_multiplier for c in pure)
    gaussian = [c for c in costs if c.mechanism is not Mechanism.STATS_LAPLACE]
    history = [(c.noise_multiplier, c.sample_rate, c.steps) for c in gaussian]
    if not history:
        return float(laplace)
    return laplace + _gaussian_epsilon(history, delta, accountant)


def _gaussian_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: Accountant) -> float:
    # Opacus is imported where it is used: its package import loads torch (seconds of CPU),
    # which a numpy-only site that never spends budget (e.g. thousands of simulated sites
    # in a few Ray actors) must not pay just for having a privacy guard.
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant is Accountant.RDP:
        rdp = RDPAccountant()
        rdp.history = history
        return float(rdp.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
    prv = PRVAccountant()
    prv.history = history
    return float(prv.get_epsilon(delta=delta))


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = Accountant.RDP,
    relative_tolerance: float = 0.005,
) -> float:
    """The smallest noise multiplier whose ε after ``steps`` is at most ``target_epsilon``.

    A binary search by Opacus's ``get_noise_multiplier``; the result spends between
    ``(1 - relative_tolerance) * target_epsilon`` and ``target_epsilon``.

    Raises
    ------
    ConfigError
        For a non-positive or infinite target, or a budget too small for Opacus's
        search range (noise multiplier above 2000).
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError(f"target epsilon must be a positive finite number, got {target_epsilon}")
    _check_delta(delta)
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    from opacus.accountants.utils import get_noise_multiplier  # loads torch: see _gaussian_epsilon

    extra = {"alphas": list(RDP_ORDERS)} if accountant is Accountant.RDP else {}
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant.value,
                epsilon_tolerance=relative_tolerance * target_epsilon,
                **extra,
            )
        )
    except ValueError as exc:
        raise ConfigError(
            f"cannot reach epsilon={target_epsilon} at delta={delta} with sample_rate={sample_rate:.4g} "
            f"over {steps} steps: {exc}"
        ) from None
