"""Data connectors, schema check, partitioners, cohort statistics and the FederatedDataset container.

The public names are imported on first use (PEP 562): reading a study or site file
(``fedcare.data.config``, ``fedcare.data.schema``) must not pay for every connector
(FHIR models, pydicom, scikit-learn) before a configuration error can be reported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "SiteConfig": "fedcare.data.config",
    "SourceKind": "fedcare.data.config",
    "load_site_config": "fedcare.data.config",
    "parse_site_config": "fedcare.data.config",
    "LoadedSite": "fedcare.data.connect",
    "check_site": "fedcare.data.connect",
    "federated_images": "fedcare.data.connect",
    "federated_tabular": "fedcare.data.connect",
    "load_site": "fedcare.data.connect",
    "FederatedDataset": "fedcare.data.federated",
    "concat": "fedcare.data.federated",
    "dirichlet_label_partition": "fedcare.data.partition",
    "natural_partition": "fedcare.data.partition",
    "quantity_skew_partition": "fedcare.data.partition",
    "CheckReport": "fedcare.data.schema",
    "ColumnSpec": "fedcare.data.schema",
    "ColumnType": "fedcare.data.schema",
    "Problem": "fedcare.data.schema",
    "StudySchema": "fedcare.data.schema",
    "check_frame": "fedcare.data.check",
    "CohortStats": "fedcare.data.stats",
    "SiteAggregates": "fedcare.data.stats",
    "StatsSpec": "fedcare.data.stats",
    "combine": "fedcare.data.stats",
    "site_aggregates": "fedcare.data.stats",
    "Standardizer": "fedcare.data.tabular",
    "TabularRecipe": "fedcare.data.tabular",
    "prepare_sites": "fedcare.data.tabular",
    "split_indices": "fedcare.data.tabular",
}

if TYPE_CHECKING:
    from fedcare.data.check import check_frame
    from fedcare.data.config import SiteConfig, SourceKind, load_site_config, parse_site_config
    from fedcare.data.connect import LoadedSite, check_site, federated_images, federated_tabular, load_site
    from fedcare.data.federated import FederatedDataset, concat
    from fedcare.data.partition import dirichlet_label_partition, natural_partition, quantity_skew_partition
    from fedcare.data.schema import CheckReport, ColumnSpec, ColumnType, Problem, StudySchema
    from fedcare.data.stats import CohortStats, SiteAggregates, StatsSpec, combine, site_aggregates
    from fedcare.data.tabular import Standardizer, TabularRecipe, prepare_sites, split_indices


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedcare.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckReport",
    "CohortStats",
    "ColumnSpec",
    "ColumnType",
    "FederatedDataset",
    "LoadedSite",
    "Problem",
    "SiteAggregates",
    "SiteConfig",
    "SourceKind",
    "Standardizer",
    "StatsSpec",
    "StudySchema",
    "TabularRecipe",
    "check_frame",
    "check_site",
    "combine",
    "concat",
    "dirichlet_label_partition",
    "federated_images",
    "federated_tabular",
    "load_site",
    "load_site_config",
    "natural_partition",
    "parse_site_config",
    "prepare_sites",
    "quantity_skew_partition",
    "site_aggregates",
    "split_indices",
]
