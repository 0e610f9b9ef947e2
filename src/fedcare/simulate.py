"""``fedcare simulate`` / ``fedcare demo``: a study rehearsed in one process.

The federated setting runs the very sites a deployment would (each built from its site
file by :func:`fedcare.build.site.build_site`, behind its gate, preparing its own data
with combined statistics) over an in-process channel; Local and Pooled are the reference
settings a real federation cannot have, computed from the same rows and split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fedcare.build.prep import labels_of
from fedcare.build.run import build_task
from fedcare.build.site import SiteInputs, load_site_data
from fedcare.data.connect import federated_images
from fedcare.data.federated import FederatedDataset
from fedcare.data.tabular import prepare_sites
from fedcare.datasets import load_builtin
from fedcare.errors import ConfigError
from fedcare.experiment import ExperimentConfig, Progress, run_experiment
from fedcare.protocols import Recorder
from fedcare.study.prep_stats import recipe_of
from fedcare.study.site import SiteSpec
from fedcare.study.spec import SimulationSpec, StudySpec
from fedcare.task import ArrayDataset, Task
from fedcare.types import SiteId

__all__ = ["experiment_config", "placed", "simulate_study", "study_dataset"]


def placed(cfg: ExperimentConfig, where: SimulationSpec) -> ExperimentConfig:
    """``cfg`` with its sites run where ``where`` (a checked ``[simulation]``) says."""
    return replace(
        cfg,
        backend=where.backend,
        ray_address=where.ray_address or "",
        ray_actors=where.ray_actors,
        cpus_per_site=where.cpus_per_site,
        memory_per_site=where.memory_per_site,
    )


def experiment_config(study: StudySpec, *, label: str = "") -> ExperimentConfig:
    """The Local/Pooled/federated comparison's settings for ``study``."""
    return ExperimentConfig(
        rounds=study.rounds,
        seed=study.seed,
        strategy=study.strategy,
        strategy_params=dict(study.strategy_params),
        fit_config=dict(study.fit),
        baseline_config=dict(study.baseline),
        fraction_fit=study.federation.fraction_fit,
        min_sites=study.federation.min_sites,
        privacy=dict(study.privacy),
        personalization=study.personalization.method,
        personal_config=dict(study.personalization.config),
        label=label,
    )


def study_dataset(
    study: StudySpec, specs: Mapping[str, SiteSpec], inputs: Mapping[str, SiteInputs]
) -> FederatedDataset:
    """The sites' data under the three views (federated, local, pooled) for the comparison and report."""
    if not specs:
        if study.data.dataset is None:
            raise ConfigError(f"{study.where}: no sites: give --site FILE for each site (or a built-in data set)")
        return load_builtin(study.data.dataset)
    kinds = {spec.kind for spec in specs.values()}
    if kinds == {"builtin"}:
        datasets = {str(spec.options["dataset"]) for spec in specs.values()}
        if len(datasets) != 1:
            raise ConfigError(f"site files name different built-in data sets: {sorted(datasets)}")
        full = load_builtin(datasets.pop())
        keep = [SiteId(str(spec.options.get("site", s))) for s, spec in specs.items()]
        return FederatedDataset(
            name=full.name,
            kind=full.kind,
            sites={s: full.sites[s] for s in keep},
            local_view={s: full.local_view[s] for s in keep},
            pooled_view={s: full.pooled_view[s] for s in keep},
            feature_names=full.feature_names,
            display_names={s: full.display_names.get(s, s) for s in keep},
            provenance=full.provenance,
            groups={s: full.groups[s] for s in keep if s in full.groups},
        )
    if "builtin" in kinds:
        raise ConfigError("a simulation mixes built-in and connector sites; give one kind")
    streamed = [spec for spec in specs.values() if spec.options.get("stream")]
    if streamed:
        raise ConfigError(
            f"{streamed[0].where}: data.stream = true: fedcare simulate holds every site's images in memory "
            "(its Local and Pooled baselines pool them); run streamed sites with fedcare up or fedcare node, "
            "or set stream = false to simulate"
        )
    loaded = {SiteId(s): i.loaded for s, i in inputs.items()}
    if any(v is None for v in loaded.values()):
        raise ConfigError("internal: connector sites without loaded data")
    if any(v.images is not None for v in loaded.values() if v is not None):
        return federated_images(
            loaded, test_fraction=study.data.test_fraction, seed=study.data.split_seed, name=study.name
        )  # type: ignore[arg-type]
    recipe = recipe_of(study)
    frames = {s: v.frame for s, v in loaded.items() if v is not None}
    labels = {s: labels_of(v, study.data.positive) for s, v in loaded.items() if v is not None}
    prepared = prepare_sites(frames, labels, recipe)
    return FederatedDataset(
        name=study.name,
        kind="binary",
        sites=prepared.federated if study.data.normalization == "federated" else prepared.local,
        local_view=prepared.local,
        pooled_view=prepared.pooled,
        feature_names=recipe.encoded_names(),
        display_names={SiteId(s): spec.display_name for s, spec in specs.items()},
        provenance="; ".join(str(spec.path) for spec in specs.values()),
        # how a new patient's row becomes a model input: shipped in a release bundle
        preprocessing={**prepared.preprocessing, **_outcome(study)},
    )


def _outcome(study: StudySpec) -> dict[str, Any]:
    """The outcome column and its positive values, for the model card and ``fedcare validate``."""
    assert study.data.schema is not None
    out: dict[str, Any] = {"target": study.data.schema.target}
    if study.data.positive is not None:
        out["positive"] = list(study.data.positive)
    return out


def check_training(study: StudySpec, task: Task, dataset: FederatedDataset) -> None:
    """Run the task once on a few training rows with [fit] and [baseline] before anything is recorded.

    A wrong type or value (``batch_size = 0``, ``lr = "fast"``) is then a one-line error
    naming the study file and the table, not a traceback minutes into training.
    """
    first = dataset.sites[dataset.site_ids()[0]].train
    rows = ArrayDataset(first.x[:8], first.y[:8])
    for section, config in (("fit", study.fit), ("baseline", study.baseline)):
        try:
            task.fit(task.init_model(np.random.default_rng(0)), rows, dict(config), np.random.default_rng(0))
        except ConfigError as exc:
            raise ConfigError(f"{study.where}: [{section}]: {exc}") from None
        except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
            raise ConfigError(f"{study.where}: [{section}]: the task rejects this config ({exc})") from None


def load_study_sites(study: StudySpec, specs: Sequence[SiteSpec]) -> tuple[dict[str, SiteSpec], dict[str, SiteInputs]]:
    """Each site file read and checked against the study (every problem before any training)."""
    by_id: dict[str, SiteSpec] = {}
    for spec in specs:
        if spec.site_id in by_id:
            raise ConfigError(f"site id {spec.site_id!r} appears twice: {by_id[spec.site_id].where} and {spec.where}")
        refusal = spec.policy_for(study)
        if refusal is not None:
            raise ConfigError(f"{spec.where}: {refusal}")
        by_id[spec.site_id] = spec
    return by_id, {s: load_site_data(spec, study) for s, spec in by_id.items()}


def simulate_study(
    study: StudySpec,
    specs: Sequence[SiteSpec] = (),
    *,
    recorder: Recorder | None = None,
    experiment_id: str | None = None,
    progress: Progress | None = None,
    settings: tuple[str, ...] = ("local", "pooled", "federated"),
    task: Task | None = None,
    backend: str | None = None,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    cpus_per_site: float | None = None,
    memory_per_site: int | str | None = None,
) -> dict[str, Any]:
    """Run ``study`` over its sites in one process; return the summary (README's output contract).

    Sites run where the study's ``[simulation]`` says; each argument given here (a
    command-line option) replaces the file's setting.
    """
    where = study.simulation.merged(
        backend=backend,
        ray_address=ray_address,
        ray_actors=ray_actors,
        cpus_per_site=cpus_per_site,
        memory_per_site=memory_per_site,
    )
    by_id, inputs = load_study_sites(study, specs)
    dataset = study_dataset(study, by_id, inputs)
    first = next(iter(inputs.values()), None)
    task = task or build_task(study, n_features=first.n_features if first else None)
    files = {SiteId(s): (spec, inputs[s]) for s, spec in by_id.items()} if by_id else None
    check_training(study, task, dataset)
    cfg = placed(experiment_config(study), where)
    summary = run_experiment(
        dataset,
        task,
        cfg,
        recorder=recorder,
        experiment_id=experiment_id,
        progress=progress,
        settings=settings,
        study=study,
        site_files=files,
    )
    return summary
