"""Tabular connector: CSV and Parquet exports read as they are, checked against the schema.

CSV cells are read as text (``dtype=str``) so that a value such as ``"forty"`` in a
numeric column is reported with its row instead of silently turning the column into
text or NaN; :func:`fedcare.data.check.check_frame` then coerces each column to its
declared type. Parquet keeps its stored types (read with pyarrow) and goes through the
same check. Files are opened read-only and never written.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedcare.data.schema import CheckReport

__all__ = ["DEFAULT_NA", "csv_shape_problem", "read_csv", "read_parquet"]

#: Cell texts read as missing values in CSV files (``[source] na_values`` overrides).
DEFAULT_NA: tuple[str, ...] = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "?")


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


def read_csv(
    path: Path, report: CheckReport, *, delimiter: str = ",", na_values: Sequence[str] = DEFAULT_NA
) -> pd.DataFrame | None:
    """Read a CSV file as text cells; an unreadable file is a problem named in ``report``."""
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a name too long for the file system: reported by the reader below
        is_file = False
    problem = csv_shape_problem(path, delimiter=delimiter) if is_file else None
    if problem is not None:
        report.add(path.name, "", f"cannot be read as CSV: {problem}")
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
