"""The study schema and the check every connector's output goes through.

A study declares, once, what each site's data must look like: the columns (or derived
features) with their type, allowed range or codes, whether values may be missing, and
which column is the target. Connectors turn a site's files into a table; :func:`check_frame`
compares that table with the schema and collects **every** problem (missing column,
wrong type, out-of-range values, unknown codes) before anything is raised, so a data
manager fixes a file once instead of once per error. The source is never modified: the
check works on a copy and returns a clean, typed copy.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedcare.data.tabular import TabularRecipe
from fedcare.errors import ConfigError, DataError

__all__ = [
    "MAX_ABS_VALUE",
    "CheckReport",
    "ColumnSpec",
    "ColumnType",
    "Problem",
    "StudySchema",
    "check_frame",
]

#: How many offending rows a problem quotes before it says "and N more".
_QUOTE = 3


class ColumnType(enum.Enum):
    """Declared type of a schema column."""

    NUMBER = "number"
    INTEGER = "integer"
    CATEGORY = "category"
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site's data: where it is and what is wrong.

    Attributes
    ----------
    source : str
        The file (or config) concerned, by name.
    location : str
        Column, row, resource or tag inside the source ("" when the whole file).
    message : str
        What is wrong, in one line.
    """

    source: str
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.location}" if self.location else self.source
        return f"{where}: {self.message}"


@dataclass
class CheckReport:
    """Every problem found in a site's data, collected before anything is raised."""

    problems: list[Problem] = field(default_factory=list)
    #: Files read (name -> rows or images contributed); for the report's summary line.
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add(self, source: str, location: str, message: str) -> None:
        """Record one problem."""
        self.problems.append(Problem(source, location, message))

    def extend(self, problems: Iterable[Problem]) -> None:
        """Record several problems."""
        self.problems.extend(problems)

    def raise_if_problems(self, what: str) -> None:
        """Raise one :class:`DataError` listing every problem (first line says how many)."""
        if self.problems:
            lines = "\n".join(f"  {p}" for p in self.problems)
            raise DataError(f"{what}: {len(self.problems)} problem(s)\n{lines}")


@dataclass(frozen=True)
class ColumnSpec:
    """What one column of the study must hold.

    Attributes
    ----------
    name : str
        Column name in the connector's output table.
    type : ColumnType
        ``number``, ``integer``, ``category`` or ``boolean``.
    min, max : float or None (default: None)
        Inclusive allowed range for numbers and integers.
    codes : tuple or None (default: None)
        Allowed values of a category, in order (the first is the one-hot reference).
    allow_missing : bool (default: True)
        Whether empty cells are allowed (never for the target).
    """

    name: str
    type: ColumnType
    min: float | None = None
    max: float | None = None
    codes: tuple[Any, ...] | None = None
    allow_missing: bool = True

    def __post_init__(self) -> None:
        """Check the declaration itself."""
        if self.type is ColumnType.CATEGORY and not self.codes:
            raise ConfigError(f"schema column {self.name!r}: a category needs a non-empty 'codes' list")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"schema column {self.name!r}: min {self.min} is greater than max {self.max}")

    @property
    def numeric(self) -> bool:
        """True for number and integer columns."""
        return self.type in (ColumnType.NUMBER, ColumnType.INTEGER)

    @classmethod
    def from_mapping(cls, name: str, raw: Mapping[str, Any]) -> ColumnSpec:
        """Build from a ``[schema.columns.<name>]`` TOML table."""
        known = {"type", "min", "max", "codes", "allow_missing"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"schema column {name!r}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        try:
            kind = ColumnType(raw.get("type", "number"))
        except ValueError:
            allowed = [t.value for t in ColumnType]
            raise ConfigError(f"schema column {name!r}: type {raw.get('type')!r} is not one of {allowed}") from None
        for key in ("min", "max"):
            if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], int | float)):
                raise ConfigError(f"schema column {name!r}: {key} must be a number, got {raw[key]!r}")
        codes = raw.get("codes")
        if codes is not None and not isinstance(codes, list):
            raise ConfigError(f"schema column {name!r}: codes must be a list, got {codes!r}")
        return cls(
            name=name,
            type=kind,
            min=float(raw["min"]) if "min" in raw else None,
            max=float(raw["max"]) if "max" in raw else None,
            codes=tuple(codes) if codes is not None else None,
            allow_missing=bool(raw.get("allow_missing", True)),
        )


@dataclass(frozen=True)
class StudySchema:
    """The study's declared columns and target.

    Attributes
    ----------
    columns : tuple[ColumnSpec, ...]
        Every column the connector's table must have, target included, in order.
    target : str
        Name of the target column (missing values are never allowed there).
    """

    columns: tuple[ColumnSpec, ...]
    target: str

    def __post_init__(self) -> None:
        """Check that the target is declared and names are unique."""
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"schema declares column(s) {dupes} twice")
        if self.target not in names:
            raise ConfigError(f"schema target {self.target!r} is not a declared column; declared: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        """All column names, in order."""
        return tuple(c.name for c in self.columns)

    @property
    def features(self) -> tuple[ColumnSpec, ...]:
        """The columns other than the target."""
        return tuple(c for c in self.columns if c.name != self.target)

    def column(self, name: str) -> ColumnSpec:
        """The spec of column ``name``."""
        for c in self.columns:
            if c.name == name:
                return c
        raise ConfigError(f"schema has no column {name!r}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> StudySchema:
        """Build from the ``[schema]`` TOML table (``target`` plus ``[schema.columns.<name>]``)."""
        target = raw.get("target")
        if not isinstance(target, str) or not target:
            raise ConfigError("[schema] needs target = '<column name>'")
        cols = raw.get("columns")
        if not isinstance(cols, Mapping) or not cols:
            raise ConfigError("[schema] needs at least one [schema.columns.<name>] table")
        specs = []
        for name, spec in cols.items():
            if not isinstance(spec, Mapping):
                raise ConfigError(f"schema column {name!r} must be a table, got {spec!r}")
            col = ColumnSpec.from_mapping(str(name), spec)
            if name == target and col.allow_missing:
                col = ColumnSpec(col.name, col.type, col.min, col.max, col.codes, allow_missing=False)
            specs.append(col)
        return cls(columns=tuple(specs), target=target)

    def recipe(self, *, test_fraction: float = 0.25, seed: int = 0, standardize: bool = True) -> TabularRecipe:
        """The :class:`TabularRecipe` that turns a checked table into model inputs."""
        categorical = {c.name: c.codes or () for c in self.features if c.type is ColumnType.CATEGORY}
        return TabularRecipe(
            features=tuple(c.name for c in self.features),
            categorical=categorical,
            test_fraction=test_fraction,
            seed=seed,
            standardize=standardize,
        )


def _rows(mask: np.ndarray, values: Sequence[Any] | None, row_label: str | Sequence[str]) -> str:
    """Name the first offending rows (with their values when given)."""
    idx = np.flatnonzero(mask)

    def name(i: int) -> str:
        return f"{row_label} {i + 1}" if isinstance(row_label, str) else str(row_label[i])

    quoted = ", ".join(name(i) if values is None else f"{name(i)}: {values[i]!r}" for i in idx[:_QUOTE])
    more = f" and {len(idx) - _QUOTE} more" if len(idx) > _QUOTE else ""
    return f"{quoted}{more}"


_TRUE = {"true", "1", "yes", "y", "t", "1.0"}
_FALSE = {"false", "0", "no", "n", "f", "0.0"}


def _present(series: pd.Series) -> np.ndarray:
    """Cells that hold a value (not NaN/None and not an empty string)."""
    notna = series.notna().to_numpy()
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        blank = series.astype(str).str.strip().eq("").to_numpy()
        return notna & ~blank
    return notna


#: Largest magnitude a numeric cell may have. Sums of squares of values like 1e308 overflow
#: float64 (the federated statistics add them up); no clinical measurement comes near 1e15,
#: and up to it float64 still holds every integer exactly.
MAX_ABS_VALUE = 1e15


def _check_column(series: pd.Series, spec: ColumnSpec, source: str, row_label: str, report: CheckReport) -> pd.Series:
    """Coerce one column to its declared type, recording every problem; returns a new Series."""
    raw = series.to_numpy(dtype=object)
    present = _present(series)
    where = f"column {spec.name!r}"
    if spec.numeric or (spec.type is ColumnType.CATEGORY and all(_is_number(c) for c in spec.codes or ())):
        if pd.api.types.is_bool_dtype(series):
            numeric = series.astype(float)
        else:
            numeric = pd.to_numeric(series.where(present), errors="coerce")
        bad_type = present & numeric.isna().to_numpy()
        if bad_type.any():
            kind = "numeric" if spec.numeric else "numeric-coded"
            report.add(source, where, f"{int(bad_type.sum())} non-{kind} value(s) ({_rows(bad_type, raw, row_label)})")
        values = numeric.to_numpy(dtype=np.float64)
        ok = ~np.isnan(values)
        huge = ok & ~(np.abs(values) <= MAX_ABS_VALUE)
        if huge.any():
            report.add(
                source,
                where,
                f"{int(huge.sum())} value(s) beyond ±{MAX_ABS_VALUE:g}, which would overflow the statistics "
                f"({_rows(huge, raw, row_label)})",
            )
            ok &= ~huge
        if spec.type is ColumnType.INTEGER:
            frac = ok & (values != np.round(values))
            if frac.any():
                report.add(source, where, f"{int(frac.sum())} non-integer value(s) ({_rows(frac, raw, row_label)})")
        if spec.numeric:
            low = ok & (values < spec.min) if spec.min is not None else np.zeros_like(ok)
            high = ok & (values > spec.max) if spec.max is not None else np.zeros_like(ok)
            out = low | high
            if out.any():
                report.add(
                    source,
                    where,
                    f"{int(out.sum())} value(s) outside [{spec.min}, {spec.max}] ({_rows(out, raw, row_label)})",
                )
        else:
            codes = np.array([float(c) for c in spec.codes or ()])
            unknown = ok & ~np.isin(values, codes)
            if unknown.any():
                report.add(
                    source,
                    where,
                    f"{int(unknown.sum())} unknown code(s), allowed {list(spec.codes or ())} "
                    f"({_rows(unknown, raw, row_label)})",
                )
        result = pd.Series(values, index=series.index, name=spec.name)
    elif spec.type is ColumnType.CATEGORY:
        text = series.where(present).map(lambda v: None if v is None or v != v else str(v).strip())
        allowed = [str(c) for c in spec.codes or ()]
        unknown = present & ~text.isin(allowed).to_numpy()
        if unknown.any():
            report.add(
                source,
                where,
                f"{int(unknown.sum())} unknown code(s), allowed {allowed} ({_rows(unknown, raw, row_label)})",
            )
        result = text.rename(spec.name)
    else:  # boolean
        if pd.api.types.is_bool_dtype(series):
            result = series.astype(float).rename(spec.name)
        else:
            lowered = series.where(present).map(lambda v: None if v is None or v != v else str(v).strip().lower())
            values = np.where(lowered.isin(_TRUE), 1.0, np.where(lowered.isin(_FALSE), 0.0, np.nan))
            bad = present & np.isnan(values)
            if bad.any():
                report.add(source, where, f"{int(bad.sum())} non-boolean value(s) ({_rows(bad, raw, row_label)})")
            result = pd.Series(values, index=series.index, name=spec.name)
    if not spec.allow_missing:
        missing = ~present
        if missing.any():
            report.add(
                source,
                where,
                f"{int(missing.sum())} missing value(s), not allowed here ({_rows(missing, None, row_label)})",
            )
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_frame(
    frame: pd.DataFrame,
    schema: StudySchema,
    *,
    source: str,
    report: CheckReport,
    row_label: str | Sequence[str] = "row",
) -> pd.DataFrame:
    """Check ``frame`` against ``schema``; record every problem in ``report``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The connector's table (left untouched).
    schema : StudySchema
        The study's declared columns.
    source : str
        File name quoted in each problem.
    report : CheckReport
        Where problems are collected.
    row_label : str or sequence of str (default: "row")
        How rows are named in problems: a word (rows are then numbered from 1 after the
        header, ``row 3``) or one name per row (a bundle or image file name).

    Returns
    -------
    pandas.DataFrame
        A new table with the schema's columns only, in schema order: numbers as float64
        (NaN where missing or invalid), categories as their declared codes, booleans as 0/1.
        Columns that are absent are filled with NaN so that later checks still run.
    """
    if len(frame) == 0:
        report.add(source, "", "has no rows")
    out: dict[str, pd.Series] = {}
    for spec in schema.columns:
        if spec.name not in frame.columns:
            report.add(
                source, f"column {spec.name!r}", f"is missing (columns present: {list(map(str, frame.columns))})"
            )
            out[spec.name] = pd.Series(np.full(len(frame), np.nan), index=frame.index, name=spec.name)
            continue
        column = frame[spec.name]
        if isinstance(column, pd.DataFrame):
            report.add(source, f"column {spec.name!r}", f"appears {column.shape[1]} times")
            column = column.iloc[:, 0]
        out[spec.name] = _check_column(column.copy(), spec, source, row_label, report)
    clean = pd.DataFrame(out, index=frame.index).reset_index(drop=True)
    for spec in schema.columns:
        if spec.type is ColumnType.CATEGORY and all(_is_number(c) for c in spec.codes or ()):
            continue  # numeric codes stay float64, matching the TabularRecipe's one-hot encoding
        if spec.type is ColumnType.CATEGORY:
            by_text = {str(c): c for c in spec.codes or ()}
            clean[spec.name] = clean[spec.name].map(lambda v, m=by_text: m.get(v) if isinstance(v, str) else None)
    return clean
