"""Built-in demos: which data set, task and training recipe ``fedcare demo`` runs.

Each entry is a complete, documented recipe; other data sets add their own entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedcare.data.federated import FederatedDataset
from fedcare.datasets import load_builtin
from fedcare.errors import ConfigError
from fedcare.experiment import ExperimentConfig
from fedcare.task import Task
from fedcare.tasks import make_task

__all__ = ["DEMOS", "DemoRecipe", "get_demo"]


@dataclass(frozen=True)
class DemoRecipe:
    """How to run one built-in demo."""

    dataset: str
    make_task: Callable[[FederatedDataset], Task]
    config: ExperimentConfig
    description: str

    def load(self) -> FederatedDataset:
        """Load the demo's data set."""
        return load_builtin(self.dataset)


DEMOS: dict[str, DemoRecipe] = {
    "heart-disease": DemoRecipe(
        dataset="heart-disease",
        make_task=lambda d: make_task("logreg", n_features=d.n_features),
        config=ExperimentConfig(
            rounds=20,
            seed=0,
            strategy="fedavg",
            # One local epoch per round, plain SGD; FedAvg reaches Pooled in ~20 rounds.
            fit_config={"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "local_epochs": 1},
            # FLamby's Local/Pooled recipe: Adam, lr 0.001, batch 4, 50 epochs.
            baseline_config={"optimizer": "adam", "lr": 0.001, "batch_size": 4, "local_epochs": 50},
        ),
        description="UCI heart disease, 4 hospitals (FLamby Fed-Heart-Disease), logistic regression",
    ),
    "tcga-brca": DemoRecipe(
        dataset="tcga-brca",
        make_task=lambda d: make_task("cox", n_features=d.n_features),
        config=ExperimentConfig(
            rounds=20,
            seed=0,
            strategy="fedavg",
            # One local epoch per round, SGD lr 0.1, batch 8 (FLamby's FedAvg recipe, 20 rounds instead of 5).
            fit_config={"optimizer": "sgd", "lr": 0.1, "batch_size": 8, "local_epochs": 1},
            # FLamby's Local/Pooled recipe: Adam, lr 0.1, batch 8, 30 epochs.
            baseline_config={"optimizer": "adam", "lr": 0.1, "batch_size": 8, "local_epochs": 30},
        ),
        description="TCGA-BRCA breast-cancer survival, 6 regions (FLamby Fed-TCGA-BRCA), Cox model, C-index",
    ),
    "pneumonia": DemoRecipe(
        dataset="pneumonia",
        # One torch thread per site: sites train in parallel threads (see docs/pneumonia.md).
        make_task=lambda d: make_task("cnn", channels=16, norm="batch", dropout=0.2, num_threads=1),
        config=ExperimentConfig(
            rounds=15,
            seed=0,
            strategy="fedavg",
            # One local epoch of Adam per round; class-balanced loss and augmentation (cnn task defaults).
            fit_config={"optimizer": "adam", "lr": 0.001, "batch_size": 64, "local_epochs": 1},
            # Local and Pooled: 8 epochs of Adam with a cosine learning-rate decay.
            baseline_config={
                "optimizer": "adam",
                "lr": 0.002,
                "batch_size": 64,
                "local_epochs": 8,
                "lr_schedule": "cosine",
            },
        ),
        description="chest X-ray pneumonia (PneumoniaMNIST 28x28), 3 simulated hospitals, small CNN",
    ),
}


def get_demo(name: str) -> DemoRecipe:
    """Return the demo recipe called ``name``."""
    try:
        return DEMOS[name]
    except KeyError:
        raise ConfigError(f"unknown demo dataset {name!r}; available: {', '.join(sorted(DEMOS))}") from None
