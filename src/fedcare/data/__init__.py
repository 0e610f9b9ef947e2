"""Data connectors, schema check, partitioners, cohort statistics and the FederatedDataset container."""

from fedcare.data.config import SiteConfig, SourceKind, load_site_config, parse_site_config
from fedcare.data.connect import LoadedSite, check_site, federated_images, federated_tabular, load_site
from fedcare.data.federated import FederatedDataset, concat
from fedcare.data.partition import dirichlet_label_partition, natural_partition, quantity_skew_partition
from fedcare.data.schema import CheckReport, ColumnSpec, ColumnType, Problem, StudySchema, check_frame
from fedcare.data.stats import CohortStats, SiteAggregates, StatsSpec, combine, site_aggregates
from fedcare.data.tabular import Standardizer, TabularRecipe, prepare_sites, split_indices

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
