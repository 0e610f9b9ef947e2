"""The study schema: what every site's data must look like.

A study declares, once, what each site's data must look like: the columns (or derived
features) with their type, allowed range or codes, whether values may be missing, and
which column is the target. Connectors turn a site's files into a table;
:func:`fedcare.data.check.check_frame` compares that table with the schema and collects
**every** problem (missing column, wrong type, out-of-range values, unknown codes) before
anything is raised, so a data manager fixes a file once instead of once per error. This
module holds the declarations only (no pandas), so reading a study file stays fast.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcare.data.tabular import TabularRecipe
from fedcare.errors import ConfigError, DataError

__all__ = [
    "MANY_CATEGORIES",
    "MAX_ABS_VALUE",
    "CheckReport",
    "ColumnSpec",
    "ColumnType",
    "Problem",
    "StudySchema",
    "many_categories_warning",
]


log = logging.getLogger(__name__)

#: A categorical column with more distinct values than this is warned about: each value
#: is a one-hot feature (model width, memory, and cells too small to release in statistics).
MANY_CATEGORIES = 50


def many_categories_warning(column: str, count: int, where: str) -> str:
    """The one-line warning for a categorical column with ``count`` distinct values (and the cap to try)."""
    return (
        f"{where}column {column!r} has {count} categories -> {count - 1} one-hot features; "
        f"cap it (keep the most frequent {MANY_CATEGORIES // 2} or so and group the rest as 'other') "
        "or leave the column out"
    )


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
        if codes is not None and len(codes) > MANY_CATEGORIES:
            log.warning(many_categories_warning(name, len(codes), "schema: "))
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


#: Largest magnitude a numeric cell may have. Sums of squares of values like 1e308 overflow
#: float64 (the federated statistics add them up); no clinical measurement comes near 1e15,
#: and up to it float64 still holds every integer exactly.
MAX_ABS_VALUE = 1e15
