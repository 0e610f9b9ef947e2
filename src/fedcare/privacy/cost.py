"""PrivacyCost: one applied mechanism as the ledger and the accountants see it.

Plain values (no accountant library), so code that only describes or records a cost
(cohort statistics, the ledger's storage) does not import Opacus. ε of a list of costs
is :func:`fedcare.privacy.accounting.epsilon_of`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fedcare.errors import ConfigError

__all__ = ["Accountant", "Mechanism", "PrivacyCost"]


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
    #: A cohort-statistics release with Gaussian noise: ``steps`` released components,
    #: each a Gaussian mechanism (noise std / sensitivity = ``noise_multiplier``), unsampled.
    STATS_GAUSSIAN = "stats_gaussian"
    #: A cohort-statistics release with Laplace noise: ``steps`` components, each with
    #: scale / sensitivity = ``noise_multiplier``, i.e. pure ``1 / noise_multiplier``-DP
    #: (Dwork et al. 2006); composed by basic composition (ε adds, no δ).
    STATS_LAPLACE = "stats_laplace"


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
        if self.mechanism is Mechanism.STATS_LAPLACE and self.sample_rate != 1.0:
            raise ConfigError(f"a Laplace release is not sampled: sample_rate must be 1, got {self.sample_rate}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")

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
