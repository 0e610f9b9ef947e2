"""Data connectors, preprocessing and the FederatedDataset container."""

from fedcare.data.federated import FederatedDataset, concat
from fedcare.data.tabular import Standardizer, TabularRecipe, prepare_sites, split_indices

__all__ = [
    "FederatedDataset",
    "Standardizer",
    "TabularRecipe",
    "concat",
    "prepare_sites",
    "split_indices",
]
