"""The check every connector's output goes through: a table against the study schema.

:func:`check_frame` compares a whole table with the schema; :class:`FrameChecker` does the
same one chunk of rows at a time (a large CSV is read and checked in chunks, so memory
holds the typed columns, not the file's text). Either way **every** problem (missing
column, wrong type, out-of-range values, unknown codes) is collected before anything is
raised, counted over the whole table and quoted with its first rows, so a data manager
fixes a file once instead of once per error. The source is never modified: the check
works on a copy and returns a clean, typed copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedcare.data.schema import MAX_ABS_VALUE, CheckReport, ColumnSpec, ColumnType, StudySchema

__all__ = ["FrameChecker", "check_frame"]

#: How many offending rows a problem quotes before it says "and N more".
_QUOTE = 3

_TRUE = {"true", "1", "yes", "y", "t", "1.0"}
_FALSE = {"false", "0", "no", "n", "f", "0.0"}

# The order in which a column's problems are listed (the order the checks run in).
_TYPE, _HUGE, _FRACTION, _VALUE, _MISSING = range(5)


@dataclass
class _Count:
    """One kind of problem in one column, summed over every chunk."""

    n: int = 0
    quoted: list[str] = field(default_factory=list)


class FrameChecker:
    """Check a table against the schema one chunk of rows at a time.

    Problems of one kind in one column are counted over every chunk and quoted with
    their first rows, so the report reads exactly as if the whole table had been checked
    at once; call :meth:`finish` after the last chunk to write them to the report.

    Parameters
    ----------
    schema : StudySchema
        The study's declared columns.
    source : str
        File name quoted in each problem.
    report : CheckReport
        Where problems are collected.
    row_label : str or sequence of str (default: "row")
        How rows are named in problems: a word (rows are numbered from 1 after the
        header across chunks, ``row 3``) or one name per row of the whole table.
    """

    def __init__(
        self, schema: StudySchema, *, source: str, report: CheckReport, row_label: str | Sequence[str] = "row"
    ) -> None:
        self.schema, self.source, self.report, self.row_label = schema, source, report, row_label
        self.rows = 0
        self._counts: dict[tuple[int, int, str, str], _Count] = {}
        self._columns_seen = False

    def _note(self, column: int, step: int, what: str, mask: np.ndarray, values: Sequence[Any] | None) -> None:
        idx = np.flatnonzero(mask)
        if not len(idx):
            return
        count = self._counts.setdefault((column, step, f"column {self.schema.columns[column].name!r}", what), _Count())
        count.n += len(idx)
        for i in idx[: _QUOTE - len(count.quoted)]:
            row = self.rows + int(i)
            name = f"{self.row_label} {row + 1}" if isinstance(self.row_label, str) else str(self.row_label[row])
            count.quoted.append(name if values is None else f"{name}: {values[i]!r}")

    def check(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Check the next chunk of rows; return it clean and typed (schema columns, in order)."""
        first = not self._columns_seen
        self._columns_seen = True
        if first and len(frame) == 0:
            self.report.add(self.source, "", "has no rows")
        out: dict[str, pd.Series] = {}
        for i, spec in enumerate(self.schema.columns):
            where = f"column {spec.name!r}"
            if spec.name not in frame.columns:
                if first:
                    self.report.add(
                        self.source, where, f"is missing (columns present: {list(map(str, frame.columns))})"
                    )
                out[spec.name] = pd.Series(np.full(len(frame), np.nan), index=frame.index, name=spec.name)
                continue
            column = frame[spec.name]
            if isinstance(column, pd.DataFrame):
                if first:
                    self.report.add(self.source, where, f"appears {column.shape[1]} times")
                column = column.iloc[:, 0]
            out[spec.name] = self._column(i, column.copy(), spec)
        clean = pd.DataFrame(out, index=frame.index).reset_index(drop=True)
        for spec in self.schema.columns:
            if spec.type is ColumnType.CATEGORY and all(_is_number(c) for c in spec.codes or ()):
                continue  # numeric codes stay float64, matching the TabularRecipe's one-hot encoding
            if spec.type is ColumnType.CATEGORY:
                by_text = {str(c): c for c in spec.codes or ()}
                clean[spec.name] = clean[spec.name].map(lambda v, m=by_text: m.get(v) if isinstance(v, str) else None)
        self.rows += len(frame)
        return clean

    def finish(self) -> None:
        """Write the problems counted over every chunk to the report (schema column order)."""
        if not self._columns_seen:
            self.report.add(self.source, "", "has no rows")
        for (_, _, where, what), count in sorted(self._counts.items(), key=lambda kv: kv[0][:2]):
            more = f" and {count.n - len(count.quoted)} more" if count.n > len(count.quoted) else ""
            self.report.add(self.source, where, f"{count.n} {what} ({', '.join(count.quoted)}{more})")
        self._counts.clear()

    def _column(self, i: int, series: pd.Series, spec: ColumnSpec) -> pd.Series:
        """Coerce one column to its declared type, noting every problem; returns a new Series."""
        raw = series.to_numpy(dtype=object)
        present = _present(series)
        if spec.numeric or (spec.type is ColumnType.CATEGORY and all(_is_number(c) for c in spec.codes or ())):
            if pd.api.types.is_bool_dtype(series):
                numeric = series.astype(float)
            else:
                numeric = pd.to_numeric(series.where(present), errors="coerce")
            bad_type = present & numeric.isna().to_numpy()
            self._note(i, _TYPE, f"non-{'numeric' if spec.numeric else 'numeric-coded'} value(s)", bad_type, raw)
            values = numeric.to_numpy(dtype=np.float64)
            ok = ~np.isnan(values)
            huge = ok & ~(np.abs(values) <= MAX_ABS_VALUE)
            what = f"value(s) beyond ±{MAX_ABS_VALUE:g}, which would overflow the statistics"
            self._note(i, _HUGE, what, huge, raw)
            ok &= ~huge
            if spec.type is ColumnType.INTEGER:
                self._note(i, _FRACTION, "non-integer value(s)", ok & (values != np.round(values)), raw)
            if spec.numeric:
                low = ok & (values < spec.min) if spec.min is not None else np.zeros_like(ok)
                high = ok & (values > spec.max) if spec.max is not None else np.zeros_like(ok)
                self._note(i, _VALUE, f"value(s) outside [{spec.min}, {spec.max}]", low | high, raw)
            else:
                codes = np.array([float(c) for c in spec.codes or ()])
                what = f"unknown code(s), allowed {list(spec.codes or ())}"
                self._note(i, _VALUE, what, ok & ~np.isin(values, codes), raw)
            result = pd.Series(values, index=series.index, name=spec.name)
        elif spec.type is ColumnType.CATEGORY:
            text = series.where(present).map(lambda v: None if v is None or v != v else str(v).strip())
            allowed = [str(c) for c in spec.codes or ()]
            self._note(i, _VALUE, f"unknown code(s), allowed {allowed}", present & ~text.isin(allowed).to_numpy(), raw)
            result = text.rename(spec.name)
        else:  # boolean
            if pd.api.types.is_bool_dtype(series):
                result = series.astype(float).rename(spec.name)
            else:
                lowered = series.where(present).map(lambda v: None if v is None or v != v else str(v).strip().lower())
                values = np.where(lowered.isin(_TRUE), 1.0, np.where(lowered.isin(_FALSE), 0.0, np.nan))
                self._note(i, _TYPE, "non-boolean value(s)", present & np.isnan(values), raw)
                result = pd.Series(values, index=series.index, name=spec.name)
        if not spec.allow_missing:
            self._note(i, _MISSING, "missing value(s), not allowed here", ~present, None)
        return result


def _present(series: pd.Series) -> np.ndarray:
    """Cells that hold a value (not NaN/None and not an empty string)."""
    notna = series.notna().to_numpy()
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        blank = series.astype(str).str.strip().eq("").to_numpy()
        return notna & ~blank
    return notna


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
    checker = FrameChecker(schema, source=source, report=report, row_label=row_label)
    clean = checker.check(frame)
    checker.finish()
    return clean
