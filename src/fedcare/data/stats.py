"""Federated cohort statistics: computed at each site, only aggregates leave.

A site summarises its checked table into **cell counts** and **moments**:

* for every column, one *group* of cells that partitions the site's ``n`` rows: the
  histogram bins of a numeric column (or one "present" cell when it has no bins), the
  codes of a category or boolean (its label balance for the target), plus a ``missing``
  cell; every group sums to ``n``;
* for numeric columns, the :class:`~fedcare.data.tabular.Moments` (count, sum, sum of
  squares) of the present values.

The coordinator adds the sites' released cells and moments (:func:`combine`); adding
moments gives exactly the pooled count, mean and standard deviation.

Small cells (health-data small-cell rule)
-----------------------------------------
Done **at the site**, before anything leaves (:func:`suppress_small_cells`), with
``k = min_count`` (default 5):

1. *Primary*: a cell with ``0 < count < k`` is suppressed (sent as 0 with a flag).
2. *Secondary* (complementary suppression): every group sums to ``n``, which is
   released, so one suppressed cell could be recovered by differencing
   (``n - sum(released cells)``). While a group has fewer than two suppressed cells, or
   its suppressed cells add up to less than ``k``, the smallest remaining non-zero cell
   is suppressed too. Differencing then yields only a total ``>= k`` spread over
   at least two cells.
3. Moments of a column are released only when its present count is ``>= k`` and its
   ``missing`` cell is not suppressed (the count is ``n - missing``).
4. A site with ``n < k`` releases nothing but the fact that it is suppressed.
5. Zero cells are released (the usual convention: a zero identifies nobody).

Combined statistics are sums of **released** values only, never recomputed from
suppressed ones, so they cannot reveal a suppressed cell by differencing against the
per-site figures: every combined number is a function of numbers the sites released
anyway. A combined cell that misses a suppressed site cell is flagged (how many sites
held back) and is a lower bound. The set of statistics is fixed by the site's own
config (no filters chosen by the querier), which rules out differencing between two
overlapping queries.

Differential privacy (optional)
-------------------------------
With ``[stats.privacy]``, every released number gets noise before suppression (which
is then post-processing, Dwork & Roth 2014, Prop. 2.1): Laplace (Dwork et al. 2006)
with scale ``sensitivity / epsilon_i``, or Gaussian with
``sigma = sensitivity * sqrt(2 ln(1.25 / delta_i)) / epsilon_i`` (Dwork & Roth 2014,
Thm A.1, valid for ``epsilon_i < 1``). The budget ``epsilon`` (and ``delta``) is split
evenly over the released components by basic composition: ``n``, one histogram group
per column (sensitivity 1 under add/remove-one), and count, sum, sum of squares per
numeric column (sensitivities 1, ``max |v|`` and ``max v^2`` with values clipped to the
schema's ``[min, max]``; columns without both bounds release no moments under DP).
Noisy counts are rounded and clipped at 0. The generator is CSPRNG-seeded unless a
seed is given (tests, demos).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.data.schema import ColumnType, StudySchema
from fedcare.data.tabular import Moments
from fedcare.errors import ConfigError, SerdeError
from fedcare.privacy.cost import Mechanism as CostMechanism
from fedcare.privacy.cost import PrivacyCost
from fedcare.types import ModelState, SiteId

if TYPE_CHECKING:  # the connectors' tables; reading a site file does not import pandas
    import pandas as pd

__all__ = [
    "DEFAULT_MIN_COUNT",
    "CohortStats",
    "ColumnAggregate",
    "Mechanism",
    "PrivacySpec",
    "SiteAggregates",
    "StatsSpec",
    "combine",
    "site_aggregates",
    "suppress_small_cells",
]

log = logging.getLogger(__name__)

#: The usual health-data small-cell threshold.
DEFAULT_MIN_COUNT = 5


class Mechanism(enum.Enum):
    """Noise added to released statistics."""

    LAPLACE = "laplace"
    GAUSSIAN = "gaussian"


@dataclass(frozen=True)
class PrivacySpec:
    """Differential-privacy noise on released statistics.

    Attributes
    ----------
    mechanism : Mechanism
        Laplace (pure epsilon-DP) or Gaussian ((epsilon, delta)-DP).
    epsilon : float
        Total budget of one statistics release, split over its components.
    delta : float (default: 1e-6)
        Total delta (Gaussian only).
    """

    mechanism: Mechanism
    epsilon: float
    delta: float = 1e-6

    def __post_init__(self) -> None:
        """Validate the budget."""
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"[stats.privacy] epsilon must be a positive number, got {self.epsilon}")
        if self.mechanism is Mechanism.GAUSSIAN and not 0 < self.delta < 1:
            raise ConfigError(f"[stats.privacy] delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class StatsSpec:
    """What ``fedcare stats`` computes and releases (``[stats]`` in the site config).

    Attributes
    ----------
    min_count : int (default: 5)
        Small-cell threshold ``k``: cells below it are suppressed at the site.
    bins : int (default: 10)
        Equal-width histogram bins over ``[min, max]`` of numeric columns that declare both.
    histograms : Mapping[str, tuple[float, ...]] (default: {})
        Explicit bin edges per column (override ``bins``).
    columns : tuple[str, ...] or None (default: None)
        Columns to summarise; ``None`` means every schema column.
    privacy : PrivacySpec or None (default: None)
        Optional DP noise.
    """

    min_count: int = DEFAULT_MIN_COUNT
    bins: int = 10
    histograms: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None
    privacy: PrivacySpec | None = None

    def __post_init__(self) -> None:
        """Validate the values."""
        if self.min_count < 1:
            raise ConfigError(f"[stats] min_count must be >= 1, got {self.min_count}")
        if self.bins < 1:
            raise ConfigError(f"[stats] bins must be >= 1, got {self.bins}")
        for col, edges in self.histograms.items():
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ConfigError(f"[stats.histograms] {col}: edges must be increasing, at least two, got {edges}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], schema: StudySchema) -> StatsSpec:
        """Build from the ``[stats]`` TOML table and check it against the schema."""
        known = {"min_count", "bins", "histograms", "columns", "privacy"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"[stats] unknown key(s) {unknown}; allowed: {sorted(known)}")
        columns = raw.get("columns")
        if columns is not None:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise ConfigError(f"[stats] columns {missing} are not in the schema")
            columns = tuple(columns)
        histograms = {str(k): tuple(float(e) for e in v) for k, v in dict(raw.get("histograms", {})).items()}
        for col in histograms:
            if col not in schema.names or not schema.column(col).numeric:
                raise ConfigError(f"[stats.histograms] {col!r} is not a numeric schema column")
        privacy = None
        if "privacy" in raw:
            p = dict(raw["privacy"])
            try:
                mech = Mechanism(p.get("mechanism", "laplace"))
            except ValueError:
                raise ConfigError(
                    f"[stats.privacy] mechanism {p.get('mechanism')!r}: use laplace or gaussian"
                ) from None
            if "epsilon" not in p:
                raise ConfigError("[stats.privacy] needs epsilon")
            privacy = PrivacySpec(mech, float(p["epsilon"]), float(p.get("delta", 1e-6)))
        return cls(
            min_count=int(raw.get("min_count", DEFAULT_MIN_COUNT)),
            bins=int(raw.get("bins", 10)),
            histograms=histograms,
            columns=columns,
            privacy=privacy,
        )

    def layout(self, schema: StudySchema) -> dict[str, tuple[str, ...]]:
        """Column -> cell labels of its group (the last is always ``missing``)."""
        out: dict[str, tuple[str, ...]] = {}
        for name in self.columns or schema.names:
            col = schema.column(name)
            if col.numeric:
                edges = self.edges(schema, name)
                if edges is None:
                    cells: tuple[str, ...] = ("present",)
                else:
                    cells = tuple(
                        f"[{a:g}, {b:g}{']' if i == len(edges) - 2 else ')'}"
                        for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))
                    )
            elif col.type is ColumnType.BOOLEAN:
                cells = ("false", "true")
            else:
                cells = tuple(str(c) for c in col.codes or ())
            out[name] = (*cells, "missing")
        return out

    def edges(self, schema: StudySchema, name: str) -> tuple[float, ...] | None:
        """Histogram edges of a numeric column, or None."""
        if name in self.histograms:
            return self.histograms[name]
        col = schema.column(name)
        if col.min is None or col.max is None or col.max <= col.min:
            return None
        return tuple(np.linspace(col.min, col.max, self.bins + 1).tolist())

    def components(self, schema: StudySchema) -> int:
        """How many numbers a DP release noises (the basic-composition split of epsilon)."""
        layout = self.layout(schema)
        numeric = [c for c in layout if schema.column(c).numeric]
        if self.privacy is not None:  # under DP only bounded columns release moments
            numeric = [c for c in numeric if schema.column(c).min is not None and schema.column(c).max is not None]
        return 1 + len(layout) + 3 * len(numeric)

    def privacy_cost(self, schema: StudySchema) -> PrivacyCost | None:
        """What one release costs in the site's privacy ledger (``None`` without DP).

        Each of the :meth:`components` is one mechanism at ``epsilon / components``
        (and ``delta / components``): Laplace as pure DP (ε added up), Gaussian as an
        unsampled Gaussian mechanism with its noise multiplier, which the ledger's
        accountant composes with the site's training.
        """
        if self.privacy is None:
            return None
        k = self.components(schema)
        eps = self.privacy.epsilon / k
        if self.privacy.mechanism is Mechanism.LAPLACE:
            laplace = CostMechanism.STATS_LAPLACE
            return PrivacyCost(mechanism=laplace, noise_multiplier=1.0 / eps, sample_rate=1.0, steps=k)
        z = math.sqrt(2 * math.log(1.25 / (self.privacy.delta / k))) / eps
        return PrivacyCost(mechanism=CostMechanism.STATS_GAUSSIAN, noise_multiplier=z, sample_rate=1.0, steps=k)

    def digest(self, schema: StudySchema) -> str:
        """sha256 of everything that fixes the released layout (coordinator and site must agree)."""
        doc = {
            "layout": self.layout(schema),
            "numeric": [c for c in self.columns or schema.names if schema.column(c).numeric],
            "min_count": self.min_count,
            "privacy": None
            if self.privacy is None
            else [self.privacy.mechanism.value, self.privacy.epsilon, self.privacy.delta],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ColumnAggregate:
    """What a site releases about one column.

    Attributes
    ----------
    cells : numpy.ndarray
        float64 counts of the column's group (see :meth:`StatsSpec.layout`), 0 where suppressed.
    suppressed : numpy.ndarray
        bool, same shape: which cells were held back.
    moments : Moments or None
        Count, sum, sum of squares of present values (numeric columns), ``None`` when held back.
    """

    cells: np.ndarray
    suppressed: np.ndarray
    moments: Moments | None = None


@dataclass(frozen=True)
class SiteAggregates:
    """Everything one site releases: ``n`` and one :class:`ColumnAggregate` per column.

    ``n`` is ``None`` and ``columns`` empty when the whole site is suppressed (``n < k``).
    """

    n: float | None
    columns: Mapping[str, ColumnAggregate]
    noise: str = "none"

    def to_arrays(self) -> ModelState:
        """The release as named arrays (safetensors-ready; no NaN, flags as bool arrays)."""
        out: ModelState = {
            "n": np.array([self.n if self.n is not None else 0.0]),
            "n.suppressed": np.array([self.n is None]),
        }
        for name, col in self.columns.items():
            out[f"{name}.cells"] = col.cells.astype(np.float64)
            out[f"{name}.suppressed"] = col.suppressed.astype(bool)
            if col.moments is not None:
                m = col.moments
                out[f"{name}.moments"] = np.array([m.count.item(), m.total.item(), m.total_sq.item()], dtype=np.float64)
        return out

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], layout: Mapping[str, Sequence[str]], *, where: str
    ) -> SiteAggregates:
        """Rebuild and validate a release against the expected layout."""

        def get(key: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
            arr = arrays.get(key)
            if arr is None:
                raise SerdeError(f"{where}: stats entry {key!r} is missing")
            arr = np.asarray(arr)
            if arr.shape != shape or arr.dtype.kind != kind:
                raise SerdeError(f"{where}: stats entry {key!r} has {arr.dtype}{arr.shape}, expected {kind}{shape}")
            if kind == "f" and not np.isfinite(arr).all():
                raise SerdeError(f"{where}: stats entry {key!r} holds NaN or Inf")
            return arr

        if bool(get("n.suppressed", (1,), "b")[0]):
            return cls(n=None, columns={})
        n = float(get("n", (1,), "f")[0])
        columns: dict[str, ColumnAggregate] = {}
        for name, cells in layout.items():
            values = get(f"{name}.cells", (len(cells),), "f")
            if (values < 0).any():
                raise SerdeError(f"{where}: stats entry {name!r} has negative counts")
            flags = get(f"{name}.suppressed", (len(cells),), "b")
            moments = None
            if f"{name}.moments" in arrays:
                c, t, t2 = get(f"{name}.moments", (3,), "f")
                if c < 0 or t2 < 0:
                    raise SerdeError(f"{where}: stats entry {name!r} has a negative count or sum of squares")
                moments = Moments(np.array([c]), np.array([t]), np.array([t2]))
            columns[name] = ColumnAggregate(values.copy(), flags.copy(), moments)
        unexpected = sorted(
            set(arrays)
            - {"n", "n.suppressed"}
            - {f"{c}.{s}" for c in layout for s in ("cells", "suppressed", "moments")}
        )
        if unexpected:
            raise SerdeError(f"{where}: unexpected stats entries {unexpected}")
        return cls(n=n, columns=columns)


def suppress_small_cells(counts: np.ndarray, min_count: int) -> np.ndarray:
    """Which cells of one group to hold back (primary plus complementary suppression).

    Parameters
    ----------
    counts : numpy.ndarray
        Cell counts of a group whose total is released.
    min_count : int
        Threshold ``k``.

    Returns
    -------
    numpy.ndarray
        bool mask: ``0 < count < k`` cells, plus the smallest other non-zero cells until
        at least two are held back and they add up to ``>= k`` (or none is left).

    >>> suppress_small_cells(np.array([3, 40, 12, 0]), 5).tolist()
    [True, False, True, False]
    """
    c = np.asarray(counts, dtype=np.float64)
    sup = (c > 0) & (c < min_count)
    if not sup.any():
        return sup
    while sup.sum() < 2 or c[sup].sum() < min_count:
        candidates = np.flatnonzero(~sup & (c > 0))
        if len(candidates) == 0:
            break
        sup[candidates[np.argmin(c[candidates])]] = True
    return sup


def _group_counts(values: pd.Series, schema: StudySchema, spec: StatsSpec, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw cell counts of one column's group and the present numeric values (or empty)."""
    col = schema.column(name)
    present = values.notna().to_numpy()
    missing = float((~present).sum())
    if col.numeric:
        x = values.to_numpy(dtype=np.float64)[present]
        edges = spec.edges(schema, name)
        if edges is None:
            cells = np.array([float(len(x))])
        else:
            hist, _ = np.histogram(np.clip(x, edges[0], edges[-1]), bins=np.asarray(edges))
            cells = hist.astype(np.float64)
        return np.append(cells, missing), x
    codes = (False, True) if col.type is ColumnType.BOOLEAN else tuple(col.codes or ())
    got = values[present]
    if col.type is ColumnType.BOOLEAN:
        got = got.astype(float)
        cells = np.array([float((got == 0).sum()), float((got == 1).sum())])
    else:
        cells = np.array([float((got == c).sum()) for c in codes])
    return np.append(cells, missing), np.zeros(0)


def _noise(
    rng: np.random.Generator, privacy: PrivacySpec, components: int, sensitivity: float, size: int
) -> np.ndarray:
    eps = privacy.epsilon / components
    if privacy.mechanism is Mechanism.LAPLACE:
        return rng.laplace(0.0, sensitivity / eps, size=size)
    if eps >= 1:
        raise ConfigError(
            f"[stats.privacy] Gaussian mechanism needs epsilon per component < 1; epsilon {privacy.epsilon} "
            f"over {components} components gives {eps:.3g} (lower epsilon or use laplace)"
        )
    delta = privacy.delta / components
    sigma = sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / eps
    return rng.normal(0.0, sigma, size=size)


def site_aggregates(
    frame: pd.DataFrame,
    schema: StudySchema,
    spec: StatsSpec,
    *,
    rng: np.random.Generator | None = None,
) -> SiteAggregates:
    """Summarise a site's checked table into what may leave it (runs at the site).

    Parameters
    ----------
    frame : pandas.DataFrame
        The site's checked table (:attr:`LoadedSite.frame`).
    schema : StudySchema
        The study's schema.
    spec : StatsSpec
        Columns, bins, small-cell threshold and optional DP noise.
    rng : numpy.random.Generator or None (default: None)
        Source of DP noise; ``None`` uses a CSPRNG-seeded generator.

    Returns
    -------
    SiteAggregates
        Cell counts and moments after noise (if any) and small-cell suppression.
    """
    layout = spec.layout(schema)
    k = spec.min_count
    privacy = spec.privacy
    numeric = [c for c in layout if schema.column(c).numeric]
    bounded = {c for c in numeric if schema.column(c).min is not None and schema.column(c).max is not None}
    moment_cols = numeric if privacy is None else [c for c in numeric if c in bounded]
    components = spec.components(schema)
    if privacy is not None and rng is None:
        rng = np.random.default_rng(secrets.randbits(128))
    n = float(len(frame))
    if privacy is not None:
        assert rng is not None
        n = max(0.0, float(np.round(n + _noise(rng, privacy, components, 1.0, 1)[0])))
    noise = "none" if privacy is None else f"{privacy.mechanism.value} epsilon={privacy.epsilon:g}"
    if n < k:
        return SiteAggregates(n=None, columns={}, noise=noise)
    columns: dict[str, ColumnAggregate] = {}
    for name in layout:
        cells, x = _group_counts(frame[name], schema, spec, name)
        moments: Moments | None = None
        if name in moment_cols:
            if privacy is not None:
                col = schema.column(name)
                lo, hi = float(col.min), float(col.max)  # type: ignore[arg-type]
                x = np.clip(x, lo, hi)
                bound = max(abs(lo), abs(hi))
                assert rng is not None
                noisy = np.array(
                    [
                        len(x) + _noise(rng, privacy, components, 1.0, 1)[0],
                        x.sum() + _noise(rng, privacy, components, bound, 1)[0],
                        (x**2).sum() + _noise(rng, privacy, components, bound**2, 1)[0],
                    ]
                )
                noisy[0] = max(0.0, float(np.round(noisy[0])))
                noisy[2] = max(0.0, noisy[2])
                moments = Moments(noisy[:1], noisy[1:2], noisy[2:3])
            else:
                moments = Moments.of(x[:, None])
        if privacy is not None:
            assert rng is not None
            cells = np.maximum(0.0, np.round(cells + _noise(rng, privacy, components, 1.0, len(cells))))
        sup = suppress_small_cells(cells, k)
        if moments is not None and (moments.count.item() < k or sup[-1]):
            moments = None
        columns[name] = ColumnAggregate(np.where(sup, 0.0, cells), sup, moments)
    return SiteAggregates(n=n, columns=columns, noise=noise)


@dataclass(frozen=True)
class CohortStats:
    """Per-site releases and their combination (the coordinator's view).

    Attributes
    ----------
    layout : Mapping[str, tuple[str, ...]]
        Column -> cell labels.
    sites : Mapping[SiteId, SiteAggregates]
        What each site released.
    n : float
        Combined number of rows (over sites that released ``n``).
    cells : Mapping[str, numpy.ndarray]
        Combined released counts per column.
    held_back : Mapping[str, numpy.ndarray]
        Per column and cell: how many sites suppressed it (the combined cell is then a lower bound).
    moments : Mapping[str, Moments]
        Combined moments of numeric columns (over sites that released them).
    moment_sites : Mapping[str, int]
        How many sites contributed moments per column.
    suppressed_sites : tuple[SiteId, ...]
        Sites whose ``n`` was below the threshold.
    """

    layout: Mapping[str, tuple[str, ...]]
    sites: Mapping[SiteId, SiteAggregates]
    n: float
    cells: Mapping[str, np.ndarray]
    held_back: Mapping[str, np.ndarray]
    moments: Mapping[str, Moments]
    moment_sites: Mapping[str, int]
    suppressed_sites: tuple[SiteId, ...]

    def mean_std(self, column: str, site: SiteId | None = None) -> tuple[float, float, float] | None:
        """(count, mean, sample std) of a numeric column, combined or for one site; None if held back."""
        m = (
            self.moments.get(column)
            if site is None
            else self.sites[site].columns.get(column, ColumnAggregate(np.zeros(0), np.zeros(0))).moments
        )
        if m is None or m.count.item() <= 0:
            return None
        s = m.standardizer()
        return m.count.item(), float(s.mean[0]), float(s.std[0])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (per site and combined)."""

        def col_doc(
            cells: np.ndarray, flags: np.ndarray, moments: Moments | None, labels: Sequence[str]
        ) -> dict[str, Any]:
            doc: dict[str, Any] = {
                "cells": {lab: (None if bool(f) else float(v)) for lab, v, f in zip(labels, cells, flags, strict=True)}
            }
            if moments is not None and moments.count.item() > 0:
                s = moments.standardizer()
                doc.update(count=moments.count.item(), mean=float(s.mean[0]), std=float(s.std[0]))
            return doc

        out: dict[str, Any] = {"sites": {}, "combined": {"n": self.n, "suppressed_sites": list(self.suppressed_sites)}}
        for site, agg in self.sites.items():
            out["sites"][site] = {
                "n": agg.n,
                "noise": agg.noise,
                "columns": {
                    name: col_doc(col.cells, col.suppressed, col.moments, self.layout[name])
                    for name, col in agg.columns.items()
                },
            }
        out["combined"]["columns"] = {
            name: {
                **col_doc(
                    self.cells[name], np.zeros(len(self.layout[name]), bool), self.moments.get(name), self.layout[name]
                ),
                "sites_holding_back": {
                    lab: int(h) for lab, h in zip(self.layout[name], self.held_back[name], strict=True) if h
                },
                "moment_sites": self.moment_sites.get(name, 0),
            }
            for name in self.layout
        }
        return out


def combine(layout: Mapping[str, tuple[str, ...]], releases: Mapping[SiteId, SiteAggregates]) -> CohortStats:
    """Add the sites' released cells and moments (coordinator side; nothing un-suppressed).

    Parameters
    ----------
    layout : Mapping[str, tuple[str, ...]]
        :meth:`StatsSpec.layout` of the study.
    releases : Mapping[SiteId, SiteAggregates]
        Each site's release, in a fixed site order (sums are order-independent up to rounding).
    """
    sites = dict(sorted(releases.items()))
    cells = {name: np.zeros(len(labels)) for name, labels in layout.items()}
    held = {name: np.zeros(len(labels), dtype=np.int64) for name, labels in layout.items()}
    moments: dict[str, Moments] = {}
    moment_sites: dict[str, int] = {}
    n = 0.0
    suppressed: list[SiteId] = []
    for site, agg in sites.items():
        if agg.n is None:
            suppressed.append(site)
            continue
        n += agg.n
        for name, col in agg.columns.items():
            cells[name] += col.cells
            held[name] += col.suppressed.astype(np.int64)
            if col.moments is not None:
                moments[name] = moments[name] + col.moments if name in moments else col.moments
                moment_sites[name] = moment_sites.get(name, 0) + 1
    return CohortStats(
        layout=dict(layout),
        sites=sites,
        n=n,
        cells=cells,
        held_back=held,
        moments=moments,
        moment_sites=moment_sites,
        suppressed_sites=tuple(suppressed),
    )
