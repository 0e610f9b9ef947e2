"""Built-in real data sets shipped with the package (files plus licence/provenance)."""

from __future__ import annotations

from collections.abc import Callable

from fedcare.data.federated import FederatedDataset
from fedcare.errors import ConfigError

__all__ = ["BUILTIN_DATASETS", "load_builtin"]


def _heart() -> FederatedDataset:
    from fedcare.datasets.heart_disease import load_heart_disease

    return load_heart_disease()


def _tcga() -> FederatedDataset:
    from fedcare.datasets.tcga_brca import load_tcga_brca

    return load_tcga_brca()


def _pneumonia() -> FederatedDataset:
    from fedcare.datasets.pneumonia import load_pneumonia

    return load_pneumonia()


#: name -> loader of each built-in data set.
BUILTIN_DATASETS: dict[str, Callable[[], FederatedDataset]] = {"heart-disease": _heart, "tcga-brca": _tcga}
BUILTIN_DATASETS["pneumonia"] = _pneumonia


def load_builtin(name: str) -> FederatedDataset:
    """Load a built-in data set by name."""
    try:
        loader = BUILTIN_DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; built in: {', '.join(sorted(BUILTIN_DATASETS))}") from None
    return loader()
