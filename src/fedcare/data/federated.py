"""FederatedDataset: per-site splits plus the pooled view a benchmark compares with.

The rows and the train/test split are identical in every view; only preprocessing
statistics differ:

* ``sites``: what federated training uses, preprocessed with statistics the sites
  computed together (counts and sums only; see :class:`fedcare.data.tabular.Moments`).
* ``local_view``: each site's own statistics, what a site training alone can use
  (and FLamby's per-centre normalisation).
* ``pooled_view``: statistics of all training rows in one place, the "Pooled"
  reference a real federation cannot have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedcare.task import ArrayDataset, SiteData
from fedcare.types import SiteId

__all__ = ["FederatedDataset", "TaskKind", "concat"]

TaskKind = Literal["binary", "survival"]


def concat(parts: list[ArrayDataset]) -> ArrayDataset:
    """Stack several datasets row-wise."""
    return ArrayDataset(x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]))


@dataclass(frozen=True)
class FederatedDataset:
    """A data set split across sites, ready for a task.

    Attributes
    ----------
    name : str
        Short name (``"heart-disease"``).
    kind : TaskKind
        ``"binary"`` classification or ``"survival"``.
    sites : Mapping[SiteId, SiteData]
        Each site's train/test split as federated training sees it.
    local_view : Mapping[SiteId, SiteData]
        The same rows preprocessed with each site's own statistics (Local baseline).
    pooled_view : Mapping[SiteId, SiteData]
        The same rows preprocessed with pooled statistics (Pooled baseline).
    feature_names : tuple[str, ...]
        Column names of ``x``.
    display_names : Mapping[SiteId, str]
        Human-readable site names for reports.
    provenance : str
        Where the data comes from and its licence (one line).
    groups : Mapping[SiteId, Mapping[str, numpy.ndarray]]
        Per site, raw attributes of the **test** rows (one value per row, in row order)
        for subgroup metrics, e.g. ``{"sex": [...], "age_band": [...]}``. They stay at
        the site like the rows; empty when the data set has none.
    preprocessing : Mapping[str, Any]
        How a raw row becomes an input of ``sites`` (features, categories, combined
        mean/std; :func:`fedcare.data.tabular.preprocessing_spec`); recorded with a run
        so that a release bundle can score new patients. Empty when not tabular.
    """

    name: str
    kind: TaskKind
    sites: Mapping[SiteId, SiteData]
    local_view: Mapping[SiteId, SiteData]
    pooled_view: Mapping[SiteId, SiteData]
    feature_names: tuple[str, ...]
    display_names: Mapping[SiteId, str] = field(default_factory=dict)
    provenance: str = ""
    groups: Mapping[SiteId, Mapping[str, np.ndarray]] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return len(self.feature_names)

    def site_ids(self) -> list[SiteId]:
        """Site ids in their declared order."""
        return list(self.sites)
