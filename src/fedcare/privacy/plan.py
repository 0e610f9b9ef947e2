"""PrivacyPlan: the DP a round carries, as flat ``dp.*`` keys of the fit config.

The coordinator side builds a plan and sends it with every fit instruction; the site
parses it (:meth:`PrivacyPlan.from_config`), checks it against its policy, works out
its own cost and charges its ledger. Two independent parts, which may be combined:

* :class:`RecordDP`: DP-SGD at the site (Abadi et al., "Deep Learning with
  Differential Privacy", CCS 2016, https://arxiv.org/abs/1607.00133). The plan names the
  target (ε, δ) for the whole run, the rounds and the local work; each site calibrates
  its own noise multiplier from its own number of records (sampling rate
  ``batch_size / n``), so a 30-row site and a 200-row site both end at the target.
* :class:`ClientDP`: client-level DP (McMahan et al., "Learning Differentially Private
  Recurrent Language Models", ICLR 2018, https://arxiv.org/abs/1710.06963): the site's
  update is clipped to ``clip_norm`` and Gaussian noise of std ``z * clip_norm`` is
  added to the sum, by the server (central) or in shares by the sites (distributed).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedcare.errors import ConfigError
from fedcare.privacy.accounting import Accountant, Mechanism, PrivacyCost, calibrate_noise_multiplier
from fedcare.types import ConfigValue

__all__ = ["ClientDP", "ClientDPMode", "PrivacyPlan", "RecordDP", "record_site_cost"]

PREFIX = "dp."


class ClientDPMode(enum.Enum):
    """Who adds the client-level noise."""

    CENTRAL = "central"
    DISTRIBUTED = "distributed"


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"privacy plan: {name} must be a positive finite number, got {value}")


def _delta(value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"privacy plan: delta must be in (0, 1), got {value}")


@dataclass(frozen=True)
class RecordDP:
    """DP-SGD at every site, calibrated per site to ``(epsilon, delta)`` over ``rounds``.

    Attributes
    ----------
    epsilon, delta : float
        Target guarantee for the whole run at each site (record level).
    rounds : int
        Rounds the calibration covers (the run's rounds).
    max_grad_norm : float (default: 1.0)
        Per-record gradient clipping norm (L2).
    batch_size : int (default: 16)
        Expected Poisson batch size; the sampling rate is ``min(1, batch_size / n)``.
    local_epochs : int (default: 1)
        Local epochs per round (``ceil(epochs / q)`` steps) unless ``local_steps`` > 0.
    local_steps : int (default: 0)
        Fixed number of DP-SGD steps per round (overrides epochs).
    accountant : Accountant (default: RDP)
        Accountant used for calibration and the ledger.
    secure_mode : bool (default: True)
        Opacus's noise that resists floating-point attacks (Mironov 2012).
    seeded_noise : bool (default: False)
        Draw DP noise and Poisson samples from the round seed the coordinator sends
        (repeatable tests and demos). Otherwise the generator is seeded from the OS
        CSPRNG. A site refuses seeded noise unless its policy allows it.
    """

    epsilon: float
    delta: float
    rounds: int
    max_grad_norm: float = 1.0
    batch_size: int = 16
    local_epochs: int = 1
    local_steps: int = 0
    accountant: Accountant = Accountant.RDP
    secure_mode: bool = True
    seeded_noise: bool = False

    def __post_init__(self) -> None:
        """Validate every field with a message naming it."""
        _positive("epsilon", self.epsilon)
        _delta(self.delta)
        _positive("max_grad_norm", self.max_grad_norm)
        if self.rounds < 1:
            raise ConfigError(f"privacy plan: rounds must be at least 1, got {self.rounds}")
        if self.batch_size < 1:
            raise ConfigError(f"privacy plan: batch_size must be at least 1, got {self.batch_size}")
        if self.local_epochs < 1 or self.local_steps < 0:
            raise ConfigError(
                f"privacy plan: local_epochs must be >= 1 and local_steps >= 0, "
                f"got {self.local_epochs} and {self.local_steps}"
            )

    def sample_rate(self, n_records: int) -> float:
        """Poisson sampling rate at a site with ``n_records`` training rows."""
        if n_records < 1:
            raise ConfigError("privacy plan: a site with no training records cannot run DP-SGD")
        return min(1.0, self.batch_size / n_records)

    def steps_per_round(self, n_records: int) -> int:
        """DP-SGD steps per round at a site with ``n_records`` rows."""
        if self.local_steps > 0:
            return self.local_steps
        return max(1, math.ceil(self.local_epochs / self.sample_rate(n_records)))


@functools.lru_cache(maxsize=256)
def _calibrated(epsilon: float, delta: float, q: float, steps: int, accountant: Accountant) -> float:
    return calibrate_noise_multiplier(
        target_epsilon=epsilon, delta=delta, sample_rate=q, steps=steps, accountant=accountant
    )


def record_site_cost(plan: RecordDP, n_records: int) -> PrivacyCost:
    """One round of DP-SGD at a site: its calibrated noise multiplier, rate and steps.

    The noise multiplier is calibrated so that ``plan.rounds`` such rounds spend
    ``plan.epsilon`` at ``plan.delta`` (Opacus ``get_noise_multiplier``).
    """
    q = plan.sample_rate(n_records)
    steps = plan.steps_per_round(n_records)
    sigma = _calibrated(plan.epsilon, plan.delta, q, steps * plan.rounds, plan.accountant)
    return PrivacyCost(
        mechanism=Mechanism.DPSGD, noise_multiplier=sigma, sample_rate=q, steps=steps, accountant=plan.accountant
    )


@dataclass(frozen=True)
class ClientDP:
    """Client-level DP for one round: clip each site's update, add Gaussian noise.

    Attributes
    ----------
    mode : ClientDPMode
        ``central``: the server adds N(0, (z C)^2) to the sum; ``distributed``: each
        site adds N(0, (z C)^2 / min_sites) to its own update.
    noise_multiplier : float
        ``z``: noise std over the clipping norm, for the sum of the updates.
    clip_norm : float
        L2 bound ``C`` of each site's update (this round's value when adaptive).
    delta : float
        δ the guarantee is stated at.
    min_sites : int (default: 1)
        Distributed mode: the fewest shares the sum may hold; each share carries
        ``1 / min_sites`` of the variance, so any ``min_sites`` of them reach ``z``.
    secure_aggregation : bool (default: False)
        Distributed mode: the server only sees the sum (SecAgg). Without it a site
        accounts only for its own share (``z / sqrt(min_sites)``).
    report_unclipped : bool (default: False)
        Adaptive clipping (central): the site reports whether its update was within
        ``clip_norm`` (Andrew et al. 2021).
    accountant : Accountant (default: RDP)
        Accountant used for the ledger.
    """

    mode: ClientDPMode
    noise_multiplier: float
    clip_norm: float
    delta: float
    min_sites: int = 1
    secure_aggregation: bool = False
    report_unclipped: bool = False
    accountant: Accountant = Accountant.RDP

    def __post_init__(self) -> None:
        """Validate every field with a message naming it."""
        _positive("client noise_multiplier", self.noise_multiplier)
        _positive("clip_norm", self.clip_norm)
        _delta(self.delta)
        if self.min_sites < 1:
            raise ConfigError(f"privacy plan: min_sites must be at least 1, got {self.min_sites}")

    @property
    def share_std(self) -> float:
        """Distributed mode: the std of the noise each site adds (per coordinate)."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.min_sites)

    def site_cost(self) -> PrivacyCost:
        """One round as the site accounts it (no amplification by site sampling).

        The site cannot check how the server samples sites, so it claims no
        amplification (``sample_rate = 1``). In distributed mode without secure
        aggregation the server sees this site's update with only its own share of the
        noise, so the site accounts ``z / sqrt(min_sites)``.
        """
        z = self.noise_multiplier
        mechanism = Mechanism.CLIENT_CENTRAL
        if self.mode is ClientDPMode.DISTRIBUTED:
            mechanism = Mechanism.CLIENT_DISTRIBUTED
            if not self.secure_aggregation:
                z = z / math.sqrt(self.min_sites)
        return PrivacyCost(
            mechanism=mechanism, noise_multiplier=z, sample_rate=1.0, steps=1, accountant=self.accountant
        )


def _get(config: Mapping[str, ConfigValue], key: str, kind: type, default: object = None) -> object:
    full = PREFIX + key
    if full not in config:
        if default is None:
            raise ConfigError(f"privacy plan: missing config key {full!r}")
        return default
    value = config[full]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"privacy plan: {full!r} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"privacy plan: {full!r} must be {kind.__name__}, got {value!r}")
    return value


def _enum(cls: type[enum.Enum], key: str, value: object) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ConfigError(f"privacy plan: {PREFIX}{key} must be one of {allowed}, got {value!r}") from None


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP one fit instruction carries: record level, client level, both or neither."""

    record: RecordDP | None = None
    client: ClientDP | None = None

    @property
    def is_private(self) -> bool:
        """True when the round carries a DP guarantee (finite ε)."""
        return self.record is not None or self.client is not None

    def to_config(self) -> dict[str, ConfigValue]:
        """Flat ``dp.*`` config keys (scalars only, as a fit config holds)."""
        out: dict[str, ConfigValue] = {}
        if self.record is not None:
            r = self.record
            out.update(
                {
                    "dp.record": True,
                    "dp.epsilon": r.epsilon,
                    "dp.delta": r.delta,
                    "dp.rounds": r.rounds,
                    "dp.max_grad_norm": r.max_grad_norm,
                    "dp.batch_size": r.batch_size,
                    "dp.local_epochs": r.local_epochs,
                    "dp.local_steps": r.local_steps,
                    "dp.accountant": r.accountant.value,
                    "dp.secure_mode": r.secure_mode,
                    "dp.seeded_noise": r.seeded_noise,
                }
            )
        if self.client is not None:
            c = self.client
            out.update(
                {
                    "dp.client": c.mode.value,
                    "dp.client_noise_multiplier": c.noise_multiplier,
                    "dp.clip_norm": c.clip_norm,
                    "dp.client_delta": c.delta,
                    "dp.min_sites": c.min_sites,
                    "dp.secure_aggregation": c.secure_aggregation,
                    "dp.report_unclipped": c.report_unclipped,
                    "dp.client_accountant": c.accountant.value,
                }
            )
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigValue]) -> PrivacyPlan:
        """Parse the ``dp.*`` keys of a fit config; no keys means no DP."""
        record = client = None
        if config.get("dp.record", False) is True:
            record = RecordDP(
                epsilon=_get(config, "epsilon", float),  # type: ignore[arg-type]
                delta=_get(config, "delta", float),  # type: ignore[arg-type]
                rounds=_get(config, "rounds", int),  # type: ignore[arg-type]
                max_grad_norm=_get(config, "max_grad_norm", float, 1.0),  # type: ignore[arg-type]
                batch_size=_get(config, "batch_size", int, 16),  # type: ignore[arg-type]
                local_epochs=_get(config, "local_epochs", int, 1),  # type: ignore[arg-type]
                local_steps=_get(config, "local_steps", int, -1) if "dp.local_steps" in config else 0,  # type: ignore[arg-type]
                accountant=_enum(Accountant, "accountant", config.get("dp.accountant", "rdp")),  # type: ignore[arg-type]
                secure_mode=_get(config, "secure_mode", bool, True),  # type: ignore[arg-type]
                seeded_noise=bool(config.get("dp.seeded_noise", False) is True),
            )
        elif "dp.record" in config and config["dp.record"] is not False:
            raise ConfigError(f"privacy plan: 'dp.record' must be true or false, got {config['dp.record']!r}")
        if "dp.client" in config:
            client = ClientDP(
                mode=_enum(ClientDPMode, "client", config["dp.client"]),  # type: ignore[arg-type]
                noise_multiplier=_get(config, "client_noise_multiplier", float),  # type: ignore[arg-type]
                clip_norm=_get(config, "clip_norm", float),  # type: ignore[arg-type]
                delta=_get(config, "client_delta", float),  # type: ignore[arg-type]
                min_sites=_get(config, "min_sites", int, 1),  # type: ignore[arg-type]
                secure_aggregation=config.get("dp.secure_aggregation", False) is True,
                report_unclipped=config.get("dp.report_unclipped", False) is True,
                accountant=_enum(Accountant, "client_accountant", config.get("dp.client_accountant", "rdp")),  # type: ignore[arg-type]
            )
        return cls(record=record, client=client)
