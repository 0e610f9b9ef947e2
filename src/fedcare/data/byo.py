"""Bring-your-own tabular data: a user's CSV files become a validated FederatedDataset.

The tables are read as text, so every problem can be named precisely: the file, the
line (the header is line 1), the column and the value. All problems of one kind are
collected and raised together as one line (a :class:`~fedcare.errors.DataError`), in
this order: unreadable or missing files, missing columns, sites without rows, values
that are not numbers, missing targets, sites too small to split or with one class
only in their training split.

Preprocessing is :func:`fedcare.data.tabular.prepare_sites`: per-site seeded
train/test split, one-hot encoding, mean imputation and standardisation with training
statistics only. The one-hot categories are the union of the values seen in the
training rows of all sites, sorted, first one dropped; only these category sets (never
rows) would have to leave the sites to agree on them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fedcare.data.federated import FederatedDataset
from fedcare.data.schema import MANY_CATEGORIES, MAX_ABS_VALUE, many_categories_warning
from fedcare.data.table import csv_shape_problem
from fedcare.data.tabular import TabularRecipe, prepare_sites, split_indices
from fedcare.errors import ConfigError, DataError
from fedcare.types import SiteId

__all__ = ["CsvSource", "TableSpec", "load_table"]

log = logging.getLogger(__name__)

Scalar = str | int | float


@dataclass(frozen=True)
class CsvSource:
    """One CSV file: where it is, how messages name it, and the site it holds (if one).

    Attributes
    ----------
    path : Path
        Resolved location of the file.
    label : str
        The path as the user wrote it, used in error messages.
    site : SiteId or None
        The site whose rows the file holds; ``None`` for one file with a site column.
    """

    path: Path
    label: str
    site: SiteId | None = None


@dataclass(frozen=True)
class TableSpec:
    """What to read and how to turn it into a binary classification data set.

    Attributes
    ----------
    name : str
        Data set name (recorded in the store and the summary).
    sources : tuple[CsvSource, ...]
        One file per site, or a single file whose ``site_column`` names the site.
    target : str
        The label column.
    positive : tuple[Scalar, ...]
        Target values counted as the positive class; every other value is negative.
    site_column : str or None (default: None)
        Column naming each row's site (single-file layout).
    features : tuple[str, ...] or None (default: None)
        Input columns; ``None`` means every column but the target, the site column and
        ``exclude``.
    exclude : tuple[str, ...] (default: ())
        Columns left out when ``features`` is ``None``.
    categorical : tuple[str, ...] (default: ())
        Feature columns to one-hot encode.
    missing : tuple[Scalar, ...] (default: ("",))
        Cell values meaning "missing" (compared as text; numbers also by value).
    test_fraction : float (default: 0.25)
        Share of each site's rows held out for testing.
    split_seed : int (default: 0)
        Seed of each site's train/test split.
    normalization : {"federated", "site"} (default: "federated")
        Standardisation statistics for federated training: combined from the sites'
        counts and sums, or each site's own.
    delimiter : str (default: ",")
        Field separator of the CSV files.
    """

    name: str
    sources: tuple[CsvSource, ...]
    target: str
    positive: tuple[Scalar, ...]
    site_column: str | None = None
    features: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    missing: tuple[Scalar, ...] = ("",)
    test_fraction: float = 0.25
    split_seed: int = 0
    normalization: Literal["federated", "site"] = "federated"
    delimiter: str = ","

    def describe(self) -> dict[str, Any]:
        """The resolved specification as JSON-friendly values (for summary.json)."""
        return {
            "name": self.name,
            "files": {s.label: {"path": str(s.path), "site": s.site} for s in self.sources},
            "site_column": self.site_column,
            "target": self.target,
            "positive": list(self.positive),
            "features": list(self.features) if self.features is not None else None,
            "exclude": list(self.exclude),
            "categorical": list(self.categorical),
            "missing": list(self.missing),
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "normalization": self.normalization,
            "delimiter": self.delimiter,
        }


@dataclass
class _Site:
    """One site's raw rows (text) and where they came from."""

    site: SiteId
    source: CsvSource
    rows: pd.DataFrame  # index = line number in the file

    @property
    def where(self) -> str:
        return f"site {self.site!r} ({self.source.label})"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _read(source: CsvSource, delimiter: str) -> pd.DataFrame:
    """Read a CSV as stripped text; the index is each row's line number (header = 1)."""
    problem = csv_shape_problem(source.path, delimiter=delimiter)
    if problem is not None:  # a short row or a repeated header name, named with its line
        raise DataError(f"{source.label}: {problem}")
    try:
        frame = pd.read_csv(
            source.path,
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{source.label}: the file is empty (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise DataError(f"{source.label}: cannot be read as CSV ({_one_line(exc)})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.apply(lambda col: col.str.strip())
    frame.index = np.arange(len(frame)) + 2
    blank = (frame == "").all(axis=1)
    return frame[~blank]


def _split_by_site(frame: pd.DataFrame, source: CsvSource, column: str, missing: set[str]) -> list[_Site]:
    values = frame[column]
    absent = values.isin(missing)
    if absent.any():
        line = int(values.index[absent.to_numpy()][0])
        raise DataError(f"{source.label}, line {line}, column {column!r}: missing site name")
    return [
        _Site(SiteId(name), source, frame[values == name].drop(columns=[column]))
        for name in sorted(values.unique().tolist())
    ]


def _load_sites(spec: TableSpec, missing_text: set[str]) -> list[_Site]:
    absent = [s for s in spec.sources if not s.path.is_file()]
    if absent:
        raise DataError(
            "data file not found: " + ", ".join(f"{s.label} ({s.path})" for s in absent)
            if len(absent) > 1
            else f"data file not found: {absent[0].label} ({absent[0].path})"
        )
    frames = [(s, _read(s, spec.delimiter)) for s in spec.sources]
    if spec.site_column is not None:
        source, frame = frames[0]
        if spec.site_column not in frame.columns:
            raise DataError(f"{source.label}: missing column {spec.site_column!r} (the site column)")
        return _split_by_site(frame, source, spec.site_column, missing_text)
    return [_Site(s.site or SiteId(s.label), s, f) for s, f in frames]


def _feature_columns(spec: TableSpec, sites: list[_Site]) -> list[str]:
    first = sites[0].rows.columns
    if spec.features is not None:
        features = list(spec.features)
    else:
        skip = {spec.target, *spec.exclude}
        features = [c for c in first if c not in skip]
    required = list(dict.fromkeys([spec.target, *features, *spec.exclude, *spec.categorical]))
    problems = []
    seen: set[str] = set()
    for site in sites:
        if site.source.label in seen:
            continue
        seen.add(site.source.label)
        lacking = [c for c in required if c not in site.rows.columns]
        if lacking:
            word = "column" if len(lacking) == 1 else "columns"
            problems.append(f"{site.source.label}: missing {word} " + ", ".join(repr(c) for c in lacking))
    if problems:
        raise DataError("; ".join(problems))
    stray = [c for c in spec.categorical if c not in features]
    if stray:
        raise ConfigError("categorical column(s) not among the features: " + ", ".join(repr(c) for c in stray))
    if not features:
        raise ConfigError("no feature columns left (every column is the target or excluded)")
    return features


class _Parser:
    """Convert text cells to numbers, collecting every bad value it meets."""

    def __init__(self, missing: tuple[Scalar, ...]) -> None:
        self.text = {str(m).strip() for m in missing if isinstance(m, str)}
        self.numbers = [float(m) for m in missing if not isinstance(m, str)]
        self.text |= {_number_text(m) for m in self.numbers}
        self.problems: list[str] = []

    def absent(self, col: pd.Series) -> np.ndarray:
        mask = col.isin(self.text).to_numpy()
        if self.numbers:
            mask |= pd.to_numeric(col, errors="coerce").isin(self.numbers).to_numpy()
        return mask

    def numeric(self, site: _Site, column: str, *, report: bool = True) -> tuple[np.ndarray, bool]:
        """Parse a column; NaN where missing. Returns (values, all present cells parsed)."""
        col = site.rows[column]
        absent = self.absent(col)
        values = pd.to_numeric(col.where(~absent, None), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~absent & ~np.isfinite(values)
        huge = ~absent & ~bad & (np.abs(values) > MAX_ABS_VALUE)  # 1e308 passes as a number, then overflows
        if (bad.any() or huge.any()) and report:
            idx = np.flatnonzero(bad | huge)
            line, value = int(col.index[idx[0]]), col.iloc[idx[0]]
            more = f" (and {_plural(len(idx) - 1, 'more row')} in this column)" if len(idx) > 1 else ""
            where = f"{site.source.label}, line {line}, column {column!r}"
            what = (
                "is not a number" if bad[idx[0]] else f"is beyond ±{MAX_ABS_VALUE:g} and would overflow the statistics"
            )
            self.problems.append(f"{where}: {value!r} {what}{more}")
        bad |= huge
        values[absent] = np.nan
        return values, not bad.any()


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(spec: TableSpec, parser: _Parser, sites: list[_Site]) -> dict[SiteId, np.ndarray]:
    numeric = all(isinstance(p, int | float) and not isinstance(p, bool) for p in spec.positive)
    labels: dict[SiteId, np.ndarray] = {}
    missing: list[str] = []
    for site in sites:
        col = site.rows[spec.target]
        absent = parser.absent(col)
        if absent.any():
            lines = col.index[absent].tolist()
            more = f" (and {_plural(len(lines) - 1, 'more row')})" if len(lines) > 1 else ""
            missing.append(f"{site.source.label}, line {lines[0]}, column {spec.target!r}: missing target value{more}")
            continue
        if numeric:
            values, ok = parser.numeric(site, spec.target)
            if not ok:
                continue
            labels[site.site] = np.isin(values, [float(p) for p in spec.positive]).astype(np.float32)
        else:
            labels[site.site] = col.isin([str(p) for p in spec.positive]).to_numpy().astype(np.float32)
    if parser.problems:
        raise DataError("; ".join(parser.problems))
    if missing:
        raise DataError("; ".join(missing))
    return labels


def _splits(spec: TableSpec, sites: list[_Site], labels: Mapping[SiteId, np.ndarray]) -> dict[SiteId, np.ndarray]:
    """Each site's training row positions (the same split prepare_sites makes)."""
    train: dict[SiteId, np.ndarray] = {}
    problems = []
    for site in sites:
        y = labels[site.site]
        try:
            train_idx, _ = split_indices(y, test_fraction=spec.test_fraction, seed=spec.split_seed)
        except ValueError:
            problems.append(
                f"{site.where}: {_plural(len(y), 'row')} cannot be split into train and test "
                f"with test_fraction {spec.test_fraction:g}"
            )
            continue
        classes = np.unique(y[train_idx])
        if len(classes) < 2:
            kind = "positive" if classes[0] == 1 else "negative"
            problems.append(
                f"{site.where}: the training split has one class only ({_plural(len(train_idx), kind + ' row')}); "
                "every site needs both classes"
            )
        train[site.site] = train_idx
    if problems:
        raise DataError("; ".join(problems))
    return train


def load_table(spec: TableSpec) -> tuple[FederatedDataset, TabularRecipe]:
    """Read, validate and preprocess the user's tables.

    Returns
    -------
    dataset : FederatedDataset
        Binary task; ``sites`` uses the ``normalization`` the spec asks for.
    recipe : TabularRecipe
        The features and the category lists agreed across sites.

    Raises
    ------
    DataError
        Missing file or column, a non-numeric value in a numeric column, a missing
        target, an empty site, a site too small to split or with one class in training:
        one line naming the file, line, column or site.
    ConfigError
        The columns the configuration names do not fit the data.
    """
    parser = _Parser(spec.missing)
    sites = _load_sites(spec, parser.text)
    features = _feature_columns(spec, sites)
    empty = [s.where for s in sites if len(s.rows) == 0]
    if empty:
        raise DataError("; ".join(f"{w} has no data rows" for w in empty))
    frames: dict[SiteId, pd.DataFrame] = {site.site: pd.DataFrame(index=site.rows.index) for site in sites}
    numeric = [c for c in features if c not in spec.categorical]
    for column in numeric:
        for site in sites:
            frames[site.site][column] = parser.numeric(site, column)[0]
    labels = _labels(spec, parser, sites)  # raises every non-number met so far, targets included
    train = _splits(spec, sites, labels)

    categories: dict[str, tuple[object, ...]] = {}
    for column in features:
        if column in spec.categorical:
            categories[column] = _categorical(column, sites, frames, parser, train)
    unseen = [c for c in features if all(_all_missing(frames[s.site][c].to_numpy()[train[s.site]]) for s in sites)]
    if unseen:
        raise DataError("no value in any training row of any site for column(s) " + ", ".join(repr(c) for c in unseen))

    recipe = TabularRecipe(
        features=tuple(features),
        categorical=categories,
        test_fraction=spec.test_fraction,
        seed=spec.split_seed,
    )
    prepared = prepare_sites({s: f.reset_index(drop=True) for s, f in frames.items()}, labels, recipe)
    dataset = FederatedDataset(
        name=spec.name,
        kind="binary",
        sites=prepared.local if spec.normalization == "site" else prepared.federated,
        local_view=prepared.local,
        pooled_view=prepared.pooled,
        feature_names=recipe.encoded_names(),
        display_names={s.site: str(s.site) for s in sites},
        provenance="user data: " + ", ".join(dict.fromkeys(s.source.label for s in sites)),
    )
    return dataset, recipe


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _all_missing(values: np.ndarray) -> bool:
    return all(_is_missing(v) for v in values.tolist())


def _categorical(
    column: str,
    sites: list[_Site],
    frames: Mapping[SiteId, pd.DataFrame],
    parser: _Parser,
    train: Mapping[SiteId, np.ndarray],
) -> tuple[object, ...]:
    """Fill ``column`` into ``frames``; return its categories (union over training rows, sorted).

    When every present value of the column is a number, categories are numbers
    (sorted numerically: 2 before 10); otherwise they are the text values.
    """
    parsed = {site.site: parser.numeric(site, column, report=False) for site in sites}
    as_numbers = all(ok for _, ok in parsed.values())
    for site in sites:
        if as_numbers:
            frames[site.site][column] = parsed[site.site][0]
        else:
            col = site.rows[column]
            frames[site.site][column] = col.where(~parser.absent(col), None).to_numpy(dtype=object)
    seen: set[object] = set()
    for site in sites:
        values = frames[site.site][column].to_numpy()[train[site.site]]
        seen |= {v for v in values.tolist() if not _is_missing(v)}
    if len(seen) > MANY_CATEGORIES:
        log.warning(many_categories_warning(column, len(seen), "training rows of all sites: "))
    return tuple(sorted(seen))  # type: ignore[type-var]
