"""SitePrivacyGuard: the site's side of DP, between an instruction and its reply.

Fail-closed, in this order, for every fit instruction:

1. :meth:`admit` parses the round's :class:`PrivacyPlan`, refuses it when the site has
   a budget and the round has no DP guarantee (ε = ∞), relies on noise the site does
   not accept (server-added, or seeded by the coordinator), or would take the site past
   its budget; otherwise it works out this site's cost (its own calibrated DP-SGD noise
   multiplier) and the resolved ``dp.*`` keys the task trains with.
2. The task trains (DP-SGD when the plan says so).
3. :meth:`release` checks that the task really ran the DP-SGD it was given, applies
   client-level clipping (and the site's noise share), strips what DP does not cover
   (training metrics, extra records), and charges the ledger *before* the update is
   returned. If the charge fails, nothing leaves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcare.errors import FedcareError, PolicyError
from fedcare.privacy.accounting import PrivacyCost
from fedcare.privacy.client_dp import noise_rng, privatize_update
from fedcare.privacy.ledger import MemoryLedgerBackend, PrivacyLedger
from fedcare.privacy.plan import ClientDPMode, PrivacyPlan, record_site_cost
from fedcare.types import ConfigValue, FitResult, ModelState

__all__ = ["Admission", "SitePrivacyGuard", "noise_seed"]

log = logging.getLogger(__name__)


def noise_seed(plan: PrivacyPlan, config: Mapping[str, ConfigValue], salt: int) -> int | None:
    """Seed for this round's DP noise: ``None`` (OS CSPRNG) unless the plan asks for seeded noise."""
    seed = config.get("seed")
    seeded = plan.record is not None and plan.record.seeded_noise
    if not seeded or not isinstance(seed, int) or isinstance(seed, bool):
        return None
    return int(np.random.SeedSequence([seed, salt]).generate_state(1, dtype=np.uint32)[0])


@dataclass(frozen=True)
class Admission:
    """An admitted round: its plan, this site's costs, and the config the task gets."""

    plan: PrivacyPlan
    costs: tuple[PrivacyCost, ...]
    task_config: dict[str, ConfigValue]
    details: dict[str, Any] = field(default_factory=dict)
    #: This site's resolved DP-SGD (its calibrated noise multiplier and steps), if any.
    dpsgd: PrivacyCost | None = None


class SitePrivacyGuard:
    """Enforce a site's privacy budget and apply its side of DP.

    Parameters
    ----------
    site : str
        This site's id.
    max_epsilon : float or None
        The budget (``None``: none; the site still honours plans and records them).
    delta : float
        δ of the budget and the ledger.
    trust_central_noise, allow_seeded_noise : bool
        Policy switches (see :class:`~fedcare.runtime.policy.SitePolicy`).
    ledger : PrivacyLedger or None
        Where charges go. A site with a budget and no ledger gets an in-memory one
        (and a warning: it does not survive a restart).
    """

    def __init__(
        self,
        *,
        site: str,
        max_epsilon: float | None,
        delta: float,
        trust_central_noise: bool = False,
        allow_seeded_noise: bool = False,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        if ledger is None and max_epsilon is not None:
            log.warning("site %s has a privacy budget but no persistent ledger: using an in-memory one", site)
            ledger = PrivacyLedger(MemoryLedgerBackend(), site=site, delta=delta)
        self.site = site
        self.max_epsilon = max_epsilon
        self.delta = delta
        self.trust_central_noise = trust_central_noise
        self.allow_seeded_noise = allow_seeded_noise
        self.ledger = ledger

    @property
    def has_budget(self) -> bool:
        """True when the site caps its ε."""
        return self.max_epsilon is not None

    def _refuse(self, why: str) -> PolicyError:
        return PolicyError(f"refused: {why}")

    def admit(self, config: Mapping[str, ConfigValue], *, n_train: int, plan: PrivacyPlan | None = None) -> Admission:
        """Check the round's plan against the budget; return the costs and task config.

        ``plan`` is the round's plan already parsed at the wire boundary (the site
        pipeline's :class:`~fedcare.runtime.pipeline.FitRequest`); ``None`` parses it
        from ``config``.

        Raises
        ------
        PolicyError
            A refusal; its message starts with ``"refused"`` (recorded as such).
        ConfigError
            The plan is malformed.
        """
        plan = plan if plan is not None else PrivacyPlan.from_config(config)
        budget = f"max_epsilon={self.max_epsilon:g}, delta={self.delta:g}" if self.has_budget else ""
        if self.has_budget and not plan.is_private:
            raise self._refuse(
                f"site {self.site} has a privacy budget ({budget}) and this round carries no DP guarantee "
                "(epsilon = inf)"
            )
        if self.has_budget and plan.client is not None:
            if plan.client.mode is ClientDPMode.CENTRAL and not self.trust_central_noise:
                raise self._refuse(
                    f"site {self.site} does not trust server-added noise (central client-level DP); "
                    "use record-level or distributed DP, or set trust_central_noise"
                )
        if self.has_budget and plan.record is not None and plan.record.seeded_noise and not self.allow_seeded_noise:
            raise self._refuse(f"site {self.site} does not accept DP noise seeded by the coordinator")
        costs: list[PrivacyCost] = []
        task_config = dict(config)
        details: dict[str, Any] = {}
        dpsgd: PrivacyCost | None = None
        if plan.record is not None:
            cost = dpsgd = record_site_cost(plan.record, n_train)
            costs.append(cost)
            task_config.update(
                {
                    "dp.noise_multiplier": cost.noise_multiplier,
                    "dp.sample_rate": cost.sample_rate,
                    "dp.steps": cost.steps,
                    "dp.max_grad_norm": plan.record.max_grad_norm,
                    "dp.secure_mode": plan.record.secure_mode,
                    "dp.noise_seed": -1 if (s := noise_seed(plan, config, 1)) is None else s,
                }
            )
            details.update(
                {
                    "max_grad_norm": plan.record.max_grad_norm,
                    "target_epsilon": plan.record.epsilon,
                    "target_delta": plan.record.delta,
                    "planned_rounds": plan.record.rounds,
                    "n_train": n_train,
                    "noise_seeded": plan.record.seeded_noise,
                    "secure_mode": plan.record.secure_mode,
                }
            )
        if plan.client is not None:
            costs.append(plan.client.site_cost())
            details.update(
                {
                    "clip_norm": plan.client.clip_norm,
                    "client_mode": plan.client.mode.value,
                    "client_noise_multiplier": plan.client.noise_multiplier,
                    "min_sites": plan.client.min_sites,
                    "secure_aggregation": plan.client.secure_aggregation,
                    "noise_added_by": "server" if plan.client.mode is ClientDPMode.CENTRAL else "sites",
                }
            )
        if self.has_budget and self.ledger is not None:
            after = self.ledger.projected(costs)
            if after > self.max_epsilon:  # type: ignore[operator]
                raise self._refuse(
                    f"this round would bring site {self.site} to epsilon={after:.3f} (delta={self.delta:g}), "
                    f"above its budget max_epsilon={self.max_epsilon:g} (spent {self.ledger.spent():.3f})"
                )
        return Admission(plan=plan, costs=tuple(costs), task_config=task_config, details=details, dpsgd=dpsgd)

    def charge_release(
        self, cost: PrivacyCost, *, run_id: str, round_no: int, details: dict[str, Any] | None = None
    ) -> float | None:
        """Charge a DP release other than training (e.g. cohort statistics) to the same ledger.

        Called before the release leaves; returns the study's ε after it (``None`` when
        the site keeps no ledger: no budget, nothing to account).

        Raises
        ------
        BudgetExceededError
            The release would take the site past ``max_epsilon``; nothing is written
            and the release must not leave (a refusal).
        """
        if self.ledger is None:
            return None
        what = f"this {(details or {}).get('query', 'DP')} release"
        entries = self.ledger.charge(
            run_id=run_id, round_no=round_no, costs=[cost], details=details, max_epsilon=self.max_epsilon, what=what
        )
        return entries[-1].epsilon_total

    def release(
        self,
        admission: Admission,
        *,
        reference: ModelState,
        result: FitResult,
        run_id: str,
        round_no: int,
        seed: ConfigValue | None = None,
    ) -> FitResult:
        """Apply client-level DP, check DP-SGD ran, charge the ledger; return what may leave."""
        plan = admission.plan
        if not plan.is_private:
            return result
        if result.extras:
            raise FedcareError(
                f"site {self.site}: the task returned extra records ({', '.join(sorted(result.extras))}) "
                "that DP does not cover; update withheld"
            )
        metrics: dict[str, float] = {}
        state = result.state
        if admission.dpsgd is not None:
            want_steps = admission.dpsgd.steps
            want_sigma = admission.dpsgd.noise_multiplier
            got_steps = result.metrics.get("dp.steps")
            got_sigma = result.metrics.get("dp.noise_multiplier")
            if got_steps != want_steps or got_sigma is None or not math.isclose(got_sigma, want_sigma, rel_tol=1e-9):
                raise FedcareError(
                    f"site {self.site}: task did not run the DP-SGD it was given "
                    f"(steps {got_steps} vs {want_steps}, noise multiplier {got_sigma} vs {want_sigma:.4f}); "
                    "update withheld"
                )
            metrics.update({k: v for k, v in result.metrics.items() if k.startswith("dp.")})
        if plan.client is not None:
            plan_seed = noise_seed(plan, {"seed": seed} if seed is not None else {}, 2)
            state, norm = privatize_update(reference, state, plan.client, noise_rng(plan_seed))
            if plan.client.report_unclipped:
                metrics["dp.unclipped"] = float(norm <= plan.client.clip_norm)
        if self.ledger is not None:
            entries = self.ledger.charge(
                run_id=run_id,
                round_no=round_no,
                costs=admission.costs,
                details=admission.details,
                max_epsilon=self.max_epsilon,
            )
            metrics["dp.epsilon_total"] = entries[-1].epsilon_total
        return FitResult(state=state, num_examples=result.num_examples, metrics=metrics)
