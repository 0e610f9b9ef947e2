"""Tabular connector: CSV and Parquet exports read as they are, checked against the schema.

CSV cells are read as text (``dtype=str``) so that a value such as ``"forty"`` in a
numeric column is reported with its row instead of silently turning the column into
text or NaN; :func:`fedcare.data.check.check_frame` then coerces each column to its
declared type. :func:`read_csv_checked` does both a chunk of rows at a time, so a large
export never sits in memory as text (Python strings cost ~16 times the file's bytes):
what is kept is the typed table. Parquet keeps its stored types (read with pyarrow) and
goes through the same check. Files are opened read-only and never written.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from pandas.api.types import union_categoricals

from fedcare.data.check import FrameChecker
from fedcare.data.schema import CheckReport, StudySchema

__all__ = ["CHUNK_CELLS", "DEFAULT_NA", "csv_shape_problem", "read_csv", "read_csv_checked", "read_parquet"]

#: Cell texts read as missing values in CSV files (``[source] na_values`` overrides).
DEFAULT_NA: tuple[str, ...] = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "?")

#: Cells read as text at a time by :func:`read_csv_checked` (~60 MB of Python strings).
CHUNK_CELLS = 1_000_000


def csv_shape_problem(path: Path, *, delimiter: str = ",") -> str | None:
    """The first structural problem of a CSV file (repeated header name, short or long row), or None.

    A row's problem names its line (``"line 7: 3 fields, the header has 5"``). pandas
    pads a short row with empty cells, which would then pass as missing values and be
    imputed; a row cut short is a broken export, refused like one with too many fields.
    Blank lines are skipped; encoding and quoting errors are left to the reader proper.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return None
            names = [h.strip() for h in header]
            repeated = sorted(n for n, count in Counter(names).items() if count > 1)
            if repeated:
                return f"the header repeats column name(s) {', '.join(repr(n) for n in repeated)}"
            for row in reader:
                if len(row) != len(names) and any(cell.strip() for cell in row):
                    return f"line {reader.line_num}: {len(row)} fields, the header has {len(names)}"
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return None
    return None


def _shape_checked(path: Path, report: CheckReport, delimiter: str) -> bool | None:
    """Whether ``path`` is a file; None (the reason in ``report``) when its shape refuses it."""
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a name too long for the file system: reported by the reader proper
        is_file = False
    problem = csv_shape_problem(path, delimiter=delimiter) if is_file else None
    if problem is not None:
        report.add(path.name, "", f"cannot be read as CSV: {problem}")
        return None
    return is_file


def read_csv(
    path: Path, report: CheckReport, *, delimiter: str = ",", na_values: Sequence[str] = DEFAULT_NA
) -> pd.DataFrame | None:
    """Read a CSV file as text cells; an unreadable file is a problem named in ``report``."""
    is_file = _shape_checked(path, report, delimiter)
    if is_file is None:
        return None
    try:
        frame = pd.read_csv(path, dtype=str, sep=delimiter, keep_default_na=False, na_values=list(na_values))
    except FileNotFoundError:
        report.add(path.name, "", f"does not exist ({path})")
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        report.add(path.name, "", f"cannot be read as CSV: {str(exc).splitlines()[0]}")
        return None
    report.sources[path.name] = len(frame)
    return frame


def _width(path: Path, delimiter: str) -> int:
    """Fields in the header line (1 when it cannot be read: the reader proper reports why)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return max(1, len(next(csv.reader(fh, delimiter=delimiter), [])))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return 1


def read_csv_checked(
    path: Path,
    schema: StudySchema,
    report: CheckReport,
    *,
    delimiter: str = ",",
    na_values: Sequence[str] = DEFAULT_NA,
    chunk_cells: int = CHUNK_CELLS,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Read a CSV file and check it against ``schema`` a chunk of rows at a time.

    Memory holds one chunk as text plus the typed result, so it grows with the parsed
    numbers, not with the file's text. Problems are counted over the whole file and
    quoted with their first rows, exactly as :func:`fedcare.data.check.check_frame` on
    the whole table would report them.

    Returns
    -------
    (frame, extra) or None
        The checked table (schema columns, typed) and the file's other columns (as
        pandas categoricals, row-aligned with ``frame``); None when the file cannot be
        read, with the reason in ``report``.
    """
    is_file = _shape_checked(path, report, delimiter)
    if is_file is None:
        return None
    rows = max(64, chunk_cells // _width(path, delimiter)) if is_file else 64
    checker = FrameChecker(schema, source=path.name, report=report)
    clean: list[pd.DataFrame] = []
    extra: dict[str, list[pd.Categorical]] = {}
    try:
        with pd.read_csv(
            path, dtype=str, sep=delimiter, keep_default_na=False, na_values=list(na_values), chunksize=rows
        ) as chunks:
            for chunk in chunks:
                clean.append(checker.check(chunk))
                for name in chunk.columns:
                    if name not in schema.names:
                        extra.setdefault(str(name), []).append(pd.Categorical(chunk[name]))
    except FileNotFoundError:
        report.add(path.name, "", f"does not exist ({path})")
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        report.add(path.name, "", f"cannot be read as CSV: {str(exc).splitlines()[0]}")
        return None
    if not clean:  # a header and no rows: one empty chunk, checked as such
        clean.append(checker.check(pd.read_csv(path, dtype=str, sep=delimiter, nrows=0)))
    checker.finish()
    frame = pd.concat(clean, ignore_index=True) if len(clean) > 1 else clean[0]
    del clean
    others = pd.DataFrame(
        {name: union_categoricals(parts) if len(parts) > 1 else parts[0] for name, parts in extra.items()},
        index=pd.RangeIndex(len(frame)),
    )
    report.sources[path.name] = len(frame)
    return frame, others


def read_parquet(path: Path, report: CheckReport) -> pd.DataFrame | None:
    """Read a Parquet file with pyarrow; an unreadable file is a problem named in ``report``."""
    import pyarrow as pa

    try:
        frame = pd.read_parquet(path, engine="pyarrow")
    except FileNotFoundError:
        report.add(path.name, "", f"does not exist ({path})")
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        report.add(path.name, "", f"cannot be read as Parquet: {str(exc).splitlines()[0]}")
        return None
    report.sources[path.name] = len(frame)
    return frame
