"""The built-in demos as recipes for benchmarks and scripts: each is a shipped study file.

The study files in ``fedcare/studies/`` are the source of truth (``fedcare demo`` and
``fedcare simulate --study NAME`` run them); a :class:`DemoRecipe` is the same study
as the data set, task factory and :class:`~fedcare.experiment.ExperimentConfig` that
:func:`fedcare.experiment.run_experiment` takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedcare.build.run import build_task
from fedcare.data.federated import FederatedDataset
from fedcare.datasets import load_builtin
from fedcare.errors import ConfigError
from fedcare.experiment import ExperimentConfig
from fedcare.simulate import experiment_config
from fedcare.study.builtin import BUILTIN_STUDIES, resolve_study
from fedcare.study.spec import StudySpec
from fedcare.task import Task

__all__ = ["DEMOS", "DemoRecipe", "get_demo"]


@dataclass(frozen=True)
class DemoRecipe:
    """How to run one built-in demo (from its shipped study)."""

    dataset: str
    make_task: Callable[[FederatedDataset], Task]
    config: ExperimentConfig
    description: str
    study: StudySpec | None = None

    def load(self) -> FederatedDataset:
        """Load the demo's data set."""
        return load_builtin(self.dataset)


def _recipe(name: str) -> DemoRecipe:
    study = resolve_study(name)
    assert study.data.dataset is not None
    return DemoRecipe(
        dataset=study.data.dataset,
        make_task=lambda d: build_task(study, n_features=d.n_features),
        config=experiment_config(study),
        description=study.description,
        study=study,
    )


#: name -> recipe of each shipped demo study.
DEMOS: dict[str, DemoRecipe] = {name: _recipe(name) for name in BUILTIN_STUDIES}


def get_demo(name: str) -> DemoRecipe:
    """Return the demo recipe called ``name``."""
    try:
        return DEMOS[name]
    except KeyError:
        raise ConfigError(f"unknown demo dataset {name!r}; available: {', '.join(sorted(DEMOS))}") from None
