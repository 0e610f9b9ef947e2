"""Compare Local, Pooled and federated training on one data set (the demo's engine).

* **Local**: each site trains alone on its own training split (its own statistics).
* **Pooled**: one model on all training rows in one place (the reference a real
  federation cannot have), with pooled preprocessing statistics.
* **Federated** (``fedavg`` or another strategy): the real Coordinator over
  in-process sites.

Every setting is evaluated on each site's test split (``per_site``), their unweighted
mean (``site_mean``: FLamby's figure value) and the union of the test splits
(``pooled_test``). For ``local``, ``per_site`` is each site's own model on its own test
set and ``pooled_test`` is the mean over the local models of their pooled-test metrics.

**Personalised** settings (``ExperimentConfig.personalization``: ``fedbn``, ``fedper``,
``ditto``, ``finetune``) end with one model per site; ``per_site`` is each site's
personalised model on its own test set and ``pooled_test`` scores the union of the test
sets, each row by its own site's model. Every setting also reports, per site,
``calibration`` (binary tasks: reliability curve, Brier, ECE) and ``subgroups``
(metrics by sex / age band where the data set has them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedcare.build.federated import run_federated, site_channel
from fedcare.build.run import build_run, run_spec
from fedcare.build.site import SiteInputs, builtin_site_spec, site_gate
from fedcare.data.federated import FederatedDataset, concat
from fedcare.errors import ConfigError
from fedcare.evaluation import calibration_report, subgroup_metrics
from fedcare.evaluation.uncertainty import LEVEL, meta_of, metric_intervals
from fedcare.personal.site import local_keys, model_for
from fedcare.privacy.ledger import MemoryLedgerBackend
from fedcare.privacy.setup import ledger_summary
from fedcare.protocols import NullRecorder, Recorder, RoundReport, RunSpec
from fedcare.store.ledger import SqlLedgerBackend
from fedcare.store.sql import SqlStore
from fedcare.study.site import SiteSpec
from fedcare.study.spec import StudySpec, study_from_experiment
from fedcare.study.spec import setting_name as plan_setting_name
from fedcare.task import SiteData, Task, task_hash
from fedcare.types import ConfigValue, Metrics, ModelState, RunId, SiteId, new_run_id

__all__ = ["ExperimentConfig", "new_run_id", "run_experiment", "evaluate_setting"]

#: Callback for progress: (setting name, round report or None when a baseline finishes).
Progress = Callable[[str, RoundReport | None], None]


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines an experiment's training (recorded in summary.json).

    Attributes
    ----------
    rounds : int
        Federated rounds.
    seed : int
        Model initialisation, batching and sampling seed.
    strategy : str
        Registered strategy name for the federated setting.
    strategy_params : Mapping[str, Any]
        Keyword arguments of the strategy (besides ``fit_config``).
    fit_config : Mapping[str, ConfigValue]
        Local training config sent to sites each round.
    baseline_config : Mapping[str, ConfigValue]
        Training config of the Local and Pooled baselines (``local_epochs`` = epochs).
    fraction_fit : float
        Share of sites sampled per round.
    min_sites : int
        Minimum valid updates per round.
    privacy : Mapping[str, Any]
        DP options of the federated setting (:class:`fedcare.privacy.setup.PrivacySettings`
        fields); empty means non-private. Local and Pooled stay non-private references.
    personalization : str
        ``"none"``, ``"fedbn"`` / ``"fedper"`` (the task keeps entries local: see
        :mod:`fedcare.tasks.mlp`), ``"ditto"`` (``personal_config`` holds
        ``ditto_lambda`` and optionally ``ditto_epochs``, sent with the fit config) or
        ``"finetune"`` (after the last round each site trains the global model on its
        own data with ``personal_config`` as fit config).
    personal_config : Mapping[str, ConfigValue]
        Parameters of the personalisation (see above).
    label : str
        Name of the federated setting in the results (default: the strategy name, with
        ``+<personalization>`` appended).
    backend : str
        Where simulated sites run: ``"inprocess"`` (threads) or ``"ray"`` (Ray actors).
    ray_address : str
        Ray cluster to join with ``backend="ray"``; empty starts a local Ray.
    ray_actors, cpus_per_site, memory_per_site : int, float, int or None
        With ``backend="ray"``: the actor pool's size, the CPUs a site uses while it
        trains and the bytes of memory it holds (``None``: RayChannel's defaults).
    """

    rounds: int = 20
    seed: int = 0
    strategy: str = "fedavg"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    fit_config: Mapping[str, ConfigValue] = field(default_factory=dict)
    baseline_config: Mapping[str, ConfigValue] = field(default_factory=dict)
    fraction_fit: float = 1.0
    min_sites: int = 1
    privacy: Mapping[str, Any] = field(default_factory=dict)
    personalization: str = "none"
    personal_config: Mapping[str, ConfigValue] = field(default_factory=dict)
    label: str = ""
    backend: str = "inprocess"
    ray_address: str = ""
    ray_actors: int | None = None
    cpus_per_site: float | None = None
    memory_per_site: int | None = None

    def setting_name(self) -> str:
        """The federated setting's key in the results."""
        if self.label:
            return self.label
        return self.strategy if self.personalization == "none" else f"{self.strategy}+{self.personalization}"


PERSONALIZATIONS = ("none", "fedbn", "fedper", "ditto", "finetune")


def _metrics(task: Task, model: ModelState, data: Any) -> Metrics:
    result = task.evaluate(model, data)
    out = dict(result.metrics)
    out["n_test"] = float(result.num_examples)
    return out


def _mean(rows: list[Metrics]) -> Metrics:
    keys = sorted({k for r in rows for k in r if k != "n_test"})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def _scores(kind: str, y: Any, pred: Any) -> Metrics:
    from fedcare.tasks.cox import survival_metrics
    from fedcare.tasks.logreg import binary_metrics

    return survival_metrics(y, pred) if kind == "survival" else binary_metrics(y, pred)


def evaluate_setting(
    task: Task,
    models: Mapping[SiteId, ModelState],
    view: Mapping[SiteId, SiteData],
    *,
    local: bool,
    personal: bool = False,
    kind: str | None = None,
    groups: Mapping[SiteId, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score a setting: ``models`` has one entry per site (local, personal) or one shared model.

    With ``kind`` (the data set's ``"binary"`` or ``"survival"``), also report each
    site's ``calibration`` (binary only) and ``subgroups`` (when ``groups`` has the
    site's test-row attributes), both for the model that site uses.
    """
    pooled_test = concat([d.test for d in view.values()])
    per_site: dict[str, Metrics] = {}
    for site, data in view.items():
        model = models[site]
        per_site[site] = _metrics(task, model, data.test)
    if personal:
        if kind is None:
            raise ConfigError("evaluate_setting: personal=True needs the data set's kind")
        preds = np.concatenate([task.predict(models[s], view[s].test.x) for s in view])
        pooled = _scores(kind, pooled_test.y, preds)
    elif local:
        pooled = _mean([_metrics(task, models[s], pooled_test) for s in view])
    else:
        pooled = _metrics(task, next(iter(models.values())), pooled_test)
        pooled.pop("n_test", None)
    out: dict[str, Any] = {"per_site": per_site, "site_mean": _mean(list(per_site.values())), "pooled_test": pooled}
    if kind is not None:
        calibration: dict[str, Any] = {}
        subgroups: dict[str, Any] = {}
        uncertainty: dict[str, Any] = {"level": LEVEL, "per_site": {}}
        for i, (site, data) in enumerate(view.items()):
            pred = task.predict(models[site], data.test.x)
            uncertainty["per_site"][site] = metric_intervals(data.test.y, pred, kind=kind, seed=i)
            if kind == "binary":
                calibration[site] = calibration_report(data.test.y, pred)
            site_groups = (groups or {}).get(site)
            if site_groups:
                subgroups[site] = subgroup_metrics(data.test.y, pred, site_groups, kind=kind)
        if calibration:
            out["calibration"] = calibration
        if subgroups:
            out["subgroups"] = subgroups
        if not local:  # the union of the test sets, each row scored by the model its site uses
            pooled_pred = preds if personal else task.predict(next(iter(models.values())), pooled_test.x)
            uncertainty["pooled_test"] = metric_intervals(pooled_test.y, pooled_pred, kind=kind, seed=len(view))
        names = sorted({m for ivs in uncertainty["per_site"].values() for m in ivs})
        uncertainty["meta"] = {
            m: meta_of([ivs[m] for ivs in uncertainty["per_site"].values() if m in ivs]) for m in names
        }
        out["uncertainty"] = uncertainty
    return out


def baseline_workers(task: Task) -> int:
    """Baseline trainings run at once: cores / the task's torch threads, or 1 when it declares none.

    A task that leaves torch's intra-op pool at its default already uses every core per
    training; running several would oversubscribe them.
    """
    threads = getattr(task, "num_threads", None)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // threads)


def _train_alone(task: Task, data: SiteData, cfg: ExperimentConfig, salt: int) -> ModelState:
    rng = np.random.default_rng([cfg.seed, salt])
    model = task.init_model(np.random.default_rng(cfg.seed))
    return task.fit(model, data.train, cfg.baseline_config, rng).state


def run_experiment(
    dataset: FederatedDataset,
    task: Task,
    cfg: ExperimentConfig,
    *,
    recorder: Recorder | None = None,
    experiment_id: str | None = None,
    progress: Progress | None = None,
    settings: tuple[str, ...] = ("local", "pooled", "federated"),
    study: StudySpec | None = None,
    site_files: Mapping[SiteId, tuple[SiteSpec, SiteInputs]] | None = None,
) -> dict[str, Any]:
    """Run the requested settings and return the summary (see README's output contract).

    The federated setting is built by the run builder (:func:`fedcare.build.run.build_run`)
    from ``study`` (by default the study ``cfg`` describes) and runs over each site's gate
    (:func:`fedcare.build.site.site_gate`): built from its site file and data when
    ``site_files`` gives them, else an in-process site holding ``dataset.sites``.
    """
    recorder = recorder or NullRecorder()
    exp = experiment_id or new_run_id()
    digest = task_hash(task)
    results: dict[str, Any] = {}
    final_models: dict[str, Mapping[SiteId, ModelState]] = {}
    sites = dataset.site_ids()
    privacy_summary: dict[str, Any] | None = None
    context = {
        "provenance": dataset.provenance,
        "sites": {s: dataset.display_names.get(s, s) for s in sites},
        "task_params": dict(task.params()),
        "config": _jsonable(asdict(cfg)),
        "preprocessing": dict(dataset.preprocessing),
    }
    if study is not None:  # a study file's run: its name, content hash and file
        context["study"] = {"name": study.name, "hash": study.hash, "file": str(study.path) if study.path else None}

    def baseline(name: str, models: Mapping[SiteId, ModelState], view: Mapping[SiteId, SiteData], local: bool) -> None:
        run_id = RunId(f"{exp}-{name}")
        recorder.start_run(
            RunSpec(
                run_id=run_id,
                name=name,
                dataset=dataset.name,
                strategy=name,
                task=task.name,
                task_hash=digest,
                seed=cfg.seed,
                rounds=0,
                config=dict(cfg.baseline_config),
                experiment=exp,
            )
        )
        results[name] = evaluate_setting(task, models, view, local=local, kind=dataset.kind, groups=dataset.groups)
        _record_final(recorder, run_id, results[name], context)
        recorder.finish_run(run_id, status="completed")
        final_models[name] = models
        if progress is not None:
            progress(name, None)

    # The baselines' trainings are independent (each its own seed): they run side by side,
    # one per core when the task trains on a declared number of torch threads, and are
    # recorded in the usual order. Each model is the one a sequential run gives.
    with ThreadPoolExecutor(max_workers=baseline_workers(task), thread_name_prefix="fedcare-baseline") as pool:
        pooled_job = None
        if "pooled" in settings:  # the longest job first
            view = dataset.pooled_view
            pooled_data = SiteData(concat([view[s].train for s in sites]), concat([view[s].test for s in sites]))
            pooled_job = pool.submit(_train_alone, task, pooled_data, cfg, len(sites))
        local_jobs = {}
        if "local" in settings:
            local_jobs = {
                s: pool.submit(_train_alone, task, dataset.local_view[s], cfg, i) for i, s in enumerate(sites)
            }
        if local_jobs:
            baseline("local", {s: job.result() for s, job in local_jobs.items()}, dataset.local_view, True)
        if pooled_job is not None:
            baseline("pooled", dict.fromkeys(sites, pooled_job.result()), dataset.pooled_view, False)
    if "federated" in settings:
        study = study or study_from_experiment(cfg, dataset.name)
        name = cfg.label or plan_setting_name(study)
        if name in ("local", "pooled"):
            raise ConfigError(f"strategy name {name!r} clashes with a baseline setting")
        run_id = RunId(f"{exp}-{name}")
        if cfg.backend != "inprocess" and (cfg.privacy or cfg.personalization != "none" or local_keys(task)):
            raise ConfigError(
                f"backend {cfg.backend!r} runs sites in other processes: privacy ledgers and personalised "
                "models stay there, so run DP or personalisation with the in-process backend"
            )
        ledgers = SqlLedgerBackend(recorder) if isinstance(recorder, SqlStore) else MemoryLedgerBackend()
        plan = build_run(study, task, sites=sites, ledger_backend=ledgers, experiment=exp)
        gates = {}
        for s in sites:
            spec, inputs = site_files[s] if site_files else (None, SiteInputs(dataset.sites[s]))
            gates[s] = site_gate(
                spec or builtin_site_spec(dataset.name, s, dataset.display_names.get(s, s)),
                study,
                inputs=inputs,
                task=task,
                ledger=plan.ledgers.get(s),
                policy=None if spec is not None else plan.policies.get(s),
            )
        channel = site_channel(
            gates,
            backend=cfg.backend,
            ray_address=cfg.ray_address or None,
            ray_actors=cfg.ray_actors,
            cpus_per_site=cfg.cpus_per_site,
            memory_per_site=cfg.memory_per_site,
        )
        result = run_federated(
            plan,
            channel,
            run_id=run_id,
            recorder=recorder,
            spec=run_spec(plan, run_id, dataset=dataset.name, experiment=exp, name=name),
            on_round=(lambda r: progress(name, r)) if progress else None,
        )
        views = {s: gates[s].node.data for s in sites}
        personal = study.personalization.method != "none" or bool(local_keys(task))
        if personal:
            models = _personal_models(task, {s: gates[s].node for s in sites}, run_id, result.state.model, cfg)
        else:
            models = dict.fromkeys(sites, result.state.model)
        results[name] = evaluate_setting(
            task, models, views, local=False, personal=personal, kind=dataset.kind, groups=dataset.groups
        )
        if plan.privacy is not None:
            privacy_summary = ledger_summary(plan.ledgers, run_id, plan.privacy)
        results[name]["history"] = [
            {
                "round": r.round_no,
                "fit": dict(r.fit_metrics),
                "eval": dict(r.eval_metrics),
                "per_site": {s: dict(m) for s, m in r.site_eval.items()},
                "failures": dict(r.failures),
                "duration_s": r.duration_s,
            }
            for r in result.rounds
        ]
        _record_final(recorder, run_id, results[name], context)
        final_models[name] = models
    out = {
        "experiment": exp,
        "dataset": dataset.name,
        "provenance": dataset.provenance,
        "sites": {s: dataset.display_names.get(s, s) for s in sites},
        "seed": cfg.seed,
        "task": {"name": task.name, "hash": digest, "params": context["task_params"]},
        "config": context["config"],
        "settings": results,
    }
    if privacy_summary is not None:
        out["privacy"] = privacy_summary
    if "study" in context:
        out["study"] = context["study"]
    return out


def _personal_models(
    task: Task, nodes: Mapping[SiteId, Any], run_id: RunId, global_model: ModelState, cfg: ExperimentConfig
) -> dict[SiteId, ModelState]:
    """The model each site ends with (computed at the site; in simulation we can read it)."""
    models: dict[SiteId, ModelState] = {}
    for i, (site, node) in enumerate(nodes.items()):
        model = model_for(task, global_model, node.site_state.get(run_id, {}))
        if cfg.personalization == "finetune":
            rng = np.random.default_rng([cfg.seed, 7919, i])
            model = task.fit(model, node.data.train, cfg.personal_config, rng).state
        models[site] = model
    return models


def _record_final(recorder: Recorder, run_id: RunId, result: Mapping[str, Any], context: Mapping[str, Any]) -> None:
    """Record what a report needs beyond the rounds: final per-site metrics, the rest as results."""
    writer = getattr(recorder, "record_site_metrics", None)
    if writer is not None:
        writer(run_id, 0, "test", {SiteId(s): m for s, m in result["per_site"].items()})
    recorder.record_result(run_id, "context", context)
    evaluation = {k: v for k, v in result.items() if k not in ("per_site", "site_mean", "history")}
    recorder.record_result(run_id, "evaluation", evaluation)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
