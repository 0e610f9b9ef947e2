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

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.version import __version__ as _opacus_version

from fedcare.errors import ConfigError

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
ACCOUNTANT_VERSION = f"opacus {_opacus_version}; rdp orders fedcare-v1"


class Accountant(enum.Enum):
    """Which Opacus accountant turns a history into ε."""

    RDP = "rdp"
    PRV = "prv"


class Mechanism(enum.Enum):
    """What was noised: records inside a site, or a site's whole update."""

    #: DP-SGD at the site (per-record clipping, Gaussian noise, Poisson sampling).
    DPSGD = "dpsgd"
    #: Client-level DP, noise added by the server (the site trusts it).
    CLIENT_CENTRAL = "client_central"
    #: Client-level DP, each site adds its share of the noise.
    CLIENT_DISTRIBUTED = "client_distributed"


@dataclass(frozen=True)
class PrivacyCost:
    """One application of a sampled Gaussian mechanism, as the accountant sees it.

    Attributes
    ----------
    mechanism : Mechanism
        What was noised.
    noise_multiplier : float
        Gaussian noise std divided by the L2 sensitivity (the clipping norm).
    sample_rate : float
        Poisson sampling probability of each unit (record or site), in (0, 1].
    steps : int
        Number of compositions of the mechanism.
    accountant : Accountant
        Which accountant evaluates ε.
    """

    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: Accountant = Accountant.RDP

    def __post_init__(self) -> None:
        """Reject values the accountants cannot evaluate."""
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"noise_multiplier must be a positive finite number, got {self.noise_multiplier}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")

    def epsilon(self, delta: float) -> float:
        """ε of this cost alone at ``delta``."""
        return epsilon_of([self], delta=delta, accountant=self.accountant)

    def as_record(self) -> dict[str, Any]:
        """Plain JSON-able form (enum values as strings)."""
        out = asdict(self)
        out["mechanism"] = self.mechanism.value
        out["accountant"] = self.accountant.value
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PrivacyCost:
        """Inverse of :meth:`as_record`."""
        return cls(
            mechanism=Mechanism(record["mechanism"]),
            noise_multiplier=float(record["noise_multiplier"]),
            sample_rate=float(record["sample_rate"]),
            steps=int(record["steps"]),
            accountant=Accountant(record.get("accountant", "rdp")),
        )


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def epsilon_of(costs: Iterable[PrivacyCost], *, delta: float, accountant: Accountant = Accountant.RDP) -> float:
    """ε after composing ``costs`` at ``delta``, by the named Opacus accountant.

    An empty history spends nothing (0.0). The composition is the accountant's own
    (RDP orders add; PRV convolves the privacy loss distributions), never a sum of ε.
    """
    _check_delta(delta)
    history = [(c.noise_multiplier, c.sample_rate, c.steps) for c in costs]
    if not history:
        return 0.0
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
