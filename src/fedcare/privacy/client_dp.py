"""Client-level DP: clip each site's update, add Gaussian noise centrally or in shares.

* Site side (:func:`privatize_update`): the update ``Δ = w_local - w_global`` is clipped
  to L2 norm ``C``; in distributed mode the site also adds N(0, (z C)^2 / m) per
  coordinate, so that any ``m`` shares summed carry the central noise N(0, (z C)^2)
  (meant to run under secure aggregation, so only the sum is seen).
* Server side (:class:`ClientLevelDP`): a wrapper around any weighted-sum strategy
  (composition, as Flower's ``DifferentialPrivacyServerSideFixedClipping``): it clips
  again (so it is safe with any site), folds every update with equal weight, adds
  N(0, (z C)^2) to the sum in central mode, and optionally adapts ``C`` to a quantile
  of the update norms.

References
----------
* McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
  Models", ICLR 2018 (https://arxiv.org/abs/1710.06963): DP-FedAvg.
* Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
  Clipping", NeurIPS 2021 (https://arxiv.org/abs/1905.03871): quantile-based clipping.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedcare.errors import ConfigError
from fedcare.privacy.accounting import Accountant
from fedcare.privacy.plan import ClientDP, ClientDPMode, PrivacyPlan
from fedcare.strategies.base import ServerState, Strategy
from fedcare.types import FitResult, Metrics, ModelState, Payload, RoundInfo, SiteId

__all__ = [
    "AdaptiveClipping",
    "ClientLevelDP",
    "clip_l2",
    "l2_norm",
    "noise_rng",
    "privatize_update",
]

_EXTRA = "client_dp"


def noise_rng(seed: int | None = None) -> np.random.Generator:
    """A numpy generator for DP noise: seeded from the OS CSPRNG unless ``seed`` is given."""
    return np.random.default_rng(secrets.randbits(128) if seed is None else seed)


def _float_keys(state: ModelState) -> list[str]:
    return [k for k, v in state.items() if np.issubdtype(v.dtype, np.floating)]


def l2_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all entries of ``update`` taken as one vector (float64)."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))


def clip_l2(update: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` to L2 norm at most ``clip_norm``; return it and its original norm."""
    if not clip_norm > 0:
        raise ConfigError(f"clip_norm must be positive, got {clip_norm}")
    norm = l2_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * factor for k, v in update.items()}, norm


def privatize_update(
    reference: ModelState,
    local: ModelState,
    plan: ClientDP,
    rng: np.random.Generator,
) -> tuple[ModelState, float]:
    """The site's side of client-level DP: clip ``local - reference``, add its noise share.

    Returns the state to send (``reference + clipped delta (+ share)``) and the norm of
    the unclipped delta. Non-float entries (counters) are sent unchanged.
    """
    keys = _float_keys(reference)
    delta = {k: np.asarray(local[k], dtype=np.float64) - np.asarray(reference[k], dtype=np.float64) for k in keys}
    clipped, norm = clip_l2(delta, plan.clip_norm)
    if plan.mode is ClientDPMode.DISTRIBUTED:
        std = plan.share_std
        for k in keys:
            clipped[k] += rng.normal(0.0, std, size=clipped[k].shape)
    out = dict(local)
    for k in keys:
        out[k] = (np.asarray(reference[k], dtype=np.float64) + clipped[k]).astype(reference[k].dtype)
    return out, norm


@dataclass(frozen=True)
class AdaptiveClipping:
    """Quantile-based adaptive clipping (Andrew et al. 2021, Algorithm 1).

    Each round sites report whether their update norm was within ``C``; the server
    estimates that fraction with Gaussian noise of std ``count_noise_std`` and moves
    ``C <- C * exp(-learning_rate * (fraction - target_quantile))``.

    Attributes
    ----------
    target_quantile : float (default: 0.5)
        γ: the share of updates that should fall within the clipping norm.
    learning_rate : float (default: 0.2)
        η_C, the geometric step (the paper's recommended value).
    count_budget_share : float (default: 0.1)
        Share of the RDP budget spent on the count: σ_b = z / (2 sqrt(share)) and the
        update noise becomes z_Δ = (z^-2 - (2 σ_b)^-2)^-1/2 = z / sqrt(1 - share), so
        the pair of releases is exactly as private as one Gaussian with multiplier z
        (paper, Theorem 1).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_budget_share: float = 0.1

    def __post_init__(self) -> None:
        """Validate the parameters."""
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise ConfigError(f"adaptive clipping learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.count_budget_share < 1.0:
            raise ConfigError(f"count_budget_share must be in (0, 1), got {self.count_budget_share}")

    def count_noise_std(self, noise_multiplier: float) -> float:
        """σ_b for the noisy count of unclipped updates."""
        return noise_multiplier / (2.0 * math.sqrt(self.count_budget_share))

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """z_Δ: the multiplier left for the updates once the count has its share."""
        return noise_multiplier / math.sqrt(1.0 - self.count_budget_share)


class _ClippedFold:
    """Clip each incoming model's delta to ``C`` and fold it with weight 1 into ``inner``."""

    def __init__(self, inner: Any, reference: ModelState, clip_norm: float, *, clip: bool = True) -> None:
        self.inner = inner
        self.clip = clip
        self.reference = reference
        self.clip_norm = clip_norm
        self.unclipped = 0
        self.norms: list[float] = []

    @property
    def count(self) -> int:
        return int(self.inner.count)

    def add(self, site: SiteId, result: FitResult) -> None:
        keys = _float_keys(self.reference)
        delta = {
            k: np.asarray(result.state[k], dtype=np.float64) - np.asarray(self.reference[k], dtype=np.float64)
            for k in keys
        }
        # Distributed mode: the sites clipped and then added noise; clipping here would
        # shrink their noise, so the server only folds.
        clipped, norm = clip_l2(delta, self.clip_norm) if self.clip else (delta, l2_norm(delta))
        state = dict(result.state)
        for k in keys:
            state[k] = (self.reference[k].astype(np.float64) + clipped[k]).astype(self.reference[k].dtype)
        reported = result.metrics.get("dp.unclipped")
        within = norm <= self.clip_norm * (1 + 1e-6) if reported is None else reported >= 0.5
        self.unclipped += int(within)
        self.norms.append(norm)
        metrics = {k: v for k, v in result.metrics.items() if not k.startswith("dp.")}
        self.inner.add(site, FitResult(state=state, num_examples=1, metrics=metrics, extras=result.extras))

    def add_sum(self, sums: ModelState, total_weight: float, *, count: int, metrics: Metrics | None = None) -> None:
        """Fold a secure-aggregation sum (distributed mode: the sites clipped, noised and weighted 1).

        Central mode clips each update here, which a sum does not allow: it is refused.
        """
        if self.clip:
            raise ConfigError(
                "central client-level DP clips each update at the server; under secure aggregation use "
                "ClientDPMode.DISTRIBUTED (the sites clip and add their noise shares)"
            )
        if total_weight != count:
            raise ConfigError(f"distributed DP folds each site with weight 1: total weight {total_weight} != {count}")
        self.inner.add_sum(sums, total_weight, count=count, metrics=metrics)


class _NoisyMeanFold:
    """Proxy for a weighted-mean fold whose ``mean()`` gets Gaussian noise added."""

    def __init__(self, inner: Any, std_of_mean: float, rng: np.random.Generator) -> None:
        self._inner = inner
        self._std = std_of_mean
        self._rng = rng

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def mean(self) -> ModelState:
        out: ModelState = self._inner.mean()
        if self._std <= 0:
            return out
        noisy: ModelState = {}
        for k, v in out.items():
            if np.issubdtype(v.dtype, np.floating):
                noisy[k] = (v.astype(np.float64) + self._rng.normal(0.0, self._std, size=v.shape)).astype(v.dtype)
            else:
                noisy[k] = v
        return noisy


class ClientLevelDP:
    """Client-level DP around any weighted-sum strategy (composition, not a subclass).

    The wrapped strategy's fold must expose ``mean()`` (a weighted-mean fold such as
    FedAvg's); every update is folded with weight 1, so the noise std on the mean is
    ``z C / n`` for ``n`` folded sites (the sum carries N(0, (z C)^2)).

    Parameters
    ----------
    strategy : Strategy
        The strategy to make private (FedAvg, FedAdam...).
    noise_multiplier : float
        z, for the sum of the clipped updates; see :meth:`calibrate`.
    clip_norm : float
        Initial L2 bound of each update (fixed unless ``adaptive``).
    delta : float
        δ of the guarantee (sent to the sites for their ledgers).
    mode : ClientDPMode (default: CENTRAL)
        Who adds the noise.
    adaptive : AdaptiveClipping or None (default: None)
        Quantile-based clipping (central mode only).
    min_sites : int or None (default: None)
        Distributed mode: fewest noise shares in a sum; ``None`` = the sampled sites.
    secure_aggregation : bool (default: False)
        Distributed mode: tell sites the server only sees the sum.
    accountant : Accountant (default: RDP)
        Accountant the sites use for their ledgers.
    rng : np.random.Generator or None (default: None)
        Source of the server's noise; ``None`` seeds one from the OS CSPRNG.
    """

    #: Each update is clipped before it is averaged: never pre-folded where the sites run
    #: (set here, or attribute forwarding would report the wrapped strategy's flag).
    linear_fold: ClassVar[bool] = False

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clip_norm: float,
        delta: float,
        mode: ClientDPMode = ClientDPMode.CENTRAL,
        adaptive: AdaptiveClipping | None = None,
        min_sites: int | None = None,
        secure_aggregation: bool = False,
        accountant: Accountant = Accountant.RDP,
        rng: np.random.Generator | None = None,
    ) -> None:
        if adaptive is not None and mode is not ClientDPMode.CENTRAL:
            raise ConfigError("adaptive clipping needs central mode (the clipped-count bits are not noised by sites)")
        ClientDP(mode=mode, noise_multiplier=noise_multiplier, clip_norm=clip_norm, delta=delta)  # validates
        self.inner = strategy
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.delta = delta
        self.mode = mode
        self.adaptive = adaptive
        self.min_sites = min_sites
        self.secure_aggregation = secure_aggregation
        self.accountant = accountant
        self.rng = rng if rng is not None else noise_rng()
        self.name = f"{strategy.name}+client-dp"

    def __getattr__(self, name: str) -> Any:
        # Capability flags and attributes of the wrapped strategy (e.g. fit_config).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @staticmethod
    def calibrate(
        *, target_epsilon: float, delta: float, rounds: int, accountant: Accountant = Accountant.RDP
    ) -> float:
        """Return the z with which ``rounds`` rounds spend ``target_epsilon`` (no site-sampling amplification)."""
        from fedcare.privacy.accounting import calibrate_noise_multiplier

        return calibrate_noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sample_rate=1.0, steps=rounds, accountant=accountant
        )

    def _clip(self, state: ServerState) -> float:
        extra = state.extras.get(_EXTRA)
        if extra is None or "clip_norm" not in extra:
            return self.clip_norm
        return float(extra["clip_norm"][0])

    def init(self, model: ModelState) -> ServerState:
        """The wrapped strategy's initial state, plus the current clipping norm."""
        state = self.inner.init(model)
        clip_record: ModelState = {"clip_norm": np.array([self.clip_norm], dtype=np.float64)}
        extras = {**state.extras, _EXTRA: clip_record}
        return ServerState(model=state.model, extras=extras)

    def plan_for(self, state: ServerState, n_sites: int) -> ClientDP:
        """The client-level part of this round's privacy plan."""
        return ClientDP(
            mode=self.mode,
            noise_multiplier=self.noise_multiplier,
            clip_norm=self._clip(state),
            delta=self.delta,
            min_sites=max(1, self.min_sites or n_sites),
            secure_aggregation=self.secure_aggregation,
            report_unclipped=self.adaptive is not None,
            accountant=self.accountant,
        )

    def configure_fit(
        self,
        state: ServerState,
        rnd: RoundInfo,
        sites: Sequence[SiteId],
        rng: np.random.Generator,
    ) -> Mapping[SiteId, Payload]:
        """The wrapped strategy's instructions with this round's ``dp.*`` client keys added."""
        payloads = self.inner.configure_fit(state, rnd, sites, rng)
        keys = PrivacyPlan(client=self.plan_for(state, len(payloads))).to_config()
        return {
            site: Payload(arrays=p.arrays, config={**p.config, **keys}, metrics=p.metrics)
            for site, p in payloads.items()
        }

    def new_fold(self, state: ServerState, rnd: RoundInfo) -> _ClippedFold:
        """The wrapped fold, fed clipped updates with equal weights."""
        central = self.mode is ClientDPMode.CENTRAL
        return _ClippedFold(self.inner.new_fold(state, rnd), state.model, self._clip(state), clip=central)

    def finish_round(self, state: ServerState, fold: _ClippedFold) -> tuple[ServerState, Metrics]:
        """Add the central noise to the mean, finish the wrapped round, adapt ``C``."""
        n = max(fold.count, 1)
        clip = fold.clip_norm
        z = self.noise_multiplier
        if self.adaptive is not None:
            z = self.adaptive.update_noise_multiplier(z)
        std = z * clip / n if self.mode is ClientDPMode.CENTRAL else 0.0
        new_state, metrics = self.inner.finish_round(state, _NoisyMeanFold(fold.inner, std, self.rng))
        next_clip = clip
        if self.adaptive is not None:
            sigma_b = self.adaptive.count_noise_std(self.noise_multiplier)
            frac = (fold.unclipped + self.rng.normal(0.0, sigma_b)) / n
            next_clip = clip * math.exp(-self.adaptive.learning_rate * (frac - self.adaptive.target_quantile))
        metrics = {**metrics, "dp.clip_norm": clip, "dp.noise_std_of_mean": std}
        clip_record: ModelState = {"clip_norm": np.array([next_clip], dtype=np.float64)}
        extras = {**new_state.extras, _EXTRA: clip_record}
        return ServerState(model=new_state.model, extras=extras), metrics
