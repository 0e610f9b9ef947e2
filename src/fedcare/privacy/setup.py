"""PrivacySettings: turn user options (CLI, experiment config) into a private run.

One place builds, from ``--dp record --epsilon 3 --delta 1e-5 --site-budget 3``:
the fit config keys (record level), the strategy wrapper (client level), each site's
policy and ledger, and, after the run, the ``privacy`` section of summary.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fedcare.errors import ConfigError
from fedcare.privacy.accounting import ACCOUNTANT_VERSION, Accountant
from fedcare.privacy.client_dp import AdaptiveClipping, ClientLevelDP, noise_rng
from fedcare.privacy.ledger import LedgerBackend, PrivacyLedger
from fedcare.privacy.plan import ClientDPMode, PrivacyPlan, RecordDP
from fedcare.runtime.policy import SitePolicy
from fedcare.strategies.base import Strategy
from fedcare.types import ConfigValue, SiteId

__all__ = ["DP_LEVELS", "PrivacySettings", "PrivateRun", "ledger_summary", "prepare_private_run"]

#: Values of ``--dp``.
DP_LEVELS = ("none", "record", "client", "client-distributed")


@dataclass(frozen=True)
class PrivacySettings:
    """User-facing DP options of a run.

    Attributes
    ----------
    level : str (default: "none")
        ``none``, ``record`` (DP-SGD at every site), ``client`` (central client-level
        DP) or ``client-distributed`` (each site adds a share of the noise).
    epsilon, delta : float
        Target guarantee over the run's rounds (record level: per site).
    max_grad_norm : float (default: 1.0)
        Record level: per-record clipping norm.
    batch_size : int (default: 100000)
        Record level: expected Poisson batch; at least the site's size means
        full-batch DP gradient descent (q = 1), the best recipe on small tabular sites.
    local_steps : int (default: 1)
        Record level: DP steps per round (0: ``local_epochs`` epochs).
    local_epochs : int (default: 1)
        Record level: epochs per round when ``local_steps`` is 0.
    clip_norm : float (default: 0.5)
        Client level: L2 bound of each site's update (initial value when adaptive).
    adaptive_clipping : bool (default: False)
        Client level (central): Andrew et al. 2021 quantile clipping.
    site_max_epsilon : float or None (default: None)
        Give every site a budget (fail-closed policy) of this ε at ``delta``.
    seeded_noise : bool (default: False)
        Draw DP noise from the run seed (repeatable demos/tests); otherwise CSPRNG.
    trust_central_noise : bool (default: False)
        Sites with a budget accept server-added (central) noise.
    accountant : str (default: "rdp")
        ``rdp`` or ``prv``.
    lr : float or None (default: None)
        Record level: learning rate of the private recipe (``None`` keeps the run's).
        Full-batch DP gradient descent takes one large step per round where plain
        FedAvg takes many small ones.
    """

    level: str = "none"
    epsilon: float = math.inf
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    batch_size: int = 100_000
    local_steps: int = 1
    local_epochs: int = 1
    clip_norm: float = 0.5
    adaptive_clipping: bool = False
    site_max_epsilon: float | None = None
    seeded_noise: bool = False
    trust_central_noise: bool = False
    accountant: str = "rdp"
    lr: float | None = None

    def __post_init__(self) -> None:
        """Validate the combination."""
        if self.level not in DP_LEVELS:
            raise ConfigError(f"dp level must be one of {', '.join(DP_LEVELS)}, got {self.level!r}")
        if self.level != "none" and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"--dp {self.level} needs a finite positive --epsilon, got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.site_max_epsilon is not None and not (
            self.site_max_epsilon > 0 and math.isfinite(self.site_max_epsilon)
        ):
            raise ConfigError(
                f"a site's privacy budget (--site-budget) must be a finite ε > 0, got {self.site_max_epsilon}"
            )
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(f"accountant must be 'rdp' or 'prv', got {self.accountant!r}")
        if self.adaptive_clipping and self.level != "client":
            raise ConfigError("adaptive clipping is available with --dp client (central) only")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PrivacySettings:
        """Build from a plain mapping (experiment config, TOML), naming unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown privacy option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(values))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (``inf`` as a string)."""
        out = asdict(self)
        out["epsilon"] = "inf" if math.isinf(self.epsilon) else self.epsilon
        return out

    @property
    def is_private(self) -> bool:
        """True for any level but ``none``."""
        return self.level != "none"


@dataclass
class PrivateRun:
    """What a private run needs: the (wrapped) strategy, fit config, policies, ledgers."""

    settings: PrivacySettings
    strategy: Strategy
    fit_config: dict[str, ConfigValue]
    policies: dict[SiteId, SitePolicy]
    ledgers: dict[SiteId, PrivacyLedger]


def prepare_private_run(
    settings: PrivacySettings,
    *,
    make_strategy: Callable[[dict[str, ConfigValue]], Strategy],
    fit_config: Mapping[str, ConfigValue],
    rounds: int,
    seed: int,
    sites: Sequence[SiteId],
    backend: LedgerBackend,
    study: str,
) -> PrivateRun:
    """Wire ``settings`` into a run over ``sites`` whose ledgers live in ``backend``.

    ``make_strategy`` builds the (non-private) strategy from the fit config, which
    carries the record-level ``dp.*`` keys; client-level DP then wraps it.
    """
    accountant = Accountant(settings.accountant)
    config = dict(fit_config)
    if settings.level == "record":
        plan = PrivacyPlan(
            record=RecordDP(
                epsilon=settings.epsilon,
                delta=settings.delta,
                rounds=rounds,
                max_grad_norm=settings.max_grad_norm,
                batch_size=settings.batch_size,
                local_steps=settings.local_steps,
                local_epochs=settings.local_epochs,
                accountant=accountant,
                seeded_noise=settings.seeded_noise,
            )
        )
        config.update(plan.to_config())
        if settings.lr is not None:
            config["lr"] = settings.lr
    strategy = make_strategy(config)
    if settings.level in ("client", "client-distributed"):
        z = ClientLevelDP.calibrate(
            target_epsilon=settings.epsilon, delta=settings.delta, rounds=rounds, accountant=accountant
        )
        strategy = ClientLevelDP(  # type: ignore[assignment]
            strategy,
            noise_multiplier=z,
            clip_norm=settings.clip_norm,
            delta=settings.delta,
            mode=ClientDPMode.CENTRAL if settings.level == "client" else ClientDPMode.DISTRIBUTED,
            adaptive=AdaptiveClipping() if settings.adaptive_clipping else None,
            accountant=accountant,
            rng=noise_rng(seed if settings.seeded_noise else None),
        )
    policies = {
        site: SitePolicy(
            max_epsilon=settings.site_max_epsilon,
            delta=settings.delta,
            trust_central_noise=settings.trust_central_noise,
            allow_seeded_noise=settings.seeded_noise,
        )
        for site in sites
    }
    ledgers = {site: PrivacyLedger(backend, site=site, study=study, delta=settings.delta) for site in sites}
    return PrivateRun(settings=settings, strategy=strategy, fit_config=config, policies=policies, ledgers=ledgers)


def ledger_summary(ledgers: Mapping[SiteId, PrivacyLedger], run_id: str, settings: PrivacySettings) -> dict[str, Any]:
    """The ``privacy`` section of summary.json: ε spent per site, with the parameters."""
    sites: dict[str, Any] = {}
    for site, ledger in ledgers.items():
        entries = ledger.entries(run_id)
        last = entries[-1] if entries else None
        sites[site] = {
            "epsilon_run": ledger.spent(run_id) if entries else 0.0,
            "epsilon_study": ledger.spent(),
            "delta": ledger.delta,
            "rounds_charged": len({e.round_no for e in entries}),
            "max_epsilon": settings.site_max_epsilon,
            "mechanisms": sorted({e.cost.mechanism.value for e in entries}),
            "noise_multiplier": last.cost.noise_multiplier if last else None,
            "sample_rate": last.cost.sample_rate if last else None,
            "steps_per_round": last.cost.steps if last else None,
            "accountant": last.cost.accountant.value if last else settings.accountant,
        }
    return {
        "settings": settings.as_dict(),
        "accountant_version": ACCOUNTANT_VERSION,
        "study": next(iter(ledgers.values())).study if ledgers else "",
        "sites": sites,
    }
