"""Distributed DP under SecAgg+: the noise is split among the sites, the ε is accounted here.

Each of the ``m`` sites asked for a masked input adds ``N(0, (z C)^2 / m)`` to its clipped
update before masking, so the server only ever sees a sum carrying ``N(0, (z C)^2)``:
the noise central DP-FedAvg would add (McMahan, Ramage, Talwar, Zhang, "Learning
Differentially Private Recurrent Language Models", ICLR 2018), while no party sees an
un-noised sum (Truex et al., "A Hybrid Approach to Privacy-Preserving Federated
Learning", AISec 2019). When only ``s < m`` of them make it into the sum, the noise is
``N(0, (z C)^2 s / m)``: the effective noise multiplier is ``z * sqrt(s / m)`` and the
ledger charges that (higher) ε. Accounting: Rényi DP of the Gaussian mechanism (Mironov,
CSF 2017) through Google's ``dp-accounting``; no amplification by sampling is claimed.

This is a small adapter; the project-wide privacy ledger (``fedcare.privacy``) can take
the per-round :class:`DistributedDpEntry` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedcare.errors import ConfigError

__all__ = ["DistributedDp", "DistributedDpEntry", "DistributedDpLedger", "effective_noise_multiplier"]


@dataclass(frozen=True)
class DistributedDp:
    """Client-level DP with the Gaussian noise shared among the sites.

    Attributes
    ----------
    clip_norm : float
        L2 bound ``C`` of each site's update (the sum's sensitivity; weights are 1).
    noise_multiplier : float
        ``z``: the sum carries ``N(0, (z C)^2)`` when every asked site survives.
    delta : float (default: 1e-5)
        δ at which ε is reported.
    """

    clip_norm: float
    noise_multiplier: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        """Validate (one-line errors naming the value)."""
        if not self.clip_norm > 0:
            raise ConfigError(f"DistributedDp.clip_norm must be positive, got {self.clip_norm}")
        if not self.noise_multiplier > 0:
            raise ConfigError(f"DistributedDp.noise_multiplier must be positive, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"DistributedDp.delta must be in (0, 1), got {self.delta}")


def effective_noise_multiplier(noise_multiplier: float, planned: int, survived: int) -> float:
    """``z * sqrt(survived / planned)``: the noise left when ``planned - survived`` shares are missing."""
    if not 1 <= survived <= planned:
        raise ValueError(f"survived ({survived}) must be in [1, planned ({planned})]")
    return noise_multiplier * math.sqrt(survived / planned)


@dataclass(frozen=True)
class DistributedDpEntry:
    """One round's charge: how many noise shares were planned and arrived, and ε so far."""

    round_no: int
    planned: int
    survived: int
    noise_multiplier: float
    epsilon: float


@dataclass
class DistributedDpLedger:
    """Cumulative ε of the rounds run with distributed noise (RDP composition)."""

    dp: DistributedDp
    entries: list[DistributedDpEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        # dp-accounting is imported where it is used: its package import loads scipy.stats
        # (seconds of CPU), which a site that never runs distributed DP must not pay.
        from dp_accounting.rdp import RdpAccountant

        self._accountant = RdpAccountant()

    def charge(self, round_no: int, *, planned: int, survived: int) -> DistributedDpEntry:
        """Compose one Gaussian release with the noise that actually arrived; return the entry."""
        from dp_accounting import GaussianDpEvent  # see __post_init__

        z = effective_noise_multiplier(self.dp.noise_multiplier, planned, survived)
        self._accountant.compose(GaussianDpEvent(z))
        entry = DistributedDpEntry(round_no, planned, survived, z, float(self._accountant.get_epsilon(self.dp.delta)))
        self.entries.append(entry)
        return entry

    @property
    def epsilon(self) -> float:
        """ε spent so far at ``dp.delta`` (0 before any round)."""
        return self.entries[-1].epsilon if self.entries else 0.0
