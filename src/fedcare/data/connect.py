"""From a site's configuration to a checked dataset: the one entry point for every connector.

:func:`check_site` reads a site's files with the connector its config names, checks the
result against the study schema and returns the loaded data together with the
:class:`~fedcare.data.schema.CheckReport` of every problem found. :func:`load_site` does
the same and raises one :class:`~fedcare.errors.DataError` listing them all. Neither
writes anything: sources are opened read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedcare.data.arrays import read_medmnist
from fedcare.data.check import check_frame
from fedcare.data.config import SiteConfig, SourceKind
from fedcare.data.dicom import DEFAULT_SIZE, read_dicom_images
from fedcare.data.federated import FederatedDataset
from fedcare.data.fhir import read_bundles
from fedcare.data.schema import CheckReport, ColumnType
from fedcare.data.table import DEFAULT_NA, read_csv, read_csv_checked, read_parquet
from fedcare.data.tabular import prepare_sites, split_indices
from fedcare.errors import ConfigError, DataError
from fedcare.task import ArrayDataset, SiteData
from fedcare.types import SiteId

__all__ = ["LoadedSite", "check_site", "federated_images", "federated_tabular", "load_site"]


@dataclass(frozen=True)
class LoadedSite:
    """A site's data after its connector and the schema check.

    Attributes
    ----------
    config : SiteConfig
        Where it came from.
    frame : pandas.DataFrame
        The checked table: the schema's columns, typed (one row per record, patient or image).
    raw : pandas.DataFrame
        The connector's table before the check (ids, organisation, split, file names);
        for CSV, which is checked as it is read, the file's columns the schema does not
        declare (as categoricals), row-aligned with ``frame``.
    images : numpy.ndarray or None
        ``(n, c, h, w)`` float32 in ``[0, 1]`` aligned with ``frame`` rows (image sources).
    report : CheckReport
        Every problem found.
    """

    config: SiteConfig
    frame: pd.DataFrame
    raw: pd.DataFrame
    images: np.ndarray | None
    report: CheckReport

    @property
    def target(self) -> np.ndarray:
        """The target as float64: a category's code index (0, 1, ...), a boolean as 0/1, a number as is."""
        spec = self.config.schema.column(self.config.schema.target)
        y = self.frame[spec.name]
        if spec.type is ColumnType.CATEGORY:
            index = {code: float(i) for i, code in enumerate(spec.codes or ())}
            return y.map(index).to_numpy(dtype=np.float64)
        return y.to_numpy(dtype=np.float64)

    def site_data(self, *, test_fraction: float = 0.25, seed: int = 0) -> SiteData:
        """Train/test :class:`SiteData` for a task.

        Image sources give ``x = images`` and integer labels; MedMNIST files keep their own
        train/test splits (``val`` rows are left out). Tables are one-hot encoded with the
        schema's categories, imputed and standardised with this site's training statistics
        (use :func:`federated_tabular` for statistics combined across sites).
        """
        self.report.raise_if_problems(f"site {self.config.site_id}")
        y = self.target
        if self.images is not None:
            labels = y.astype(np.int64)
            if "split" in self.raw.columns:
                split = self.raw["split"].to_numpy()
                tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
            else:
                tr, te = split_indices(labels, test_fraction=test_fraction, seed=seed)
            return SiteData(ArrayDataset(self.images[tr], labels[tr]), ArrayDataset(self.images[te], labels[te]))
        prepared = federated_tabular({self.config.site_id: self}, test_fraction=test_fraction, seed=seed)
        return prepared.local_view[self.config.site_id]


def _text(config: SiteConfig, name: str, default: str) -> str:
    value = config.option(name, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"[source] {name} must be a non-empty string, got {value!r:.80}")
    return value


def _texts(config: SiteConfig, name: str, default: list[str]) -> list[str]:
    value = config.option(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[source] {name} must be a list of strings, got {value!r:.80}")
    return value


def _size(config: SiteConfig) -> tuple[int, int]:
    size = config.option("size", list(DEFAULT_SIZE))
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ConfigError(f"[source] size must be [rows, columns] of positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _row_names(config: SiteConfig, raw: pd.DataFrame) -> str | list[str]:
    """Bundle files (FHIR) and image files (DICOM) name their rows in problems; tables number them."""
    if config.kind is SourceKind.FHIR:
        return [f"{b} (Patient {p})" for b, p in zip(raw["bundle"], raw["patient_id"], strict=True)]
    if config.kind is SourceKind.DICOM:
        return [str(f) for f in raw[_text(config, "file_column", "file")]]
    return "row"


def check_site(config: SiteConfig) -> LoadedSite:
    """Read a site's files with its connector and check them against the study schema.

    Every problem (unreadable file, FHIR validation error, missing column, wrong type,
    out-of-range value, unknown code, undecodable DICOM) is collected in the returned
    report; nothing is raised for data problems and nothing is written.
    """
    report = CheckReport()
    schema = config.schema
    images: np.ndarray | None = None
    raw: pd.DataFrame | None
    frame: pd.DataFrame | None = None
    source = config.path.name
    if config.kind is SourceKind.CSV:  # read and checked in chunks: memory holds the typed table, not the text
        checked = read_csv_checked(
            config.path,
            schema,
            report,
            delimiter=_text(config, "delimiter", ","),
            na_values=_texts(config, "na_values", list(DEFAULT_NA)),
        )
        frame, raw = checked if checked is not None else (None, None)
    elif config.kind is SourceKind.PARQUET:
        raw = read_parquet(config.path, report)
    elif config.kind is SourceKind.FHIR:
        assert config.fhir is not None
        raw = read_bundles(config.path, config.fhir, report, needs=frozenset(schema.names))
    elif config.kind is SourceKind.DICOM:
        labels_opt = config.option("labels", None)
        if not isinstance(labels_opt, str):
            raise ConfigError("[source] kind = 'dicom' needs labels = '<label table CSV>'")
        labels_path = config.resolve(labels_opt)
        table = read_csv(labels_path, report)
        source = labels_path.name
        if table is None:
            raw = None
        else:
            window = config.option("window", None)
            if window is not None and not (
                isinstance(window, list)
                and len(window) == 2
                and all(isinstance(w, int | float) and not isinstance(w, bool) and np.isfinite(w) for w in window)
                and window[1] > 0
            ):
                raise ConfigError(f"[source] window must be [center, width > 0], got {window!r:.80}")
            images, used = read_dicom_images(
                config.path,
                table,
                report,
                file_column=_text(config, "file_column", "file"),
                size=_size(config),
                window=window,
            )
            raw = table[used].reset_index(drop=True)
    else:
        images_all, raw = read_medmnist(config.path, report, target=schema.target)
        images = images_all if len(raw) else None
    if raw is None:
        raw = pd.DataFrame(columns=list(schema.names))
        frame = pd.DataFrame(columns=list(schema.names))
    elif frame is None:
        names = _row_names(config, raw)
        frame = check_frame(raw, schema, source=source, report=report, row_label=names)
    return LoadedSite(config=config, frame=frame, raw=raw.reset_index(drop=True), images=images, report=report)


def load_site(config: SiteConfig) -> LoadedSite:
    """Like :func:`check_site`, but raise one :class:`DataError` listing every problem."""
    loaded = check_site(config)
    loaded.report.raise_if_problems(f"site {config.site_id} ({config.path})")
    return loaded


def federated_tabular(
    sites: Mapping[SiteId, LoadedSite], *, test_fraction: float = 0.25, seed: int = 0
) -> FederatedDataset:
    """Several sites' checked tables as a :class:`FederatedDataset` (tabular sources).

    Preprocessing uses :func:`fedcare.data.tabular.prepare_sites`: per-site seeded split,
    one-hot encoding with the schema's categories, training-mean imputation and
    standardisation with statistics combined from the sites' counts and sums.
    """
    if not sites:
        raise DataError("no sites to combine")
    schemas = {s.config.schema for s in sites.values()}
    if len(schemas) != 1:
        raise DataError("sites declare different study schemas; they must share one")
    schema = next(iter(schemas))
    for site, loaded in sites.items():
        loaded.report.raise_if_problems(f"site {site}")
        if loaded.images is not None:
            raise DataError(f"site {site} holds images; federated_tabular combines tables only")
    recipe = schema.recipe(test_fraction=test_fraction, seed=seed)
    frames = {site: loaded.frame for site, loaded in sites.items()}
    labels = {site: loaded.target for site, loaded in sites.items()}
    prepared = prepare_sites(frames, labels, recipe)
    return FederatedDataset(
        name="site-tables",
        kind="binary",
        sites=prepared.federated,
        local_view=prepared.local,
        pooled_view=prepared.pooled,
        feature_names=recipe.encoded_names(),
        display_names={site: loaded.config.display_name for site, loaded in sites.items()},
        provenance="; ".join(str(loaded.config.path) for loaded in sites.values()),
    )


def federated_images(
    sites: Mapping[SiteId, LoadedSite], *, test_fraction: float = 0.25, seed: int = 0, name: str = "site-images"
) -> FederatedDataset:
    """Several sites' checked images as a :class:`FederatedDataset` (DICOM or npz sources).

    Images are already normalised to ``[0, 1]`` from their own tags (no statistics are
    shared), so the federated, local and pooled views are the same arrays.
    """
    if not sites:
        raise DataError("no sites to combine")
    data: dict[SiteId, SiteData] = {}
    shapes = set()
    for site, loaded in sites.items():
        if loaded.images is None:
            raise DataError(f"site {site} holds a table; federated_images combines images only")
        data[site] = loaded.site_data(test_fraction=test_fraction, seed=seed)
        shapes.add(loaded.images.shape[1:])
    if len(shapes) != 1:
        raise DataError(f"sites hold images of different shapes {sorted(shapes)}; set the same [source] size")
    return FederatedDataset(
        name=name,
        kind="binary",
        sites=data,
        local_view=data,
        pooled_view=data,
        feature_names=(),
        display_names={site: loaded.config.display_name for site, loaded in sites.items()},
        provenance="; ".join(str(loaded.config.path) for loaded in sites.values()),
    )
