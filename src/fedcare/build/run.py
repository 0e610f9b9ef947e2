"""The run builder: one study file → task, strategy, privacy wrappers, fit workflow, Coordinator.

Every entry point that runs a study — ``fedcare demo``, ``simulate``, ``strategies run``,
``up`` and ``server`` — turns it into a run through :func:`build_run` and
:func:`make_coordinator`, so a rehearsal on a laptop and a deployment across hospitals
run the same strategy, the same DP plan and the same secure aggregation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcare.compression import Compression
from fedcare.data.moments_query import query_moments
from fedcare.data.tabular import Standardizer
from fedcare.errors import ConfigError
from fedcare.he import OpenFheEngine
from fedcare.personal.site import local_keys, shared_part
from fedcare.privacy.ledger import LedgerBackend, MemoryLedgerBackend, PrivacyLedger
from fedcare.privacy.setup import PrivacySettings, PrivateRun, prepare_private_run
from fedcare.protocols import Recorder, RoundReport, RunSpec
from fedcare.runtime.coordinator import Coordinator, FitWorkflow
from fedcare.runtime.exchange import Exchange
from fedcare.runtime.policy import SitePolicy
from fedcare.secure.ckks import CkksParams, CkksWorkflow
from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.p2p import PeerToPeerFit
from fedcare.secure.workflow import SecAggPlusWorkflow
from fedcare.strategies.base import Strategy
from fedcare.strategies.registry import make_strategy
from fedcare.study.prep_stats import n_encoded_features
from fedcare.study.spec import StudySpec
from fedcare.task import Task, task_hash
from fedcare.tasks import BUILTIN_TASKS, make_task
from fedcare.transport.base import Channel
from fedcare.types import ConfigValue, ModelState, RunId, SiteId

__all__ = [
    "RunPlan",
    "build_run",
    "build_task",
    "ckks_params",
    "combine_statistics",
    "make_coordinator",
    "protection_of",
    "run_spec",
]


def build_task(study: StudySpec, *, n_features: int | None = None) -> Task:
    """The study's task; ``n_features`` (from the schema or data) fills a task parameter of that name."""
    params: dict[str, Any] = dict(study.task_params)
    cls = BUILTIN_TASKS.get(study.task)
    try:
        accepts = cls is not None and "n_features" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts and "n_features" not in params:
        if n_features is None:
            n_features = n_encoded_features(study)
        params["n_features"] = n_features
    try:
        return make_task(study.task, **params)
    except ConfigError as exc:
        raise ConfigError(f"{study.where}: task: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{study.where}: task.params: {exc}") from None


def fit_config_for(study: StudySpec, task: Task) -> dict[str, ConfigValue]:
    """The fit config sent each round, checked against the task and the personalisation asked for."""
    method = study.personalization.method
    keys = local_keys(task)
    if method in ("fedbn", "fedper") and not keys:
        raise ConfigError(
            f"{study.where}: personalization {method!r} needs a task that keeps entries local "
            f"(e.g. task.name = 'mlp' with params.local = 'norm' or 'head'); task {task.name!r} shares everything"
        )
    known = getattr(task, "fit_config_keys", None)
    if known is not None:
        unknown = sorted(
            k for k in set(study.fit) - set(known) - {"ditto_lambda", "ditto_epochs"} if not k.startswith("compression")
        )
        if unknown:
            raise ConfigError(
                f"{study.where}: unknown key(s) {unknown} in [fit]; task {task.name!r} takes {sorted(known)}"
            )
    out = dict(study.fit)
    if method == "ditto":
        out.update(study.personalization.config)
    if study.compression:
        c = study.compression
        codec = Compression(
            codec=c.get("codec", "none"), fraction=c.get("fraction", 0.01), error_feedback=c.get("error_feedback")
        )
        out.update(codec.fit_config())
    return out


@dataclass
class RunPlan:
    """Everything a study run needs besides its sites and its transport.

    ``policies`` and ``ledgers`` are the simulation's stand-ins for sites that bring no
    site file (a deployed site brings its own policy and ledger).
    """

    study: StudySpec
    task: Task
    task_hash: str
    strategy: Strategy
    fit_config: dict[str, ConfigValue]
    fit_workflow: FitWorkflow | None
    privacy: PrivacySettings | None = None
    policies: dict[SiteId, SitePolicy] = field(default_factory=dict)
    ledgers: dict[SiteId, PrivacyLedger] = field(default_factory=dict)

    @property
    def setting_name(self) -> str:
        """The federated setting's key in summary.json (strategy, ``+method`` when personalised)."""
        method = self.study.personalization.method
        return self.study.strategy if method == "none" else f"{self.study.strategy}+{method}"

    def describe(self) -> dict[str, Any]:
        """The run's configuration as recorded in the store."""
        return {
            "study": self.study.name,
            "study_hash": self.study.hash,
            "fit_config": dict(self.fit_config),
            "personalization": self.study.personalization.method,
            "personal_config": dict(self.study.personalization.config),
            "secure_aggregation": self.fit_workflow is not None,
            "protection": protection_of(self),
            "study_spec": self.study.describe(),
        }

    def initial_model(self) -> ModelState:
        """The model the run starts from (seeded by the study; local entries stay at the sites)."""
        return shared_part(self.task, self.task.init_model(np.random.default_rng(self.study.seed)))


def build_run(
    study: StudySpec,
    task: Task,
    *,
    sites: Sequence[SiteId] = (),
    ledger_backend: LedgerBackend | None = None,
    experiment: str = "",
) -> RunPlan:
    """Strategy, DP wrappers and fit workflow for ``study`` (the one place they are assembled)."""
    fit_config = fit_config_for(study, task)

    def strategy_for(config: Mapping[str, ConfigValue]) -> Strategy:
        try:
            return make_strategy(study.strategy, fit_config=dict(config), **dict(study.strategy_params))
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{study.where}: strategy: {exc}") from None

    private: PrivateRun | None = None
    settings: PrivacySettings | None = None
    if study.privacy:
        try:
            settings = PrivacySettings.from_mapping(study.privacy)
        except ConfigError as exc:
            raise ConfigError(f"{study.where}: privacy: {exc}") from None
        if settings.is_private or settings.site_max_epsilon is not None:
            private = prepare_private_run(
                settings,
                make_strategy=strategy_for,
                fit_config=fit_config,
                rounds=study.rounds,
                seed=study.seed,
                sites=list(sites),
                backend=ledger_backend or MemoryLedgerBackend(),
                study=experiment or study.name,
            )
    strategy = private.strategy if private is not None else strategy_for(fit_config)
    workflow: FitWorkflow | None = None
    sa = study.secure_aggregation
    if sa.relay is not None and not sa.is_p2p:
        raise ConfigError(f"{study.where}: secure_aggregation.relay applies only to mode = 'p2p'")
    if sa.enabled:
        if settings is not None and settings.level in ("client", "client-distributed"):
            raise ConfigError(
                f"{study.where}: client-level DP with secure_aggregation is not available from a study file yet; "
                "use record-level DP (privacy.level = 'record') under secure aggregation"
            )
        if sa.is_p2p:
            if study.federation.fraction_fit < 1.0:
                raise ConfigError(
                    f"{study.where}: secure_aggregation.mode = 'p2p' needs federation.fraction_fit = 1.0: every site "
                    "keeps its own copy of the model, and a site left out of a round would fall out of sync"
                )
            workflow = PeerToPeerFit(
                codec=FixedPointCodec(clip_range=sa.clip, bits=sa.bits),
                threshold=sa.threshold,
                relay=sa.relay or "all",
                seed=study.seed if sa.seeded else None,
            )
        elif sa.is_ckks:
            workflow = CkksWorkflow(
                backend=OpenFheEngine(ckks_params(study)),
                params=ckks_params(study),
                encrypted=sa.encrypt,
                verify_sum=bool(sa.verify_sum),
            )
        else:
            workflow = SecAggPlusWorkflow(
                codec=FixedPointCodec(clip_range=sa.clip, bits=sa.bits),
                degree=sa.neighbours,
                threshold=sa.threshold,
                seed=study.seed if sa.seeded else None,
            )
    return RunPlan(
        study=study,
        task=task,
        task_hash=task_hash(task),
        strategy=strategy,
        fit_config=dict(private.fit_config) if private is not None else fit_config,
        fit_workflow=workflow,
        privacy=settings if private is not None else None,
        policies=dict(private.policies) if private is not None else {},
        ledgers=dict(private.ledgers) if private is not None else {},
    )


def ckks_params(study: StudySpec) -> CkksParams:
    """The study's CKKS parameters (``[secure_aggregation] scale_bits / first_mod_bits``), validated."""
    sa = study.secure_aggregation
    given = {k: v for k, v in (("scale_bits", sa.scale_bits), ("first_mod_bits", sa.first_mod_bits)) if v is not None}
    try:
        return CkksParams(**given)
    except ConfigError as exc:
        raise ConfigError(f"{study.where}: secure_aggregation: {exc}") from None


def protection_of(plan: RunPlan) -> str:
    """What protects the updates on the wire: ``ckks-threshold``, ``p2p-secagg+``, ``secagg+`` or ``none``."""
    if isinstance(plan.fit_workflow, CkksWorkflow):
        return CkksWorkflow.protection
    if isinstance(plan.fit_workflow, PeerToPeerFit):
        return PeerToPeerFit.protection
    return "secagg+" if isinstance(plan.fit_workflow, SecAggPlusWorkflow) else "none"


def make_coordinator(
    plan: RunPlan,
    channel: Channel,
    *,
    recorder: Recorder | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
) -> Coordinator:
    """The Coordinator that runs ``plan`` over ``channel`` (in process, Ray or gRPC alike)."""
    fed = plan.study.federation
    return Coordinator(
        channel=channel,
        strategy=plan.strategy,
        task_name=plan.task.name,
        task_hash=plan.task_hash,
        rounds=fed.rounds,
        seed=plan.study.seed,
        fraction_fit=fed.fraction_fit,
        min_sites=fed.min_sites,
        round_timeout_s=fed.round_timeout_s,
        evaluate=fed.evaluate,
        recorder=recorder,
        on_round=on_round,
        fit_workflow=plan.fit_workflow,
    )


def run_spec(plan: RunPlan, run_id: RunId, *, dataset: str = "", experiment: str = "", name: str = "") -> RunSpec:
    """How the run is recorded in the store."""
    return RunSpec(
        run_id=run_id,
        name=name or plan.setting_name,
        dataset=dataset or (plan.study.data.dataset or plan.study.name),
        strategy=plan.strategy.name,
        task=plan.task.name,
        task_hash=plan.task_hash,
        seed=plan.study.seed,
        rounds=plan.study.rounds,
        config=plan.describe(),
        experiment=experiment,
    )


def combine_statistics(plan: RunPlan, exchange: Exchange, *, run_id: RunId) -> Standardizer | None:
    """Ask the sites for their Moments through the Coordinator's exchange and combine them.

    Recorded in the store and audited like every exchange. Returns None for built-in data
    sets (prepared by their loader), for ``normalization = "site"``, and for images (a
    schema with no feature column: nothing to standardise, so no pixel moments leave a site).
    """
    data = plan.study.data
    if data.schema is None or data.normalization != "federated" or n_encoded_features(plan.study) == 0:
        return None
    combined, _per_site, failures = query_moments(
        exchange,
        run_id=run_id,
        task_name=plan.task.name,
        task_hash=plan.task_hash,
        min_sites=plan.study.federation.min_sites,
    )
    if failures:
        detail = "; ".join(f"{s}: {why}" for s, why in sorted(failures.items()))
        raise ConfigError(f"combined statistics: {len(failures)} site(s) did not answer ({detail})")
    return combined.standardizer()
