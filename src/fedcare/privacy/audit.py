"""Empirical privacy audit in one training run: canaries inserted at random, then guessed.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023
(https://arxiv.org/abs/2305.08846). ``m`` canaries are each included in the training
data independently with probability 1/2; after one run the auditor scores every canary
(here white-box: the model coordinate only that canary's gradient or update moves),
guesses "in" for the highest scores and "out" for the lowest, and counts the correct
guesses. Under (ε, δ)-DP the number of correct guesses out of ``r`` is dominated by
Binomial(r, e^ε / (1 + e^ε)) plus a δ term (their Theorem 3.1); the largest ε that the
observed count rejects at confidence ``1 - beta`` is an **empirical lower bound** on the
mechanism's true ε. An implementation whose bound exceeds what its accountant claims is
broken (noise missing, clipping not applied, a wrong sampling rate in the accounting).

The mechanisms audited are fedcare's own: :func:`fedcare.privacy.dpsgd.train_dpsgd`
(record level, Opacus) and :class:`fedcare.privacy.client_dp.ClientLevelDP` /
:func:`~fedcare.privacy.client_dp.privatize_update` (client level, central or
distributed noise). Canaries are Dirac vectors (one coordinate each, the paper's
gradient-space canaries), so a canary's score is its own coordinate of the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
from scipy import stats

from fedcare.errors import ConfigError
from fedcare.privacy.accounting import calibrate_noise_multiplier, epsilon_of
from fedcare.privacy.client_dp import ClientLevelDP, privatize_update
from fedcare.privacy.cost import Mechanism, PrivacyCost
from fedcare.privacy.dpsgd import noise_generator, train_dpsgd
from fedcare.privacy.plan import ClientDPMode
from fedcare.strategies.base import Strategy
from fedcare.strategies.fedavg import FedAvg
from fedcare.types import FitResult, RoundInfo, RunId, SiteId

__all__ = [
    "LEVELS",
    "AuditResult",
    "audit_mechanism",
    "audit_scores",
    "client_dp_canary_scores",
    "dpsgd_canary_scores",
    "epsilon_lower_bound",
    "p_value",
]

#: Total guesses tried (half "in" from the top scores, half "out" from the bottom), as
#: fractions of the canaries; the confidence is split over them (union bound).
GUESS_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of ``v`` or more correct guesses out of ``r`` under (ε, δ)-DP (their Theorem 3.1).

    ``m`` canaries, each included with probability 1/2. Vectorised form of the paper's
    reference code (Algorithm 1's p-value with the δ term ``2 m δ max_i P[v > B >= v - i] / i``).
    """
    if not 0 <= v <= r <= m:
        raise ConfigError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ConfigError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0 and delta > 0:
        i = np.arange(1, v + 1)
        partial = np.cumsum(stats.binom.pmf(v - i, r, q))  # P[v > B >= v - i]
        alpha = float(np.max(partial / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float = 0.05) -> float:
    """The largest ε rejected at confidence ``1 - beta`` by ``v`` correct guesses of ``r`` (0 if none)."""
    if not 0 < beta < 1:
        raise ConfigError(f"beta must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, high * 2
        if high > 1e3:
            return math.inf
    for _ in range(40):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < beta:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class AuditResult:
    """One audit's outcome.

    Attributes
    ----------
    canaries : int
        ``m``, each included with probability 1/2.
    guesses, correct : int
        The guesses (``r``) and correct guesses (``v``) of the best-scoring guess count.
    epsilon_lower : float
        Empirical lower bound on ε at confidence ``1 - beta`` (union bound over the guess counts tried).
    delta, beta : float
        δ of the guarantee audited, and the audit's error probability.
    """

    canaries: int
    guesses: int
    correct: int
    epsilon_lower: float
    delta: float
    beta: float

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)


def audit_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    beta: float = 0.05,
    fractions: Sequence[float] = GUESS_FRACTIONS,
) -> AuditResult:
    """Guess inclusion from ``scores`` (high = in) and bound ε from the correct guesses.

    For each guess count ``r = fraction * m`` (fixed in advance) the top ``r/2`` scores are
    guessed in and the bottom ``r/2`` out; each count is tested at ``beta / len(fractions)``
    so the best of them is still a valid bound at confidence ``1 - beta``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m == 0 or included.shape != scores.shape:
        raise ConfigError("audit needs one score and one inclusion bit per canary")
    # ties broken at random, so that a constant score guesses nothing better than chance
    order = np.lexsort((np.random.default_rng(0).random(m), scores))
    best = AuditResult(m, 0, 0, 0.0, delta, beta)
    for fraction in fractions:
        half = max(1, int(fraction * m) // 2)
        if 2 * half > m:
            half = m // 2
        out, into = order[:half], order[m - half :]
        v = int(included[into].sum() + (~included[out]).sum())
        eps = epsilon_lower_bound(m, 2 * half, v, delta=delta, beta=beta / len(fractions))
        if eps > best.epsilon_lower or best.guesses == 0:
            best = AuditResult(m, 2 * half, v, eps, delta, beta)
    return best


def dpsgd_canary_scores(
    included: np.ndarray,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    filler: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """Train a linear model with :func:`~fedcare.privacy.dpsgd.train_dpsgd` on the included canaries; score each.

    Canary ``i`` is a record whose gradient is ``-max_grad_norm`` times (after clipping)
    the unit vector of coordinate ``i`` (a linear loss, so it does not depend on the
    weights); ``filler`` ordinary records move other coordinates only. The score of
    canary ``i`` is weight ``i`` after training: it grows by ``lr C / B`` whenever the
    canary is sampled, and carries the mechanism's noise otherwise.
    """
    included = np.asarray(included, dtype=bool)
    m = len(included)
    width = m + 8
    rows = [np.eye(1, width, int(i))[0] * 100.0 * max_grad_norm for i in np.flatnonzero(included)]
    rng = np.random.default_rng(seed)
    for _ in range(filler):
        row = np.zeros(width)
        row[m:] = rng.normal(size=8)
        rows.append(row)
    x = torch.tensor(np.array(rows), dtype=torch.float32)
    y = torch.ones(len(rows))
    module = torch.nn.Linear(width, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    train_dpsgd(
        module,
        x,
        y,
        loss_fn=lambda out, target: -(out.squeeze(-1) * target).sum(),
        optimizer=optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        sample_rate=sample_rate,
        steps=steps,
        generator=noise_generator(seed),
    )
    weights: np.ndarray = module.weight.detach()[0, :m].numpy().astype(np.float64)
    return weights


def client_dp_canary_scores(
    included: np.ndarray,
    *,
    noise_multiplier: float,
    clip_norm: float,
    rounds: int,
    delta: float,
    mode: ClientDPMode = ClientDPMode.CENTRAL,
    filler: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """Run ``rounds`` of client-level DP FedAvg with the included canary sites; score each.

    Each included canary is a site whose update is a Dirac vector on its own coordinate,
    ten times longer than ``clip_norm`` (so clipping must apply); ``filler`` ordinary
    sites update other coordinates. Central mode: :class:`ClientLevelDP` clips and adds
    the noise to the mean; distributed mode: every site runs
    :func:`privatize_update` (clip + its noise share), the server only folds. The score
    of canary ``i`` sums over rounds ``n_t`` times the change of coordinate ``i`` of the
    global model (``n_t`` sites folded in round ``t``): ``C`` per round when it took part,
    plus the noise.
    """
    included = np.asarray(included, dtype=bool)
    m = len(included)
    width = m + 8
    rng = np.random.default_rng(seed)
    strategy = ClientLevelDP(
        cast(Strategy, FedAvg()),  # FedAvg's fold is the weighted-mean Fold the protocol names
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        delta=delta,
        mode=mode,
        rng=np.random.default_rng([seed, 1]),
    )
    state = strategy.init({"w": np.zeros(width, dtype=np.float64)})
    canaries = [int(i) for i in np.flatnonzero(included)]
    scores = np.zeros(m)
    site_rng = np.random.default_rng([seed, 2])
    for t in range(1, rounds + 1):
        reference = np.asarray(state.model["w"], dtype=np.float64)
        updates: dict[str, np.ndarray] = {}
        for i in canaries:
            step = np.zeros(width)
            step[i] = 10.0 * clip_norm
            updates[f"canary-{i}"] = reference + step
        for j in range(filler):
            step = np.zeros(width)
            step[m:] = rng.normal(size=8)
            updates[f"site-{j}"] = reference + step
        plan = strategy.plan_for(state, len(updates))
        fold = strategy.new_fold(state, RoundInfo(RunId("audit"), t, rounds))
        for site, local in updates.items():
            sent = {"w": local}
            if mode is ClientDPMode.DISTRIBUTED:
                sent, _ = privatize_update({"w": reference}, sent, plan, site_rng)
            fold.add(SiteId(site), FitResult(state=sent, num_examples=1))
        n = fold.count
        state, _ = strategy.finish_round(state, fold)
        scores += n * (np.asarray(state.model["w"], dtype=np.float64)[:m] - reference[:m])
    return scores


#: The mechanisms :func:`audit_mechanism` runs, by name.
LEVELS: dict[str, Mechanism] = {
    "record": Mechanism.DPSGD,
    "client-central": Mechanism.CLIENT_CENTRAL,
    "client-distributed": Mechanism.CLIENT_DISTRIBUTED,
}


def audit_mechanism(
    level: str,
    *,
    epsilon: float,
    delta: float = 1e-5,
    sample_rate: float = 1.0,
    steps: int = 4,
    canaries: int = 1000,
    seed: int | None = None,
) -> tuple[AuditResult, float, float]:
    """Calibrate ``level``'s noise to ``epsilon``, run it once on canaries and audit it.

    ``steps`` are DP-SGD steps (record level, Poisson rate ``sample_rate``) or rounds
    (client level, every site in every round). Returns the audit, the accountant's ε
    (Opacus RDP) and the noise multiplier used.
    """
    if level not in LEVELS:
        raise ConfigError(f"audit level must be one of {sorted(LEVELS)}, got {level!r}")
    if canaries < 10:
        raise ConfigError(f"an audit needs at least 10 canaries, got {canaries}")
    mechanism = LEVELS[level]
    q = sample_rate if mechanism is Mechanism.DPSGD else 1.0
    noise = calibrate_noise_multiplier(target_epsilon=epsilon, delta=delta, sample_rate=q, steps=steps)
    accounted = epsilon_of([PrivacyCost(mechanism, noise, q, steps)], delta=delta)
    rng = np.random.default_rng(seed)
    included = rng.random(canaries) < 0.5
    run_seed = int(rng.integers(2**62))
    if mechanism is Mechanism.DPSGD:
        scores = dpsgd_canary_scores(
            included, noise_multiplier=noise, max_grad_norm=1.0, sample_rate=q, steps=steps, seed=run_seed
        )
    else:
        mode = ClientDPMode.CENTRAL if mechanism is Mechanism.CLIENT_CENTRAL else ClientDPMode.DISTRIBUTED
        scores = client_dp_canary_scores(
            included, noise_multiplier=noise, clip_norm=1.0, rounds=steps, delta=delta, mode=mode, seed=run_seed
        )
    return audit_scores(scores, included, delta=delta), accounted, noise
